package persistence

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// storeMany stores n instances, each with its own port and, for all but every
// seventh, a snapshot whose texts differ in content and length, and reopens
// the store.
func storeMany(t *testing.T, n int) (string, []health.Instance) {
	t.Helper()
	dir := t.TempDir()
	s := open(t, dir)
	ins := make([]health.Instance, n)
	for i := range ins {
		in, err := health.InstanceSpec{State: health.Running, Network: &health.Network{IP: "127.0.0.1"},
			HealthCheck: &health.PolicySpec{TCP: &health.TCPSpec{Port: 1 + i%60000}, Interval: "5s"}}.Normalize(fmt.Sprintf("vm-%05d", i))
		require.NoError(t, err)
		ins[i] = in
	}
	require.NoError(t, s.PutInstances(context.Background(), ins))
	for i, in := range ins {
		if i%7 == 0 {
			continue
		}
		snap := snapOf(in, health.StatusHealthy, i%50)
		snap.State.LastError = strings.Repeat(fmt.Sprintf("e%d;", i), 1+i%9)
		snap.State.History.Add(health.Result{Outcome: health.Failure, Start: t0, Output: fmt.Sprintf("out-%d", i), Message: snap.State.LastError})
		s.SaveSnapshot(snap)
	}
	require.NoError(t, s.Flush(context.Background()))
	require.NoError(t, s.Close())
	return dir, ins
}

// A load spreads decoding over the host's cores and reuses its buffers from
// batch to batch: every record still arrives once, in id order, with its own
// snapshot and texts, none of them changed by a later batch in the same
// buffer.
func TestLoadReturnsEveryRecordInOrderWithItsOwnSnapshot(t *testing.T) {
	n := 12*loadBatchSize + 17
	dir, ins := storeMany(t, n)
	s := open(t, dir)
	defer s.Close()
	var got []health.Instance
	var snaps []*actors.Snapshot
	require.NoError(t, s.Load(context.Background(), func(in health.Instance, snap *actors.Snapshot) error {
		got = append(got, in)
		snaps = append(snaps, snap)
		return nil
	}))
	require.Len(t, got, n)
	for i, in := range got {
		require.Equal(t, ins[i].ID, in.ID, "id order")
		require.Equal(t, ins[i].HealthCheck.TCP.Port, in.HealthCheck.TCP.Port, in.ID)
		require.Equal(t, ins[i].Written, in.Written, in.ID)
		if i%7 == 0 {
			require.Nil(t, snaps[i], "%s has no snapshot", in.ID)
			continue
		}
		require.NotNil(t, snaps[i], in.ID)
		require.Equal(t, in.ID, snaps[i].ID)
		require.Equal(t, i%50, snaps[i].State.ConsecutiveSuccesses, in.ID)
		require.Equal(t, strings.Repeat(fmt.Sprintf("e%d;", i), 1+i%9), snaps[i].State.LastError, in.ID)
		res := snaps[i].State.History.Results()
		require.Len(t, res, 2, in.ID)
		require.Equal(t, "ok", res[0].Output, in.ID)
		require.Equal(t, fmt.Sprintf("out-%d", i), res[1].Output, in.ID)
		require.Equal(t, snaps[i].State.LastError, res[1].Message, in.ID)
	}
	assert.Zero(t, s.skipped)
	assert.Zero(t, s.Unreadable())
}

// A caller that fails, a cancelled context and a record from a newer schema
// in a later batch each end the load with their error, at once: the reader
// and the decoders stop (the package's leak check holds), and nothing after
// the failure reaches the caller.
func TestLoadStopsAtTheFirstFailure(t *testing.T) {
	n := 8 * loadBatchSize
	dir, _ := storeMany(t, n)
	s := open(t, dir)
	boom := errors.New("boom")
	calls := 0
	err := s.Load(context.Background(), func(health.Instance, *actors.Snapshot) error {
		if calls++; calls == loadBatchSize+3 {
			return boom
		}
		return nil
	})
	require.ErrorIs(t, err, boom)
	assert.Equal(t, loadBatchSize+3, calls, "no call after the failing one")

	ctx, cancel := context.WithCancel(context.Background())
	calls = 0
	err = s.Load(ctx, func(health.Instance, *actors.Snapshot) error {
		if calls++; calls == 10 {
			cancel()
		}
		return nil
	})
	require.ErrorIs(t, err, context.Canceled)
	assert.Less(t, calls, n)
	require.NoError(t, s.Close())

	rec := fmt.Sprintf(`{"v":%d,"instance":{"id":"vm-01000x","state":"Running"}}`, SchemaVersion+1)
	writeRaw(t, dir, []byte("i/vm-01000x"), []byte(rec))
	s = open(t, dir)
	defer s.Close()
	calls = 0
	err = s.Load(context.Background(), func(health.Instance, *actors.Snapshot) error { calls++; return nil })
	require.ErrorIs(t, err, ErrNewerSchema)
	assert.Equal(t, 1001, calls, "the records before the newer one, in order")
}

// A start makes each instance again from the spec as the client wrote it:
// the stored normalized form is not read where that is kept (a member this
// build does not know, or one of another shape, changes nothing), a record
// of a build that kept no written spec loads from its normalized form, and a
// record is refused for its written spec alone.
func TestALoadMakesAnInstanceFromItsWrittenSpec(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	require.NoError(t, s.PutInstances(context.Background(), []health.Instance{inst(t, "vm-a")}))
	require.NoError(t, s.Close())
	written := `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"interval":"5s","tcp":{"port":%d}}}`
	records := map[string]string{
		// another build's normalized form: a member unknown here, one of another shape
		"vm-b": `{"v":1,"instance":{"id":"vm-b","state":"Running","zone":{"rack":7},"health_check":{"interval":"fast"}},` +
			`"spec":` + fmt.Sprintf(written, 82) + `}`,
		// a build that kept no written spec
		"vm-c": `{"v":1,"instance":{"id":"vm-c","state":"Running","network":{"ip":"127.0.0.1"},` +
			`"health_check":{"type":"tcp","interval":"5s","timeout":"1s","start_period":"0s","start_interval":"5s",` +
			`"failure_threshold":3,"success_threshold":1,"tcp":{"port":83}}}}`,
		// a written spec this build refuses
		"vm-d": `{"v":1,"instance":{"id":"vm-d","state":"Running"},"spec":{"state":"Running","health_check":{"interval":"fast","tcp":{"port":84}}}}`,
		// a record under another id's key
		"vm-e": `{"v":1,"instance":{"id":"vm-x","state":"Running"},"spec":` + fmt.Sprintf(written, 85) + `}`,
	}
	for id, rec := range records {
		writeRaw(t, dir, []byte("i/"+id), []byte(rec))
	}
	s = open(t, dir)
	defer s.Close()
	got := map[string]health.Instance{}
	require.NoError(t, s.Load(context.Background(), func(in health.Instance, _ *actors.Snapshot) error {
		got[in.ID] = in
		return nil
	}))
	require.Len(t, got, 3, "vm-d and vm-e are refused")
	assert.Equal(t, 80, got["vm-a"].HealthCheck.TCP.Port)
	assert.Equal(t, 82, got["vm-b"].HealthCheck.TCP.Port)
	assert.Equal(t, 5*time.Second, got["vm-b"].HealthCheck.Interval)
	assert.JSONEq(t, fmt.Sprintf(written, 82), string(got["vm-b"].Written))
	assert.Equal(t, 83, got["vm-c"].HealthCheck.TCP.Port)
	assert.Equal(t, 2, s.skipped)
}

// A load of a closed store ends with an error rather than waiting for a
// transaction that never starts.
func TestALoadOfAClosedStoreEndsWithAnError(t *testing.T) {
	s := open(t, t.TempDir())
	require.NoError(t, s.PutInstance(context.Background(), inst(t, "vm-1")))
	require.NoError(t, s.Close())
	done := make(chan error, 1)
	go func() {
		done <- s.Load(context.Background(), func(health.Instance, *actors.Snapshot) error { return nil })
	}()
	select {
	case err := <-done:
		require.Error(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the load of a closed store did not end")
	}
}
