package persistence

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/persistence/record"
)

// richSnapshot has every member of a snapshot set: results of every kind,
// restart bookkeeping, a flapping ring, times far from now.
func richSnapshot(t *testing.T) *actors.Snapshot {
	t.Helper()
	var spec health.InstanceSpec
	require.NoError(t, json.Unmarshal([]byte(`{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"http":{"port":8080,"path":"/healthz",
		"headers":{"X-A":"1"},"expected_status":"200-299","body_regex":"ok"},"interval":"2.5s","failure_threshold":2}}`), &spec))
	in, err := spec.Normalize("vm-1")
	require.NoError(t, err)
	at := time.Date(2026, 12, 1, 2, 3, 4, 567891234, time.UTC)
	code := -3
	snap := &actors.Snapshot{Version: SchemaVersion, ID: "vm-1", Lifecycle: health.Running,
		StartedAt: time.Date(1, 1, 1, 0, 0, 1, 0, time.UTC), Policy: in.HealthCheck,
		State: health.State{Window: 4, WindowStart: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
			Eval: health.StatusUnhealthy, Status: health.StatusUnhealthy, Since: at, GraceOver: true,
			ConsecutiveSuccesses: 1, ConsecutiveFailures: 7, LastCheckedAt: at, LastSuccessAt: at.Add(-time.Hour),
			LastFailureAt: at, LastError: "timed out \"quoted\" \u00e9",
			Restart: &health.RestartState{Attempts: 2, LastAttemptAt: at, NextAttemptAt: at.Add(time.Minute),
				Blocked: health.BlockedFlapping, Pending: true, Reason: health.ReasonTimeout, LastError: "refused"},
			Flap: &health.Flap{Next: 2, Flapping: true}},
		NextCheckAt: at.Add(2500 * time.Millisecond)}
	snap.State.Flap.Changes[0], snap.State.Flap.Changes[1] = at.UnixNano(), at.Add(time.Second).UnixNano()
	for _, r := range []health.Result{
		{Outcome: health.Success, Start: at, Duration: health.Duration(1500 * time.Microsecond), HTTPStatus: 200,
			Phases: health.Phases{Connect: 120 * time.Microsecond, FirstByte: 900 * time.Microsecond}},
		{Outcome: health.Failure, Reason: health.ReasonTimeout, Message: "deadline <exceeded>", Start: at.Add(time.Second),
			Duration: health.Duration(time.Second), Phases: health.Phases{Connect: 3 * time.Second, TLS: 7}},
		{Outcome: health.Failure, Reason: health.ReasonExitNonzero, Start: at, ExitCode: &code, Output: "line\n", Truncated: true,
			CertNotAfter: time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Outcome: health.Failure, Reason: "a_reason_of_a_later_build", Start: at},
		{Outcome: health.Skipped, Reason: health.ReasonBudgetFull},
	} {
		snap.State.History.Add(r)
	}
	return snap
}

// A snapshot is written in its binary form and reads back as the same
// snapshot, every member and every kind of result, as one an earlier build
// wrote as JSON does; the binary form is the smaller.
func TestSnapshotIsWrittenBinaryAndReadsBackTheSame(t *testing.T) {
	snap := richSnapshot(t)
	b, err := encodeSnapshot(snap)
	require.NoError(t, err)
	require.NotEqual(t, byte('{'), b[0])
	got, err := decodeSnapshot(b)
	require.NoError(t, err)
	assert.Equal(t, snap, got)
	assert.Equal(t, snap.State.History.Results(), got.State.History.Results())

	js, err := encode(snap)
	require.NoError(t, err)
	older, err := decodeSnapshot(js)
	require.NoError(t, err, "a snapshot an earlier build wrote")
	assert.Equal(t, snap, older)
	assert.Less(t, len(b), len(js)*2/3, "%d bytes against %d", len(b), len(js))

	again, err := encodeSnapshot(got)
	require.NoError(t, err)
	assert.Equal(t, b, again, "a snapshot read back writes the same bytes")

	empty, err := encodeSnapshot(&actors.Snapshot{Version: SchemaVersion, ID: "vm-2"})
	require.NoError(t, err)
	got, err = decodeSnapshot(empty)
	require.NoError(t, err)
	assert.Equal(t, &actors.Snapshot{Version: SchemaVersion, ID: "vm-2"}, got, "nothing is made of what is not there")
}

// A damaged or foreign binary snapshot is refused with an error naming what
// is wrong, and one of a newer schema with ErrNewerSchema.
func TestADamagedBinarySnapshotIsRefusedNamingTheField(t *testing.T) {
	good := func() *record.Snapshot {
		var m record.Snapshot
		b, err := encodeSnapshot(richSnapshot(t))
		require.NoError(t, err)
		require.NoError(t, proto.Unmarshal(b, &m))
		return &m
	}
	for _, c := range []struct {
		name   string
		damage func(*record.Snapshot)
		want   string
	}{
		{"status", func(m *record.Snapshot) { m.State.Status = "bogus" }, "state.status"},
		{"eval", func(m *record.Snapshot) { m.State.Eval = "disabled" }, "state.eval"},
		{"failures", func(m *record.Snapshot) { m.State.ConsecutiveFailures = -1 }, "state.consecutive_failures"},
		{"successes", func(m *record.Snapshot) { m.State.ConsecutiveSuccesses = 1 << 40 }, "state.consecutive_successes"},
		{"attempts", func(m *record.Snapshot) { m.State.Restart.Attempts = -2 }, "state.restart.attempts"},
		{"flap position", func(m *record.Snapshot) { m.State.Flap.Next = health.FlapChanges }, "state.flap.next"},
		{"flap changes", func(m *record.Snapshot) { m.State.Flap.Changes = make([]int64, health.FlapChanges+1) }, "state.flap.changes"},
		{"policy", func(m *record.Snapshot) { m.Policy = []byte(`{"tcp":{"port":0}}`) }, "policy"},
		{"policy bytes", func(m *record.Snapshot) { m.Policy = []byte(`{"tcp"`) }, "policy"},
		{"history column", func(m *record.Snapshot) { m.State.History.Duration = m.State.History.Duration[1:] }, "state.history.duration"},
		{"history phases", func(m *record.Snapshot) { m.State.History.Tls = append(m.State.History.Tls, 1) }, "state.history.tls"},
		{"history text", func(m *record.Snapshot) { m.State.History.Text[0].Result = 5 }, "state.history.text"},
		{"time", func(m *record.Snapshot) { m.State.Since = &timestamppb.Timestamp{Seconds: 1, Nanos: 0} }, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := good()
			c.damage(m)
			b, err := proto.Marshal(m)
			require.NoError(t, err)
			snap, err := decodeSnapshot(b)
			if c.want == "" {
				require.NoError(t, err, "a time of 1970 is a time")
				assert.Equal(t, time.Unix(1, 0).UTC(), snap.State.Since)
				return
			}
			require.Error(t, err)
			assert.Nil(t, snap)
			assert.Contains(t, err.Error(), c.want)
		})
	}
	for _, b := range [][]byte{{0xff}, {0x0a, 0x05, 'a'}, {0x32, 0x02, 0x08}, []byte("\x12\x02\xff\xfe"), {}, {0x12, 0x01, 'x'}} {
		_, err := decodeSnapshot(b)
		require.Error(t, err, "%x", b)
		assert.Contains(t, err.Error(), "snapshot")
	}
	m := good()
	h := m.State.History
	for range health.HistorySize {
		h.Start, h.Duration, h.Outcome = append(h.Start, 7), append(h.Duration, 3), append(h.Outcome, record.Outcome_OUTCOME_SKIPPED)
	}
	h.Reason, h.HttpStatus, h.HasExitCode, h.ExitCode, h.Connect, h.Tls, h.FirstByte = nil, nil, nil, nil, nil, nil, nil
	b, err := proto.Marshal(m)
	require.NoError(t, err)
	snap, err := decodeSnapshot(b)
	require.NoError(t, err, "columns of zeros left out")
	rs := snap.State.History.Results()
	require.Len(t, rs, health.HistorySize, "the newest %d results are kept", health.HistorySize)
	assert.Equal(t, health.Result{Outcome: health.Skipped, Start: time.Unix(0, 7).UTC(), Duration: 3}, rs[0])

	m = good()
	m.V = SchemaVersion + 1
	b, err = proto.Marshal(m)
	require.NoError(t, err)
	_, err = decodeSnapshot(b)
	require.ErrorIs(t, err, ErrNewerSchema)
	assert.Contains(t, err.Error(), "snapshot vm-1")
}

// A start takes a snapshot's policy from its instance when the snapshot was
// taken under the stored policy, and decodes its own when the instance's
// spec changed after it: the state machine then sees the policy change.
// Snapshots an earlier build wrote as JSON load beside binary ones.
func TestALoadTakesTheSnapshotsPolicyFromItsInstanceOnlyWhenItIsTheSame(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	ctx := context.Background()
	same, changed, changed2, older := inst(t, "vm-same"), inst(t, "vm-changed"), inst(t, "vm-changed2"), inst(t, "vm-older")
	for _, in := range []health.Instance{same, changed, changed2, older} {
		require.NoError(t, s.PutInstance(ctx, in))
	}
	s.SaveSnapshot(snapOf(same, health.StatusHealthy, 3))
	s.SaveSnapshot(snapOf(changed, health.StatusHealthy, 4))
	s.SaveSnapshot(snapOf(changed2, health.StatusHealthy, 4))
	require.NoError(t, s.Flush(ctx))
	js, err := encode(&actors.Snapshot{Version: SchemaVersion, ID: older.ID, Lifecycle: older.State, Policy: older.HealthCheck,
		State: health.State{Window: 1, Eval: health.StatusUnhealthy, Status: health.StatusUnhealthy, ConsecutiveFailures: 5, Since: t0}})
	require.NoError(t, err)
	require.NoError(t, s.db.Update(func(txn *badger.Txn) error {
		return txn.Set(key(prefixSnapshot, older.ID), js)
	}))
	next, err := health.InstanceSpec{State: health.Running, Network: &health.Network{IP: "127.0.0.1"},
		HealthCheck: &health.PolicySpec{TCP: &health.TCPSpec{Port: 80}, Interval: "9s"}}.Normalize(changed.ID)
	require.NoError(t, err)
	require.NoError(t, s.PutInstance(ctx, next))
	next2, err := health.InstanceSpec{State: health.Running, Network: &health.Network{IP: "127.0.0.1"},
		HealthCheck: &health.PolicySpec{TCP: &health.TCPSpec{Port: 80}, Interval: "9s"}}.Normalize(changed2.ID)
	require.NoError(t, err)
	require.NoError(t, s.PutInstance(ctx, next2))
	require.NoError(t, s.Close())

	s = open(t, dir)
	defer s.Close()
	got, snaps := map[string]health.Instance{}, map[string]*actors.Snapshot{}
	require.NoError(t, s.Load(ctx, func(in health.Instance, snap *actors.Snapshot) error {
		got[in.ID], snaps[in.ID] = in, snap
		return nil
	}))
	require.Len(t, snaps, 4)

	assert.Same(t, got[same.ID].HealthCheck, snaps[same.ID].Policy, "the instance's policy, not a copy decoded")
	assert.Equal(t, 3, snaps[same.ID].State.ConsecutiveSuccesses)

	assert.Equal(t, 9*time.Second, got[changed.ID].HealthCheck.Interval)
	assert.Equal(t, 5*time.Second, snaps[changed.ID].Policy.Interval, "the policy the snapshot was taken under")
	assert.False(t, snaps[changed.ID].Policy.Equal(got[changed.ID].HealthCheck))

	assert.Equal(t, 5, snaps[older.ID].State.ConsecutiveFailures, "a JSON snapshot of an earlier build")
	assert.Same(t, snaps[changed.ID].Policy, snaps[changed2.ID].Policy, "the same old policy decoded once, shared")
	assert.Equal(t, 5*time.Second, snaps[changed2.ID].Policy.Interval)
	assert.True(t, snaps[older.ID].Policy.Equal(got[older.ID].HealthCheck))
}

// A probe's output is the guest's bytes: a snapshot holding some that are
// not UTF-8 is written (each run of them as U+FFFD, as JSON wrote it) with
// the records of its batch, not refused with them all.
func TestASnapshotOfBytesThatAreNotUTF8IsWritten(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	ctx := context.Background()
	a := inst(t, "vm-a")
	require.NoError(t, s.PutInstance(ctx, a))
	snap := snapOf(a, health.StatusUnhealthy, 0)
	snap.State.LastError = "exit 1: \xff\xfe"
	snap.State.History.Add(health.Result{Outcome: health.Failure, Reason: health.ReasonExitNonzero, Start: t0,
		Output: "ok\x80\x81 then \xc3", Message: "\xe2\x82"})
	s.SaveSnapshot(snap)
	require.NoError(t, s.PutInstance(ctx, inst(t, "vm-b")), "the batch with the snapshot is written")
	require.NoError(t, s.Flush(ctx))
	require.NoError(t, s.Close())

	s = open(t, dir)
	defer s.Close()
	got := loadAll(t, s)
	require.Len(t, got, 2)
	st := got["vm-a"].State
	assert.Equal(t, "exit 1: \uFFFD", st.LastError)
	last, ok := st.History.Last()
	require.True(t, ok)
	assert.Equal(t, "ok\uFFFD then \uFFFD", last.Output)
	assert.Equal(t, "\uFFFD", last.Message)
}

// A snapshot stored under another instance's key is skipped, and the
// instance loads without one.
func TestASnapshotUnderAnotherKeyIsSkipped(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	ctx := context.Background()
	a, b := inst(t, "vm-a"), inst(t, "vm-b")
	require.NoError(t, s.PutInstance(ctx, a))
	require.NoError(t, s.PutInstance(ctx, b))
	wrong, err := encodeSnapshot(snapOf(a, health.StatusHealthy, 3))
	require.NoError(t, err)
	require.NoError(t, s.db.Update(func(txn *badger.Txn) error { return txn.Set(key(prefixSnapshot, b.ID), wrong) }))
	got := loadAll(t, s)
	require.Contains(t, got, b.ID)
	assert.Nil(t, got[b.ID], "vm-a's snapshot is not vm-b's")
	_, err = s.Snapshot(b.ID)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "does not match its key")
	require.NoError(t, s.Close())
}
