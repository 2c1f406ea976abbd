package persistence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

func TestMain(m *testing.M) {
	if crashChild() {
		return
	}
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"),
		// Badger's shared ristretto cache and z.Closer goroutines end a moment after Close
		goleak.IgnoreAnyFunction("github.com/dgraph-io/ristretto/v2.(*defaultPolicy[...]).processItems"),
		goleak.IgnoreAnyFunction("github.com/dgraph-io/ristretto/v2.(*Cache[...]).processItems"),
	)
}

var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

func open(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Options{Logger: zerolog.Nop()})
	require.NoError(t, err)
	return s
}

func inst(t testing.TB, id string) health.Instance {
	t.Helper()
	in, err := health.InstanceSpec{State: health.Running, Network: &health.Network{IP: "127.0.0.1"},
		HealthCheck: &health.PolicySpec{TCP: &health.TCPSpec{Port: 80}, Interval: "5s"}}.Normalize(id)
	require.NoError(t, err)
	return in
}

func snapOf(in health.Instance, status health.Status, successes int) *actors.Snapshot {
	st := health.State{Window: 1, Eval: status, Status: status, ConsecutiveSuccesses: successes, Since: t0}
	st.History.Add(health.Result{Outcome: health.Success, Start: t0, Output: "ok"})
	return &actors.Snapshot{ID: in.ID, Lifecycle: in.State, Policy: in.HealthCheck, State: st, NextCheckAt: t0.Add(5 * time.Second)}
}

func loadAll(t *testing.T, s *Store) map[string]*actors.Snapshot {
	t.Helper()
	out := map[string]*actors.Snapshot{}
	require.NoError(t, s.Load(context.Background(), func(in health.Instance, snap *actors.Snapshot) error {
		out[in.ID] = snap
		return nil
	}))
	return out
}

func TestSpecsSnapshotsAndEventsSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	ctx := context.Background()
	a, b := inst(t, "a"), inst(t, "b")
	require.NoError(t, s.PutInstance(ctx, a))
	require.NoError(t, s.PutInstance(ctx, b))
	s.SaveSnapshot(snapOf(a, health.StatusHealthy, 7))
	published := make(chan actors.Event, 2)
	s.AppendTransition(snapOf(b, health.StatusUnhealthy, 0),
		actors.Event{InstanceID: "b", Transition: health.Transition{From: "starting", To: "unhealthy", At: t0, Reason: "timeout"}},
		func(ev actors.Event) { published <- ev })
	ev := <-published
	assert.Equal(t, uint64(1), ev.Seq)
	require.NoError(t, s.Flush(ctx))
	require.NoError(t, s.Close())

	s = open(t, dir)
	got := loadAll(t, s)
	require.Len(t, got, 2)
	assert.Equal(t, 7, got["a"].State.ConsecutiveSuccesses)
	assert.Equal(t, health.StatusHealthy, got["a"].State.Status)
	assert.Equal(t, "ok", got["a"].State.History.Results()[0].Output)
	assert.True(t, got["a"].Policy.Equal(a.HealthCheck))
	assert.Equal(t, health.StatusUnhealthy, got["b"].State.Status)
	events, oldest, err := s.Events(0, 10)
	require.NoError(t, err)
	require.Len(t, events, 1)
	assert.Equal(t, uint64(1), oldest)
	assert.Equal(t, health.Reason("timeout"), events[0].Reason)

	s.AppendTransition(snapOf(a, health.StatusUnhealthy, 0), actors.Event{InstanceID: "a"}, func(ev actors.Event) { published <- ev })
	assert.Equal(t, uint64(2), (<-published).Seq, "sequence numbers continue after a restart")
	require.NoError(t, s.Close())
}

func TestDeleteRemovesSpecSnapshotAndPendingWrites(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	ctx := context.Background()
	a := inst(t, "a")
	require.NoError(t, s.PutInstance(ctx, a))
	s.SaveSnapshot(snapOf(a, health.StatusHealthy, 1))
	require.NoError(t, s.Flush(ctx))
	s.SaveSnapshot(snapOf(a, health.StatusHealthy, 2)) // pending
	require.NoError(t, s.DeleteInstance(ctx, "a"))
	s.SaveSnapshot(snapOf(a, health.StatusHealthy, 3)) // after the delete: dropped
	require.NoError(t, s.Flush(ctx))
	_, err := s.Snapshot("a")
	assert.ErrorIs(t, err, actors.ErrNotStored)
	require.NoError(t, s.Close())
	s = open(t, dir)
	defer s.Close()
	assert.Empty(t, loadAll(t, s))
}

func TestSnapshotReadsNewestQueued(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	a := inst(t, "a")
	require.NoError(t, s.PutInstance(context.Background(), a))
	s.SaveSnapshot(snapOf(a, health.StatusHealthy, 4))
	snap, err := s.Snapshot("a")
	require.NoError(t, err)
	assert.Equal(t, 4, snap.State.ConsecutiveSuccesses)
	require.NoError(t, s.Flush(context.Background()))
	snap, err = s.Snapshot("a")
	require.NoError(t, err)
	assert.Equal(t, 4, snap.State.ConsecutiveSuccesses)
}

func TestDirectoryInUseNamesIt(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	defer s.Close()
	_, err := Open(dir, Options{Logger: zerolog.Nop()})
	require.Error(t, err)
	assert.Contains(t, err.Error(), dir)
	assert.Contains(t, err.Error(), "in use by another process")
}

// writeRaw puts a raw record straight into Badger.
func writeRaw(t *testing.T, dir string, k, v []byte) {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	require.NoError(t, err)
	require.NoError(t, db.Update(func(txn *badger.Txn) error { return txn.Set(k, v) }))
	require.NoError(t, db.Close())
}

func TestBadRecordsAreSkippedNewerOnesRefuse(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	require.NoError(t, s.PutInstance(context.Background(), inst(t, "good")))
	require.NoError(t, s.Close())
	writeRaw(t, dir, []byte("i/broken"), []byte("{not json"))
	writeRaw(t, dir, []byte("i/invalid"), []byte(`{"v":1,"instance":{"id":"invalid","state":"Sleeping"}}`))

	s = open(t, dir)
	got := loadAll(t, s)
	assert.Len(t, got, 1, "undecodable and invalid records are skipped, the rest loads")
	assert.Contains(t, got, "good")
	require.NoError(t, s.Close())

	rec, _ := json.Marshal(map[string]any{"v": SchemaVersion + 1, "instance": map[string]any{"id": "zz", "state": "Running"}})
	writeRaw(t, dir, []byte("i/zz"), rec)
	s = open(t, dir)
	defer s.Close()
	err := s.Load(context.Background(), func(health.Instance, *actors.Snapshot) error { return nil })
	require.ErrorIs(t, err, ErrNewerSchema)
	assert.Contains(t, err.Error(), "upgrade vigil")
}

func TestEventRetention(t *testing.T) {
	now := t0
	s, err := Open(t.TempDir(), Options{Logger: zerolog.Nop(), Retention: 10, RetentionAge: time.Hour, Now: func() time.Time { return now }})
	require.NoError(t, err)
	defer s.Close()
	for i := 0; i < 30; i++ {
		at := t0.Add(-2 * time.Hour) // old enough
		if i >= 25 {
			at = t0 // recent
		}
		s.AppendTransition(&actors.Snapshot{ID: "x"}, actors.Event{InstanceID: "x", Transition: health.Transition{At: at}}, nil)
	}
	require.NoError(t, s.Flush(context.Background()))
	s.prune()
	events, oldest, err := s.Events(0, 100)
	require.NoError(t, err)
	assert.Equal(t, uint64(21), oldest, "the newest 10 are kept")
	assert.Len(t, events, 10)
	assert.Equal(t, uint64(30), events[9].Seq)
	page, _, err := s.Events(25, 3)
	require.NoError(t, err)
	require.Len(t, page, 3)
	assert.Equal(t, uint64(26), page[0].Seq)
}

func TestConcurrentSpecWritesShareSyncs(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.PutInstance(context.Background(), inst(t, fmt.Sprintf("vm-%03d", i)))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.Len(t, loadAll(t, s), 200)
}

func TestClosedStoreRefuses(t *testing.T) {
	s := open(t, t.TempDir())
	require.NoError(t, s.Close())
	assert.True(t, errors.Is(s.PutInstance(context.Background(), inst(t, "a")), ErrClosed))
	assert.NoError(t, s.Close())
}

// TestFullDiskRefusesWritesAndRecovers runs the store with a file system
// that reports too little free space: spec writes fail (nothing changed),
// transitions wait in order, and all of it lands once space returns.
func TestFullDiskRefusesWritesAndRecovers(t *testing.T) {
	var free atomic.Int64
	free.Store(1 << 40)
	dir := t.TempDir()
	s, err := Open(dir, Options{Logger: zerolog.Nop(), FlushInterval: 10 * time.Millisecond,
		FreeSpace: func(string) (int64, error) { return free.Load(), nil }})
	require.NoError(t, err)
	ctx := context.Background()
	in := func(id string) health.Instance {
		i, err := health.InstanceSpec{State: health.Stopped}.Normalize(id)
		require.NoError(t, err)
		return i
	}
	require.NoError(t, s.PutInstance(ctx, in("a")))
	free.Store(FreeFloor - 1)
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err = s.PutInstance(wctx, in("b"))
	cancel()
	require.ErrorIs(t, err, ErrDiskFull, "a spec that cannot be made durable is refused")
	require.ErrorIs(t, s.Health(), ErrDiskFull)
	var published []uint64
	var mu sync.Mutex
	for range 3 {
		s.AppendTransition(&actors.Snapshot{ID: "a", Version: 1}, actors.Event{InstanceID: "a",
			Transition: health.Transition{From: health.StatusHealthy, To: health.StatusUnhealthy}}, func(ev actors.Event) {
			mu.Lock()
			published = append(published, ev.Seq)
			mu.Unlock()
		})
	}
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	assert.Empty(t, published, "nothing is published before it is durable")
	mu.Unlock()

	free.Store(1 << 40) // space returns
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(published) == 3 }, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, []uint64{1, 2, 3}, published, "in order")
	assert.NoError(t, s.Health())
	require.NoError(t, s.PutInstance(ctx, in("b")))
	require.NoError(t, s.Close())

	s, err = Open(dir, Options{Logger: zerolog.Nop()})
	require.NoError(t, err)
	defer s.Close()
	var ids []string
	require.NoError(t, s.Load(ctx, func(in health.Instance, _ *actors.Snapshot) error { ids = append(ids, in.ID); return nil }))
	assert.Equal(t, []string{"a", "b"}, ids)
	evs, _, err := s.Events(0, 10)
	require.NoError(t, err)
	assert.Len(t, evs, 3)
}

// TestRecordCountSurvivesRefusedChanges checks the count of instance records
// a load compares with: changes refused for want of space do not count, so a
// later start reports nothing unreadable that is not.
func TestRecordCountSurvivesRefusedChanges(t *testing.T) {
	var free atomic.Int64
	free.Store(1 << 40)
	dir := t.TempDir()
	s, err := Open(dir, Options{Logger: zerolog.Nop(), FlushInterval: 10 * time.Millisecond,
		FreeSpace: func(string) (int64, error) { return free.Load(), nil }})
	require.NoError(t, err)
	ctx := context.Background()
	in := func(id string) health.Instance {
		i, err := health.InstanceSpec{State: health.Stopped}.Normalize(id)
		require.NoError(t, err)
		return i
	}
	for _, id := range []string{"a", "b", "c"} {
		require.NoError(t, s.PutInstance(ctx, in(id)))
	}
	free.Store(FreeFloor - 1)
	require.ErrorIs(t, s.PutInstance(ctx, in("d")), ErrDiskFull)
	require.ErrorIs(t, s.PutInstance(ctx, in("f")), ErrDiskFull)
	require.ErrorIs(t, s.DeleteInstance(ctx, "a"), ErrDiskFull)
	free.Store(1 << 40)
	require.NoError(t, s.PutInstance(ctx, in("e")))
	require.NoError(t, s.DeleteInstance(ctx, "b"))
	require.NoError(t, s.Close())

	s, err = Open(dir, Options{Logger: zerolog.Nop()})
	require.NoError(t, err)
	defer s.Close()
	var ids []string
	require.NoError(t, s.Load(ctx, func(in health.Instance, _ *actors.Snapshot) error { ids = append(ids, in.ID); return nil }))
	assert.Equal(t, []string{"a", "c", "e"}, ids)
	assert.Zero(t, s.Unreadable())
}

// TestOutageBacklogKeepsEveryTransitionAndOneSnapshot checks what waits
// while writes fail: every transition, in order, and only the newest
// snapshot of each instance.
func TestOutageBacklogKeepsEveryTransitionAndOneSnapshot(t *testing.T) {
	var free atomic.Int64
	free.Store(1 << 40)
	dir := t.TempDir()
	s, err := Open(dir, Options{Logger: zerolog.Nop(), FlushInterval: 5 * time.Millisecond,
		FreeSpace: func(string) (int64, error) { return free.Load(), nil }})
	require.NoError(t, err)
	ctx := context.Background()
	for _, id := range []string{"a", "b"} {
		in, err := health.InstanceSpec{State: health.Stopped}.Normalize(id)
		require.NoError(t, err)
		require.NoError(t, s.PutInstance(ctx, in))
	}
	free.Store(FreeFloor - 1)
	var mu sync.Mutex
	var published []uint64
	const n = 2000
	at := func(i int) time.Time { return time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC) }
	for i := range n {
		id := []string{"a", "b"}[i%2]
		s.AppendTransition(&actors.Snapshot{ID: id, NextCheckAt: at(i)}, actors.Event{InstanceID: id,
			Transition: health.Transition{From: health.StatusHealthy, To: health.StatusUnhealthy}}, func(ev actors.Event) {
			mu.Lock()
			published = append(published, ev.Seq)
			mu.Unlock()
		})
	}
	// commits fail meanwhile; between a failed commit taking the backlog and
	// putting it back the queues are empty, so look when none is in flight
	failed := func() float64 { return testutil.ToFloat64(s.metrics.failures) }
	require.Eventually(t, func() bool { return failed() >= 3 }, 5*time.Second, time.Millisecond, "commits fail")
	var queuedSnaps, queuedEvents int
	require.Eventually(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		queuedSnaps, queuedEvents = len(s.snaps), len(s.transitions)
		return s.writing == nil
	}, 5*time.Second, time.Millisecond, "a moment between commits")
	assert.Equal(t, 2, queuedSnaps, "one snapshot per instance waits")
	assert.Equal(t, n, queuedEvents, "every transition waits")
	snap, err := s.Snapshot("a")
	require.NoError(t, err)
	assert.Equal(t, at(n-2), snap.NextCheckAt, "the newest")

	free.Store(1 << 40)
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(published) == n }, 5*time.Second, 10*time.Millisecond)
	for i, seq := range published {
		require.EqualValues(t, i+1, seq, "published in order once durable")
	}
	require.NoError(t, s.Close())
	s, err = Open(dir, Options{Logger: zerolog.Nop()})
	require.NoError(t, err)
	defer s.Close()
	snaps := map[string]time.Time{}
	require.NoError(t, s.Load(ctx, func(in health.Instance, snap *actors.Snapshot) error {
		require.NotNil(t, snap)
		snaps[in.ID] = snap.NextCheckAt.UTC()
		return nil
	}))
	assert.Equal(t, map[string]time.Time{"a": at(n - 2), "b": at(n - 1)}, snaps)
	evs, _, err := s.Events(0, n+10)
	require.NoError(t, err)
	assert.Len(t, evs, n)
}

// Found by FuzzLoadDamagedRecords: a key under the events' prefix that is not
// 8 bytes of sequence number (a damaged record) made Open panic reading the
// oldest and newest sequence numbers. Such a key is left alone.
func TestAStrayKeyAmongTheEventsDoesNotStopOpen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	in := inst(t, "vm-1")
	require.NoError(t, s.PutInstance(context.Background(), in))
	s.AppendTransition(snapOf(in, health.StatusHealthy, 1), actors.Event{InstanceID: "vm-1",
		Transition: health.Transition{From: health.StatusStarting, To: health.StatusHealthy, At: t0}}, nil)
	require.NoError(t, s.Flush(context.Background()))
	require.NoError(t, s.db.Update(func(txn *badger.Txn) error {
		for _, k := range []string{"e/", "e/\x01", "e/\xff\xff\xff\xff\xff\xff\xff\xff\xff"} {
			if err := txn.Set([]byte(k), []byte("{}")); err != nil {
				return err
			}
		}
		return nil
	}))
	require.NoError(t, s.Close())

	s = open(t, dir)
	defer s.Close()
	assert.Equal(t, uint64(1), s.LastSeq())
	evs, oldest, err := s.Events(0, 10)
	require.NoError(t, err)
	assert.Equal(t, uint64(1), oldest)
	require.Len(t, evs, 1, "the stray records are not events")
	assert.Equal(t, uint64(1), evs[0].Seq)
	assert.Len(t, loadAll(t, s), 1)
}

// A directory that cannot be opened for its host's fault (permissions, a
// full or read-only disk, too few files allowed) is not called damaged: the
// message says what to fix and that nothing needs moving; Badger's own
// errors of damaged files still say to move the directory aside.
func TestADirectoryTheHostCannotOpenIsNotCalledDamaged(t *testing.T) {
	for _, c := range []struct {
		err     error
		want    string
		damaged bool
	}{
		{&os.PathError{Op: "open", Path: "/d/MANIFEST", Err: syscall.EACCES}, "permissions", false},
		{fmt.Errorf("while opening memtables err: %w", &os.PathError{Op: "open", Path: "/d", Err: syscall.EROFS}), "read-only", false},
		{errors.New("Unable to open mem dir.. Path=/d. Error=open /d: too many open files"), "LimitNOFILE", false},
		{errors.New("Error=open /d/1.sst: too many open files in system"), "the host has too many files open", false},
		{errors.New("write /d/000003.vlog: no space left on device"), "disk is full", false},
		{errors.New("Cannot write pid file \"/d/LOCK\" err: open /d/LOCK: not a directory"), "not a directory", false},
		{errors.New("failed to read table 7: checksum mismatch"), "000007.sst", true},
		{errors.New("MANIFEST has bad magic"), "MANIFEST", true},
		{&os.PathError{Op: "open", Path: "/d/000002.sst", Err: syscall.ENOENT}, "", true},
	} {
		err := damagedDir("/d", c.err)
		assert.ErrorIs(t, err, c.err)
		assert.Contains(t, err.Error(), c.want, c.err.Error())
		if c.damaged {
			assert.Contains(t, err.Error(), "move the directory aside", c.err.Error())
		} else {
			assert.NotContains(t, err.Error(), "move the directory aside", c.err.Error())
			assert.Contains(t, err.Error(), "not damaged", c.err.Error())
		}
	}
}
