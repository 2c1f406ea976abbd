package persistence

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// The store writes its records through json v2 with encoding/json's
// semantics: byte for byte what encoding/json writes, for records with
// every kind of field set — so what an older vigil wrote and what this one
// writes read back the same.
func TestRecordsAreWrittenAsEncodingJSONWrites(t *testing.T) {
	var spec health.InstanceSpec
	require.NoError(t, json.Unmarshal([]byte(`{"state":"Running","started_at":"2026-11-30T10:00:00Z",
		"labels":{"tenant":"t1","service":"web","zone":"a"},
		"network":{"ip":"127.0.0.1","source_ip":"127.0.0.2"},
		"health_check":{"http":{"port":8080,"path":"/healthz","method":"POST","body":"{}","headers":{"X-B":"2","X-A":"1"},
			"expected_status":"200-299","body_regex":"ok","condition":"status == 200"},
			"interval":"2.5s","timeout":"1s","start_period":"0s","failure_threshold":2},
		"restart_policy":{"policy":"on_unhealthy","url":"http://127.0.0.1:9/restart","backoff":"5s","max_attempts":3}}`), &spec))
	in, err := spec.Normalize("vm-1")
	require.NoError(t, err)

	at := time.Date(2026, 12, 1, 2, 3, 4, 567891000, time.UTC)
	code := 3
	snap := &actors.Snapshot{Version: SchemaVersion, ID: "vm-1", Lifecycle: health.Running, StartedAt: at, Policy: in.HealthCheck,
		State:       health.State{Status: health.StatusUnhealthy, Since: at, ConsecutiveFailures: 2, LastError: "timed out \"quoted\" \u00e9"},
		NextCheckAt: at.Add(2 * time.Second)}
	for _, r := range []health.Result{
		{Outcome: health.Success, Start: at, Duration: health.Duration(1500 * time.Microsecond), HTTPStatus: 200,
			Phases: health.Phases{Connect: 120 * time.Microsecond, FirstByte: 900 * time.Microsecond}},
		{Outcome: health.Failure, Reason: health.ReasonTimeout, Message: "deadline <exceeded> & more", Start: at.Add(time.Second),
			Duration: health.Duration(time.Second), Phases: health.Phases{Connect: 3 * time.Second}},
		{Outcome: health.Failure, Reason: health.ReasonExitNonzero, Start: at, ExitCode: &code, Output: "line\n", Truncated: true,
			CertNotAfter: at.Add(24 * time.Hour)},
		{Outcome: health.Skipped, Reason: health.ReasonBudgetFull},
	} {
		snap.State.History.Add(r)
	}
	ev := eventRecord{V: SchemaVersion, Event: actors.Event{Seq: 7, InstanceID: "vm-1", Kind: "", Labels: in.Labels,
		Transition: health.Transition{From: health.StatusHealthy, To: health.StatusUnhealthy, At: at, Reason: health.ReasonTimeout},
		Details:    map[string]any{"b": 1, "a": []any{"x"}}}}
	for name, v := range map[string]any{
		"snapshot": snap,
		"event":    ev,
		"instance": instanceRecord{V: SchemaVersion, Instance: in, Spec: in.Written},
	} {
		want, err := json.Marshal(v)
		require.NoError(t, err, name)
		got, err := encode(v)
		require.NoError(t, err, name)
		assert.Equal(t, string(want), string(got), name)
	}
}

// The store reads its records through json v2 with encoding/json's
// semantics: what encoding/json decodes, it decodes, and what encoding/json
// refuses, it refuses — for records as written and for damaged ones.
func TestRecordsAreReadAsEncodingJSONReads(t *testing.T) {
	in := inst(t, "vm-1")
	rec, err := encode(instanceRecord{V: SchemaVersion, Instance: in, Spec: in.Written})
	require.NoError(t, err)
	snap, err := encode(snapOf(in, health.StatusUnhealthy, 2))
	require.NoError(t, err)
	records := []string{string(rec), string(snap),
		`{"V":1,"ID":"vm-1"}`,                            // names in another case
		`{"v":1,"id":"vm-1","unknown":{"a":[1,2]}}`,      // members it does not know
		`{"v":1,"id":"vm-1","id":"vm-2"}`,                // a name twice
		"{\"v\":1,\"id\":\"vm-\xff\"}",                   // invalid UTF-8
		`{"v":1,"id":"vm-1","state":{"status":"bogus"}}`, // a state the machine cannot drive
		`{"v":1,"id":"vm-1","state":{"consecutive_failures":-1}}`,
		`{"v":"1"}`, `{"v":1,"id":7}`, `null`, `[]`, `{"v":1`, ``, `{"v":1} trailing`,
		`{"v":1,"policy":{"interval":"fast"}}`, `{"v":1,"id":"vm-1","history":[{"outcome":"success","at":"x"}]}`,
		`{"v":1,"state":null}`, `{"v":1,"policy":null}`, `{"v":1,"state":{"history":null}}`,
		`{"v":1,"state":{"history":[null]}}`, `{"v":1,"state":{"history":{}}}`, `{"v":1,"state":[]}`,
		`{"v":1,"policy":{"tcp":{"port":0}}}`, `{"v":1,"policy":{"TCP":{"Port":22},"Interval":"3s"}}`,
		`{"v":1,"health_check":{"tcp":{"port":22}},"restart_policy":{"policy":"on_unhealthy","url":"http://127.0.0.1:9/"}}`,
		`{"v":1,"restart_policy":{"policy":"sometimes"}}`, `{"v":1,"restart_policy":null}`,
		`{"v":1,"state":{"history":[{"outcome":"success","at":"2026-01-01T00:00:00Z","phases":{"connect_ms":1.5}}]}}`,
	}
	for _, r := range records {
		var want, got actors.Snapshot
		wantErr, gotErr := json.Unmarshal([]byte(r), &want), decode([]byte(r), &got)
		assert.Equal(t, wantErr == nil, gotErr == nil, "%s: %v against %v", r, wantErr, gotErr)
		if wantErr == nil {
			assert.Equal(t, want, got, r)
		}
		var wantRec, gotRec instanceRecord
		wantErr, gotErr = json.Unmarshal([]byte(r), &wantRec), decode([]byte(r), &gotRec)
		assert.Equal(t, wantErr == nil, gotErr == nil, "%s: %v against %v", r, wantErr, gotErr)
		if wantErr == nil {
			assert.Equal(t, wantRec, gotRec, r)
		}
	}
}

// A snapshot leaves out what is zero — no restart yet, no failure, no
// flapping, an unknown start — and reads back as the same state; a snapshot
// an older vigil wrote with every member reads back as the same state too.
func TestSnapshotLeavesOutWhatIsZeroAndReadsBackTheSame(t *testing.T) {
	in := inst(t, "vm-1")
	snap := snapOf(in, health.StatusHealthy, 3)
	snap.Version = SchemaVersion
	b, err := encode(snap)
	require.NoError(t, err)
	for _, absent := range []string{`"started_at"`, `"restart"`, `"flap"`, `"last_failure_at"`, `"last_error"`,
		`"consecutive_failures"`, `"grace_over"`, `"last_checked_at"`} {
		assert.NotContains(t, string(b), absent)
	}
	for _, present := range []string{`"status":"healthy"`, `"consecutive_successes":3`, `"history":[`, `"next_check_at"`} {
		assert.Contains(t, string(b), present)
	}
	full := `{"v":1,"id":"vm-1","lifecycle":"Running","started_at":"0001-01-01T00:00:00Z",` +
		`"policy":` + string(mustEncode(t, snap.Policy)) + `,"state":{"window":1,"window_start":"0001-01-01T00:00:00Z",` +
		`"eval":"healthy","status":"healthy","since":"` + t0.Format(time.RFC3339Nano) + `","grace_over":false,` +
		`"consecutive_successes":3,"consecutive_failures":0,"last_checked_at":"0001-01-01T00:00:00Z",` +
		`"last_success_at":"0001-01-01T00:00:00Z","last_failure_at":"0001-01-01T00:00:00Z","last_error":"",` +
		`"history":[{"outcome":"success","start":"` + t0.Format(time.RFC3339Nano) + `","duration":"0s","output":"ok"}],` +
		`"restart":{"attempts":0,"last_attempt_at":"0001-01-01T00:00:00Z","next_attempt_at":"0001-01-01T00:00:00Z",` +
		`"blocked_reason":"","pending":false,"reason":"","last_error":""},"flap":{"changes":[0,0,0,0,0,0],"next":0,"flapping":false}},` +
		`"next_check_at":"` + snap.NextCheckAt.Format(time.RFC3339Nano) + `"}`
	compact, err := decodeSnapshot(b)
	require.NoError(t, err)
	older, err := decodeSnapshot([]byte(full))
	require.NoError(t, err)
	assert.Equal(t, older, compact)
	again, err := encode(older)
	require.NoError(t, err)
	assert.Equal(t, string(b), string(again), "an older snapshot is written compact once read")
	assert.Less(t, len(b), len(full)*2/3)
}

func mustEncode(t *testing.T, v any) []byte {
	t.Helper()
	b, err := encode(v)
	require.NoError(t, err)
	return b
}
