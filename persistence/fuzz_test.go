package persistence

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// fuzzSnapshot is a snapshot as the store writes it, for seeds, and as an
// earlier build wrote it (JSON).
func fuzzSnapshot(f *testing.F) (binary, js []byte) {
	f.Helper()
	in, err := health.InstanceSpec{State: health.Running, Network: &health.Network{IP: "127.0.0.1"},
		HealthCheck: &health.PolicySpec{HTTP: &health.HTTPSpec{Port: 80, ExpectedStatus: json.RawMessage(`"200-299"`)}}}.Normalize("vm-1")
	if err != nil {
		f.Fatal(err)
	}
	snap := snapOf(in, health.StatusHealthy, 3)
	snap.Version = SchemaVersion
	snap.State.History.Add(health.Result{Outcome: health.Failure, Reason: health.ReasonTimeout, Message: "timed out", Start: t0,
		Duration: health.Duration(time.Second), Phases: health.Phases{Connect: time.Millisecond}})
	snap.State.Flap = &health.Flap{Next: 1}
	snap.State.Flap.Changes[0] = t0.UnixNano()
	js, err = json.Marshal(snap)
	if err != nil {
		f.Fatal(err)
	}
	binary, err = encodeSnapshot(snap)
	if err != nil {
		f.Fatal(err)
	}
	return binary, js
}

// FuzzDecodeSnapshot checks the decoder of a stored snapshot, in either
// form: any bytes are refused with an error, or decode to a snapshot that
// encodes as the store writes it to bytes that decode to the same snapshot
// again, and that the reader side can render (its view, brief and progress)
// with a status among the defined ones.
func FuzzDecodeSnapshot(f *testing.F) {
	bin, js := fuzzSnapshot(f)
	f.Add(bin)
	f.Add(js)
	f.Add([]byte{0x08, 0x01, 0x32, 0x04, 0x7a, 0x02, 0x10, 0x09}) // a flapping ring's position outside the ring
	f.Add([]byte(`{"v":1,"id":"vm-1","state":{"flap":{"next":6}}}`))
	f.Add([]byte(`{"v":99,"id":"vm-1"}`))
	f.Add([]byte(`{"v":1,"policy":{"tcp":{"port":0}}}`))
	f.Add([]byte(`{"v":1,"policy":{"type":"none"},"state":{"history":[{"outcome":"success","phases":{"tls_ms":-1e300}}]}}`))
	f.Add([]byte(`{"v":1,"lifecycle":"Bogus","state":{"status":"unhealthy","eval":"unhealthy","consecutive_failures":2147483647}}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"v":1,"id":"vm-1","next_check_at":"2026-11-26T10:00:05+02:00","state":{"since":"2026-11-26T10:00:05-07:30","history":[{"outcome":"success","start":"2026-11-26T10:00:05+01:00"}]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		snap, err := decodeSnapshot(b)
		if err != nil {
			require.NotEmpty(t, err.Error())
			require.Nil(t, snap)
			return
		}
		b1, err := encodeSnapshot(snap)
		require.NoError(t, err)
		again, err := decodeSnapshot(b1)
		require.NoError(t, err, "a snapshot decodes again as it was written: %x", b1)
		b2, err := encodeSnapshot(again)
		require.NoError(t, err)
		require.Equal(t, b1, b2, "a decoded snapshot writes the same twice")
		// the snapshot read back is the snapshot written (its times in UTC)
		requireSameSnapshot(t, snap, again)

		st := &snap.State
		require.True(t, st.Status == "" || st.Status.Valid(), "status %q", st.Status)
		require.True(t, health.Mask(snap.Config(), st.Eval).Valid())
		v := st.View(snap.NextCheckAt, true)
		require.GreaterOrEqual(t, v.ConsecutiveFailures, 0)
		require.GreaterOrEqual(t, v.ConsecutiveSuccesses, 0)
		require.LessOrEqual(t, len(v.History), health.HistorySize)
		brief := st.Brief(snap.NextCheckAt).WithRestart(st.Restarts())
		_ = brief.View()
		pr := st.Progress(snap.Policy)
		require.GreaterOrEqual(t, pr.Failures, int32(0))
	})
}

// FuzzLoadDamagedRecords writes arbitrary bytes where the store keeps its
// records (an instance, its snapshot, an event under a key of any length,
// the sequence counter and the record count) beside an intact instance,
// and checks that reading them as Open and Load do never panics: the intact
// instance is loaded, each damaged record is skipped or refused with an
// error, and the event log reads. Badger runs in memory here, so that the
// fuzzer tries hundreds of inputs a second; damaged files on disk are
// crash_test's.
func FuzzLoadDamagedRecords(f *testing.F) {
	snap, js := fuzzSnapshot(f)
	f.Add([]byte(`{"v":1,"instance":{"id":"vm-2","state":"Running"}}`), js, []byte(`{"v":1,"seq":2,"from":"unknown","to":"starting"}`),
		[]byte{0, 0, 0, 0, 0, 0, 0, 2}, []byte{0, 0, 0, 0, 0, 0, 0, 2}, []byte{0, 0, 0, 0, 0, 0, 0, 2})
	f.Add([]byte(`{"v":1,"instance":{"id":"vm-2","state":"Running"}}`), snap, []byte(`{"v":1,"seq":1,"from":"unknown","to":"starting"}`),
		[]byte{0, 0, 0, 0, 0, 0, 0, 1}, []byte{0, 0, 0, 0, 0, 0, 0, 2}, []byte{0, 0, 0, 0, 0, 0, 0, 3})
	f.Add([]byte(`{"v":1,"instance":{"id":"other","state":"Running"}}`), []byte(`{"v":1,"state":{"flap":{"next":9}}}`),
		[]byte(`{"v":1,"seq":"x"}`), []byte{1}, []byte{0xff}, []byte{})
	f.Add([]byte(`{"v":1,"instance":{"id":"vm-2","state":"Running","health_check":{"tcp":{"port":70000}}}}`), []byte(`[`),
		[]byte(`{"v":7}`), []byte(`x`), []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, []byte{0x80, 0, 0, 0, 0, 0, 0, 0})
	intact, err := json.Marshal(instanceRecord{V: SchemaVersion, Instance: inst(f, "vm-1")})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, instance, snapshot, event, eventKey, seq, specs []byte) {
		if len(instance)+len(snapshot)+len(event)+len(seq)+len(specs) > 96<<10 || len(eventKey) > 1<<10 {
			return // a record in memory must fit a value; records on disk are as large as a spec's body
		}
		// a fresh database each time (2 ms): one kept across inputs slows
		// down with every record deleted
		db, err := badger.Open(badger.DefaultOptions("").WithInMemory(true).WithMemTableSize(1 << 20).WithValueThreshold(128 << 10).
			WithBlockCacheSize(1 << 20).WithIndexCacheSize(1 << 20).WithNumCompactors(2).WithLogger(nil).WithMetricsEnabled(false))
		require.NoError(t, err)
		defer db.Close()
		records := map[string][]byte{
			"i/vm-1": intact, "i/vm-2": instance, "s/vm-2": snapshot, "s/vm-1": snapshot, "m/seq": seq, "m/specs": specs,
			string(prefixEvent) + string(eventKey): event,
		}
		require.NoError(t, db.Update(func(txn *badger.Txn) error {
			for k, v := range records {
				if err := txn.Set([]byte(k), v); err != nil {
					return err
				}
			}
			return nil
		}))
		s := &Store{db: db, log: zerolog.Nop(), known: map[string]bool{}}
		if err := s.loadSeq(); err != nil {
			require.NotEmpty(t, err.Error())
			return
		}
		if len(seq) == 8 {
			require.GreaterOrEqual(t, s.LastSeq(), binary.BigEndian.Uint64(seq), "numbers continue after the stored counter")
		}
		loaded := map[string]bool{}
		err = s.Load(context.Background(), func(in health.Instance, snap *actors.Snapshot) error {
			loaded[in.ID] = true
			if snap != nil {
				require.True(t, snap.State.Status == "" || snap.State.Status.Valid())
			}
			return nil
		})
		if errors.Is(err, ErrNewerSchema) {
			return
		}
		require.NoError(t, err)
		require.True(t, loaded["vm-1"], "the intact instance is loaded")
		if _, _, err := s.Events(0, 16); err != nil {
			require.ErrorIs(t, err, ErrNewerSchema)
		}
	})
}

// requireSameSnapshot requires got to be want as a store reads it back:
// every member the same, its times the same instants in UTC, the history
// the same results, the schema version the store's.
func requireSameSnapshot(t *testing.T, want, got *actors.Snapshot) {
	t.Helper()
	plain := func(s *actors.Snapshot) (actors.Snapshot, []health.Result) {
		c := *s
		c.Version = 0
		rs := c.State.History.Results()
		for i := range rs {
			rs[i].Start, rs[i].CertNotAfter = rs[i].Start.UTC(), rs[i].CertNotAfter.UTC()
		}
		c.State.History = health.History{}
		for _, at := range []*time.Time{&c.StartedAt, &c.NextCheckAt, &c.State.WindowStart, &c.State.Since,
			&c.State.LastCheckedAt, &c.State.LastSuccessAt, &c.State.LastFailureAt} {
			*at = at.UTC()
		}
		if r := c.State.Restart; r != nil {
			rc := *r
			rc.LastAttemptAt, rc.NextAttemptAt = rc.LastAttemptAt.UTC(), rc.NextAttemptAt.UTC()
			c.State.Restart = &rc
		}
		return c, rs
	}
	w, wr := plain(want)
	g, gr := plain(got)
	require.Equal(t, w, g)
	require.Equal(t, wr, gr)
}
