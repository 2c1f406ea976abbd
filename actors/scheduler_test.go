package actors

import (
	"context"
	"errors"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/vigilhq/vigil/clock"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/internal/tcptest"
	"github.com/vigilhq/vigil/probes"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// protoactor's dead-letter throttle starts a goroutine that ends by
		// itself one throttle interval after the first dead letter
		goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"),
	)
}

func TestFailingTargetBecomesUnhealthyAtThreshold(t *testing.T) {
	h := newHarness(t)
	sub := h.s.Subscribe(16)
	defer sub.Close()
	js := `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":` + strconv.Itoa(deadPort(t)) +
		`},"start_period":"0s","failure_threshold":3}}`
	info := h.put("vm-1", js)
	assert.Equal(t, health.StatusStarting, info.Health.Status)
	ev := <-sub.C
	assert.Equal(t, health.StatusStarting, ev.To)

	h.advance(0)
	info = h.results("vm-1", 1)
	assert.Equal(t, health.StatusStarting, info.Health.Status)
	assert.Equal(t, 1, info.Health.ConsecutiveFailures)
	assert.Equal(t, "connection_refused", string(info.Health.History[0].Reason))
	assert.Equal(t, t0.Add(2*time.Second), *info.Health.NextCheckAt, "start_interval while starting")

	h.advance(2 * time.Second)
	info = h.results("vm-1", 2)
	assert.Equal(t, health.StatusStarting, info.Health.Status)
	h.advance(2 * time.Second)
	info = h.results("vm-1", 3)
	assert.Equal(t, health.StatusUnhealthy, info.Health.Status, "unhealthy at exactly the third counted failure")
	assert.Equal(t, 3, info.Health.ConsecutiveFailures)
	assert.NotEmpty(t, info.Health.LastError)

	ev = <-sub.C
	assert.Equal(t, health.StatusStarting, ev.From)
	assert.Equal(t, health.StatusUnhealthy, ev.To)
	assert.Equal(t, health.ReasonConnectionRefused, ev.Reason)
	assert.Equal(t, uint64(2), ev.Seq)
	assert.Equal(t, 1, h.s.Summary()[health.StatusUnhealthy])
}

func TestSlowBootStaysStartingInsideGrace(t *testing.T) {
	h := newHarness(t)
	tg := newTarget(t)
	tg.code.Store(http.StatusServiceUnavailable)
	h.put("vm-1", tg.policy(`,"start_period":"10s","interval":"5s","timeout":"1s"`))
	h.advance(0)
	n := 1
	for elapsed := time.Duration(0); elapsed < 9*time.Second; elapsed += time.Second {
		info := h.results("vm-1", n)
		assert.Equal(t, health.StatusStarting, info.Health.Status)
		assert.Zero(t, info.Health.ConsecutiveFailures, "failures inside the grace are not counted")
		assert.Contains(t, info.Health.LastError, "HTTP status 503")
		h.advance(time.Second)
		n++
	}
	info := h.results("vm-1", n)
	assert.Len(t, info.Health.History, 10, "every failure is recorded")
	tg.code.Store(http.StatusOK)
	h.advance(time.Second)
	info = h.results("vm-1", n+1)
	assert.Equal(t, health.StatusHealthy, info.Health.Status)
	assert.Empty(t, info.Health.LastError)
}

func TestInitializingReadsStartingWhileProbesPass(t *testing.T) {
	h := newHarness(t)
	tg := newTarget(t)
	js := tg.policy("")
	js = js[:len(`{"state":"`)] + "Initializing" + js[len(`{"state":"Running`):]
	h.put("vm-1", js)
	h.advance(0)
	info := h.results("vm-1", 1)
	assert.Equal(t, health.StatusStarting, info.Health.Status)
	assert.Equal(t, 1, info.Health.ConsecutiveSuccesses)

	info, err := h.s.SetState(context.Background(), "vm-1", health.Running, nil)
	require.NoError(t, err)
	assert.Equal(t, health.StatusHealthy, info.Health.Status, "Running reveals the evidence gathered while Initializing")
}

func TestStoppedReadsUnknownAndProbingStops(t *testing.T) {
	h := newHarness(t)
	tg := newTarget(t)
	h.put("vm-1", tg.policy(""))
	h.advance(0)
	h.results("vm-1", 1)
	info, err := h.s.SetState(context.Background(), "vm-1", health.Stopped, nil)
	require.NoError(t, err)
	assert.Equal(t, health.StatusUnknown, info.Health.Status)
	assert.Nil(t, info.Health.NextCheckAt)
	hits := tg.hits.Load()
	h.advance(time.Minute)
	assert.Zero(t, h.clk.Pending(), "no timer left for a stopped instance")
	assert.Equal(t, hits, tg.hits.Load(), "no probe while Stopped")

	r, _, err := h.s.ProbeNow(context.Background(), "vm-1")
	require.NoError(t, err)
	assert.Equal(t, health.Skipped, r.Outcome)
	assert.Equal(t, health.ReasonInactive, r.Reason)

	info, err = h.s.SetState(context.Background(), "vm-1", health.Running, nil)
	require.NoError(t, err)
	assert.Equal(t, health.StatusStarting, info.Health.Status, "running again opens a fresh window")
	assert.Zero(t, info.Health.ConsecutiveSuccesses)
}

func TestPolicyChangeOpensFreshWindow(t *testing.T) {
	h := newHarness(t)
	tg := newTarget(t)
	h.put("vm-1", tg.policy(""))
	h.advance(0)
	info := h.results("vm-1", 1)
	require.Equal(t, health.StatusHealthy, info.Health.Status)
	info = h.put("vm-1", tg.policy(`,"success_threshold":2`))
	assert.Equal(t, health.StatusStarting, info.Health.Status)
	assert.Zero(t, info.Health.ConsecutiveSuccesses)
	h.advance(0)
	info = h.results("vm-1", 2)
	assert.Equal(t, health.StatusStarting, info.Health.Status)
	assert.Equal(t, 1, info.Health.ConsecutiveSuccesses)

	// changing only the address keeps the counters
	info, err := h.s.Update(context.Background(), "vm-1", func(cur health.InstanceSpec) (health.InstanceSpec, error) {
		cur.Network = &health.Network{IP: "127.0.0.2"}
		return cur, nil
	})
	require.NoError(t, err)
	assert.Equal(t, 1, info.Health.ConsecutiveSuccesses)
}

func TestResultAfterLifecycleChangeIsDiscarded(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	factory := func(in health.Instance) (probes.Prober, error) {
		return probes.Func(func(ctx context.Context) health.Result {
			started <- struct{}{}
			<-release // ignores ctx on purpose: a probe that returns late
			return health.Result{Outcome: health.Success}
		}), nil
	}
	h := newHarness(t, WithProberFactory(factory))
	h.put("vm-1", `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":1}}}`)
	h.advance(0)
	<-started
	_, err := h.s.SetState(context.Background(), "vm-1", health.Paused, nil)
	require.NoError(t, err)
	close(release)
	require.Eventually(t, func() bool { return h.rec.count("vm-1") == 1 }, 5*time.Second, time.Millisecond)
	info := h.get("vm-1")
	assert.Equal(t, health.StatusUnknown, info.Health.Status)
	assert.Empty(t, info.Health.History, "the late result was not applied")
	assert.Zero(t, info.Health.ConsecutiveSuccesses)
}

func TestProbePanicIsAFailure(t *testing.T) {
	factory := func(in health.Instance) (probes.Prober, error) {
		return probes.Func(func(context.Context) health.Result { panic("boom") }), nil
	}
	h := newHarness(t, WithProberFactory(factory))
	h.put("vm-1", `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":1}}}`)
	h.advance(0)
	info := h.results("vm-1", 1)
	require.Len(t, info.Health.History, 1)
	assert.Equal(t, health.Failure, info.Health.History[0].Outcome)
	assert.Equal(t, health.ReasonPanic, info.Health.History[0].Reason)
	assert.Contains(t, info.Health.LastError, "boom")
}

// crashingHarness registers vm-1 against a healthy target, probes it once, and
// returns a switch that makes the next prober construction panic inside the
// actor.
func crashingHarness(t *testing.T) (*harness, *atomic.Bool) {
	t.Helper()
	crash := new(atomic.Bool)
	factory := func(in health.Instance) (probes.Prober, error) {
		if crash.CompareAndSwap(true, false) {
			panic("prober construction bug")
		}
		return probes.New(in)
	}
	h := newHarness(t, WithProberFactory(factory), WithAskTimeout(500*time.Millisecond))
	tg := newTarget(t)
	h.put("vm-1", tg.policy(""))
	h.advance(0)
	return h, crash
}

func TestActorPanicRestartsWithItsState(t *testing.T) {
	h, crash := crashingHarness(t)
	info := h.results("vm-1", 1)
	require.Equal(t, health.StatusHealthy, info.Health.Status)

	crash.Store(true)
	spec := info.Spec()
	spec.Name = "renamed"
	spec.Network = &health.Network{IP: "127.0.0.1"}
	spec.HealthCheck.Interval = "20s" // a policy change rebuilds the prober, which panics once
	_, _, err := h.s.Put(context.Background(), "vm-1", spec)
	require.Error(t, err, "the request that crashed the actor is not acknowledged by it")

	require.Eventually(t, func() bool {
		info, err := h.s.Get(context.Background(), "vm-1")
		return err == nil && info.Health.Status != ""
	}, 5*time.Second, 5*time.Millisecond)
	info = h.get("vm-1")
	assert.Equal(t, "renamed", info.Name, "the restarted actor reads the durable spec")
	assert.Equal(t, health.StatusStarting, info.Health.Status, "and reconciles the new policy: a fresh window")
	assert.True(t, h.s.Ready())
}

func TestActorRestartKeepsStatus(t *testing.T) {
	h, crash := crashingHarness(t)
	require.Equal(t, health.StatusHealthy, h.results("vm-1", 1).Health.Status)

	crash.Store(true)
	_, err := h.s.Update(context.Background(), "vm-1", func(cur health.InstanceSpec) (health.InstanceSpec, error) {
		cur.Network = &health.Network{IP: "127.0.0.2"} // a new target: the prober is rebuilt
		cur.Name = "moved"
		return cur, nil
	})
	require.Error(t, err)
	require.Eventually(t, func() bool {
		info, err := h.s.Get(context.Background(), "vm-1")
		return err == nil && info.Name == "moved"
	}, 5*time.Second, 5*time.Millisecond)
	info := h.get("vm-1")
	assert.Equal(t, health.StatusHealthy, info.Health.Status, "a restarted actor does not fall back to starting")
	assert.Equal(t, 1, info.Health.ConsecutiveSuccesses)
	h.advance(time.Hour)
	info = h.results("vm-1", 2)
	assert.Equal(t, health.ReasonConnectionRefused, info.Health.History[1].Reason, "and keeps probing the new address")
	assert.Equal(t, health.StatusHealthy, info.Health.Status)
	assert.Equal(t, 1, info.Health.ConsecutiveFailures)
}

func TestProbeNowJoinsInFlightProbe(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	factory := func(in health.Instance) (probes.Prober, error) {
		return probes.Func(func(ctx context.Context) health.Result {
			calls.Add(1)
			select {
			case <-release:
			case <-ctx.Done():
			}
			return health.Result{Outcome: health.Success}
		}), nil
	}
	h := newHarness(t, WithProberFactory(factory))
	h.put("vm-1", `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":1},"timeout":"5s"}}`)
	// three requests in the actor's mailbox before the probe may end: the
	// first starts it, the others must join it
	pid := h.s.lookup("vm-1").pid.Load()
	var futures []*actor.Future
	for range 3 {
		futures = append(futures, h.s.root.RequestFuture(pid, &probeNow{}, 10*time.Second))
	}
	require.Eventually(t, func() bool { return calls.Load() == 1 }, 5*time.Second, time.Millisecond)
	close(release)
	var starts []time.Time
	for _, f := range futures {
		res, err := f.Result()
		require.NoError(t, err)
		r := res.(*probeNowReply)
		assert.Equal(t, health.Success, r.result.Outcome)
		starts = append(starts, r.result.Start)
	}
	assert.Equal(t, starts[0], starts[2], "the same result")
	_, _, err := h.s.ProbeNow(context.Background(), "vm-1")
	require.NoError(t, err, "through the API too")
	assert.Equal(t, int32(2), calls.Load(), "three callers, one probe; then one more")
}

func TestBudgetFullIsSkippedNotFailed(t *testing.T) {
	factory := func(in health.Instance) (probes.Prober, error) {
		return probes.Func(func(ctx context.Context) health.Result {
			if in.ID == "hog" {
				<-ctx.Done()
				return health.Result{Outcome: health.Failure, Reason: health.ReasonTimeout}
			}
			return health.Result{Outcome: health.Success}
		}), nil
	}
	h := newHarness(t, WithProberFactory(factory), WithProbeBudget(1))
	h.put("hog", `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":1},"timeout":"1s"}}`)
	h.advance(0)
	require.Eventually(t, func() bool { return h.s.InFlight() == 1 }, 5*time.Second, time.Millisecond)
	h.put("other", `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":1},"timeout":"1s"}}`)
	h.advance(0)
	// the hog holds the only slot for its real 1s timeout; other waits up to its own 1s and is skipped
	require.Eventually(t, func() bool {
		info := h.get("other")
		return len(info.Health.History) == 1 || info.Health.ConsecutiveSuccesses == 1
	}, 5*time.Second, 5*time.Millisecond)
	info := h.get("other")
	if info.Health.ConsecutiveSuccesses == 0 {
		assert.Equal(t, health.Skipped, info.Health.History[0].Outcome)
		assert.Equal(t, health.ReasonBudgetFull, info.Health.History[0].Reason)
		assert.Zero(t, info.Health.ConsecutiveFailures, "skipped never counts")
	}
}

func TestBudgetOrdersUrgentFirst(t *testing.T) {
	b := newBudget(1)
	require.True(t, b.acquire(context.Background(), false))
	order := make(chan string, 2)
	go func() {
		if b.acquire(context.Background(), false) {
			order <- "normal"
			b.release()
		}
	}()
	require.Eventually(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.normal.Len() == 1 }, time.Second, time.Millisecond)
	go func() {
		if b.acquire(context.Background(), true) {
			order <- "urgent"
			b.release()
		}
	}()
	require.Eventually(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.urgent.Len() == 1 }, time.Second, time.Millisecond)
	b.release()
	assert.Equal(t, "urgent", <-order)
	assert.Equal(t, "normal", <-order)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	require.True(t, b.acquire(context.Background(), true))
	assert.False(t, b.acquire(ctx, true), "gives up at its deadline")
	b.release()
	assert.Equal(t, 0, b.inFlight(1))
}

func TestSubscriberThatLagsIsToldSo(t *testing.T) {
	h := newHarness(t)
	sub := h.s.Subscribe(1)
	h.put("a", `{"state":"Running"}`)
	h.put("b", `{"state":"Running"}`)
	h.put("c", `{"state":"Running"}`)
	_, ok := <-sub.C
	assert.True(t, ok, "the buffered event is delivered")
	_, ok = <-sub.C
	assert.False(t, ok, "then the channel closes")
	assert.ErrorIs(t, sub.Err(), ErrLagged)
	events, _, err := h.store.Events(0, 10)
	require.NoError(t, err)
	assert.Len(t, events, 3, "nothing was lost from the log: the subscriber can re-list")
}

func TestListSummaryRemove(t *testing.T) {
	h := newHarness(t)
	tg := newTarget(t)
	h.put("b", tg.policy(""))
	h.put("a", `{"state":"Stopped"}`)
	h.put("c", `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":1}}}`)
	page, next := h.s.List(Filter{}, "", 2)
	require.Len(t, page, 2)
	assert.Equal(t, "a", page[0].ID)
	assert.Equal(t, "b", next)
	page, next = h.s.List(Filter{}, next, 2)
	require.Len(t, page, 1)
	assert.Equal(t, "c", page[0].ID)
	assert.Empty(t, next)
	page, _ = h.s.List(Filter{Statuses: []health.Status{health.StatusDisabled}}, "", 10)
	require.Len(t, page, 1)
	assert.Equal(t, "a", page[0].ID)
	assert.Equal(t, map[health.Status]int{health.StatusDisabled: 1, health.StatusStarting: 2,
		health.StatusHealthy: 0, health.StatusUnhealthy: 0, health.StatusUnknown: 0}, h.s.Summary())

	require.NoError(t, h.s.Remove(context.Background(), "b"))
	assert.ErrorIs(t, h.s.Remove(context.Background(), "b"), ErrNotFound)
	_, err := h.s.Get(context.Background(), "b")
	assert.ErrorIs(t, err, ErrNotFound)
	_, err = h.store.Snapshot("b")
	assert.ErrorIs(t, err, ErrNotStored)
	assert.Equal(t, 1, h.s.Summary()[health.StatusStarting])
	assert.Equal(t, 2, h.s.Len())
	h.advance(time.Hour)
	assert.Zero(t, tg.hits.Load(), "a removed instance is never probed")
}

func TestInvalidInputNamesTheField(t *testing.T) {
	h := newHarness(t)
	_, _, err := h.s.Put(context.Background(), "vm-1", health.InstanceSpec{State: health.Running,
		Network:     &health.Network{IP: "127.0.0.1"},
		HealthCheck: &health.PolicySpec{TCP: &health.TCPSpec{Port: 1}, Interval: "5s", Timeout: "6s"}})
	var fe *health.FieldError
	require.True(t, errors.As(err, &fe))
	assert.Equal(t, "health_check.timeout", fe.Field)
	_, err = h.s.Get(context.Background(), "vm-1")
	assert.ErrorIs(t, err, ErrNotFound, "nothing invalid reaches an actor")
	_, _, err = h.s.Put(context.Background(), "bad/id", health.InstanceSpec{State: health.Running})
	require.True(t, errors.As(err, &fe))
	assert.Equal(t, "id", fe.Field)
	_, err = h.s.SetState(context.Background(), "missing", health.Running, nil)
	assert.ErrorIs(t, err, ErrNotFound)
}

func TestResumeFromStoreSpreadsProbes(t *testing.T) {
	store := NewMemoryStore()
	h := newHarness(t, WithStore(store))
	tg := newTarget(t)
	for _, id := range []string{"a", "b", "c", "d"} {
		h.put(id, tg.policy(""))
	}
	h.advance(0)
	for _, id := range []string{"a", "b", "c", "d"} {
		require.Equal(t, health.StatusHealthy, h.results(id, 1).Health.Status)
	}
	require.NoError(t, h.s.Close(context.Background()))

	h2 := newHarness(t, WithStore(store))
	nexts := map[time.Time]bool{}
	for _, id := range []string{"a", "b", "c", "d"} {
		info := h2.get(id)
		assert.Equal(t, health.StatusHealthy, info.Health.Status, "status resumes, not reset to starting")
		assert.Equal(t, 1, info.Health.ConsecutiveSuccesses)
		require.NotNil(t, info.Health.NextCheckAt)
		assert.False(t, info.Health.NextCheckAt.Before(t0))
		assert.True(t, info.Health.NextCheckAt.Before(t0.Add(10*time.Second)), "within one interval")
		nexts[*info.Health.NextCheckAt] = true
	}
	assert.Greater(t, len(nexts), 1, "resumed probes are spread, not fired together")
}

func TestCloseIsIdempotentAndRejectsCalls(t *testing.T) {
	h := newHarness(t)
	sub := h.s.Subscribe(4)
	require.NoError(t, h.s.Close(context.Background()))
	require.NoError(t, h.s.Close(context.Background()))
	_, _, err := h.s.Put(context.Background(), "x", health.InstanceSpec{State: health.Running})
	assert.ErrorIs(t, err, ErrClosed)
	_, ok := <-sub.C
	assert.False(t, ok)
	assert.ErrorIs(t, sub.Err(), ErrClosed)
	assert.False(t, h.s.Ready())
}

// slowClosingProber takes d to release what it pools, one at a time across
// all of them: stopping many actors takes their sum.
type slowClosingProber struct {
	mu     *sync.Mutex
	closed *int
	d      time.Duration
}

func (slowClosingProber) Probe(context.Context) health.Result {
	return health.Result{Outcome: health.Success}
}
func (p slowClosingProber) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	time.Sleep(p.d)
	*p.closed++
	return nil
}

// flushCounting is a store that notes how many actors had stopped when it
// was flushed.
type flushCounting struct {
	*MemoryStore
	mu        *sync.Mutex
	closed    *int
	atFlush   int
	flushedAt time.Time
}

func (f *flushCounting) Flush(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.atFlush, f.flushedAt = *f.closed, time.Now()
	return f.MemoryStore.Flush(ctx)
}

// TestCloseFlushesAfterTheLastActorHasStopped: actors that take longer to
// stop together than protoactor's own stop wait (10 s) are all stopped —
// and have queued what they save — before Close flushes the store; the wait
// is the caller's budget.
func TestCloseFlushesAfterTheLastActorHasStopped(t *testing.T) {
	const n = 300
	var mu sync.Mutex
	closed := 0
	store := &flushCounting{MemoryStore: NewMemoryStore(), mu: &mu, closed: &closed}
	s, err := New(context.Background(), WithClock(clock.NewFake(t0)), WithStore(store), withWaitFloor(time.Hour),
		WithProberFactory(func(health.Instance) (probes.Prober, error) {
			return slowClosingProber{mu: &mu, closed: &closed, d: 36 * time.Millisecond}, nil // 10.8 s in all
		}))
	require.NoError(t, err)
	spec := health.InstanceSpec{State: health.Running, Network: &health.Network{IP: "127.0.0.1"},
		HealthCheck: &health.PolicySpec{TCP: &health.TCPSpec{Port: 1}}}
	for i := range n {
		_, _, err := s.Put(context.Background(), "vm-"+strconv.Itoa(i), spec)
		require.NoError(t, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	began := time.Now()
	require.NoError(t, s.Close(ctx))
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, n, store.atFlush, "every actor stopped before the flush")
	assert.Greater(t, store.flushedAt.Sub(began), 10*time.Second, "the stop took longer than protoactor waits")
}

// closingProber counts how often the actor releases what it pools.
type closingProber struct {
	closes *atomic.Int32
}

func (closingProber) Probe(context.Context) health.Result {
	return health.Result{Outcome: health.Success}
}
func (p closingProber) Close() error { p.closes.Add(1); return nil }

// TestPooledConnectionsAreReleased checks that an exec prober's pooled
// connection (any prober that is an io.Closer) is released on a lifecycle
// change, when the prober is rebuilt, and on delete.
func TestPooledConnectionsAreReleased(t *testing.T) {
	var closes atomic.Int32
	h := newHarness(t, WithProberFactory(func(health.Instance) (probes.Prober, error) {
		return closingProber{closes: &closes}, nil
	}))
	js := `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":1}}}`
	h.put("vm-1", js)
	ctx := context.Background()
	_, err := h.s.SetState(ctx, "vm-1", health.Stopped, nil)
	require.NoError(t, err)
	assert.Equal(t, int32(1), closes.Load(), "lifecycle change")
	_, err = h.s.SetState(ctx, "vm-1", health.Running, nil)
	require.NoError(t, err)
	assert.Equal(t, int32(2), closes.Load(), "back to running: a new guest agent")
	h.put("vm-1", `{"state":"Running","network":{"ip":"127.0.0.2"},"health_check":{"tcp":{"port":1}}}`)
	assert.Equal(t, int32(3), closes.Load(), "new target: the prober is rebuilt")
	require.NoError(t, h.s.Remove(ctx, "vm-1"))
	require.Eventually(t, func() bool { return closes.Load() == 4 }, 5*time.Second, time.Millisecond, "delete")
}

// TestLateProbeKeepsItsCadence: a probe that waited for a budget slot is
// followed by a pause shortened by the wait, so a host stall does not shift
// (and bunch) the instances it delayed.
func TestLateProbeKeepsItsCadence(t *testing.T) {
	hold := make(chan struct{})
	factory := func(in health.Instance) (probes.Prober, error) {
		return probes.Func(func(ctx context.Context) health.Result {
			if in.ID == "hog" {
				<-hold
			}
			return health.Result{Outcome: health.Success}
		}), nil
	}
	h := newHarness(t, WithProberFactory(factory), WithProbeBudget(1), withWaitFloor(0))
	spec := `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":1},"timeout":"5s","interval":"10s","start_period":"0s"}}`
	h.put("hog", spec)
	h.advance(0)
	require.Eventually(t, func() bool { return h.s.InFlight() == 1 }, 5*time.Second, time.Millisecond)
	h.put("late", spec)
	h.advance(0) // due now; waits for the hog's slot
	const held = 300 * time.Millisecond
	time.Sleep(held)
	close(hold)
	info := h.results("late", 1)
	require.Equal(t, health.StatusHealthy, info.Health.Status)
	pause := info.Health.NextCheckAt.Sub(*info.Health.LastCheckedAt)
	// the first steady pause is 10 s less a per-id phase; the wait comes off
	// what remains, by at most half of it
	phased := 10*time.Second - health.Phase("late", 10*time.Second)
	assert.LessOrEqual(t, pause, phased-min(held, phased/2), "the wait for the slot came off the pause")
	assert.GreaterOrEqual(t, pause, phased/2, "by no more than half the pause")

	// the hog itself was on time: its pause is not shortened
	hog := h.results("hog", 1)
	assert.InDelta(t, 10*time.Second-health.Phase("hog", 10*time.Second), hog.Health.NextCheckAt.Sub(*hog.Health.LastCheckedAt),
		float64(held/3), "only its hand-off to a worker (this test counts every wait)")
}

// starter is a probes.Starter made of a function.
type starter func() (health.Result, probes.Rest)

func (s starter) Start() (health.Result, probes.Rest) { return s() }

func (s starter) Probe(ctx context.Context) health.Result {
	r, rest := s()
	if rest != nil {
		return rest(ctx)
	}
	return r
}

// TestStartedProbes covers probes that start on the actor's goroutine: one
// that settles at once (a real loopback TCP connect), one that continues on
// a worker within what is left of its timeout, one aborted meanwhile, one
// that panics.
func TestStartedProbes(t *testing.T) {
	port := tcptest.AcceptAndClose(t)

	release := make(chan struct{})
	deadlines := make(chan time.Duration, 1)
	aborted := make(chan error, 1)
	factory := func(in health.Instance) (probes.Prober, error) {
		switch in.ID {
		case "later":
			return starter(func() (health.Result, probes.Rest) {
				began := time.Now()
				return health.Result{}, func(ctx context.Context) health.Result {
					dl, _ := ctx.Deadline()
					deadlines <- dl.Sub(began)
					<-release
					return health.Result{Outcome: health.Success}
				}
			}), nil
		case "aborted":
			return starter(func() (health.Result, probes.Rest) {
				return health.Result{}, func(ctx context.Context) health.Result {
					<-ctx.Done()
					aborted <- ctx.Err()
					return health.Result{Outcome: health.Failure, Reason: health.ReasonCanceled}
				}
			}), nil
		case "panics":
			return starter(func() (health.Result, probes.Rest) { panic("boom") }), nil
		}
		return probes.New(in)
	}
	h := newHarness(t, WithProberFactory(factory))
	spec := func(timeout string) string {
		return `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":` + strconv.Itoa(port) +
			`},"timeout":"` + timeout + `","start_period":"0s"}}`
	}

	h.put("tcp", spec("2s"))
	h.advance(0)
	info := h.results("tcp", 1)
	assert.Equal(t, health.StatusHealthy, info.Health.Status, info.Health.LastError)

	h.put("later", spec("3s"))
	h.advance(0)
	select {
	case d := <-deadlines:
		assert.LessOrEqual(t, d, 3*time.Second+100*time.Millisecond, "the rest has what is left of the timeout")
		assert.Greater(t, d, 2*time.Second)
	case <-time.After(5 * time.Second):
		t.Fatal("the rest did not run")
	}
	assert.Equal(t, 1, h.s.InFlight(), "the started probe holds its slot")
	close(release)
	info = h.results("later", 1)
	assert.Equal(t, health.StatusHealthy, info.Health.Status)

	h.put("aborted", spec("9s"))
	h.advance(0)
	require.Eventually(t, func() bool { return h.s.InFlight() == 1 }, 5*time.Second, time.Millisecond)
	_, err := h.s.SetState(context.Background(), "aborted", health.Stopped, nil)
	require.NoError(t, err)
	select {
	case err := <-aborted:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(5 * time.Second):
		t.Fatal("a lifecycle change did not abort the started probe")
	}
	require.Eventually(t, func() bool { return h.s.InFlight() == 0 }, 5*time.Second, time.Millisecond)

	h.put("panics", spec("2s"))
	h.advance(0)
	info = h.results("panics", 1)
	require.NotEmpty(t, info.Health.History)
	assert.Equal(t, health.ReasonPanic, info.Health.History[0].Reason)
	assert.Equal(t, 0, h.s.InFlight())
}

// The instance actors are shared by one parent a CPU: each actor, under
// whichever parent, finds its entry and answers, and a stop stops them all.
func TestInstanceActorsAreSharedByTheParents(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	const n = 64
	s, err := New(context.Background(), WithClock(clock.NewFake(t0)), withWaitFloor(time.Hour),
		WithProberFactory(func(health.Instance) (probes.Prober, error) { return closingProber{closes: new(atomic.Int32)}, nil }))
	require.NoError(t, err)
	require.Len(t, s.parents, 4)
	spec := health.InstanceSpec{State: health.Running, Network: &health.Network{IP: "127.0.0.1"},
		HealthCheck: &health.PolicySpec{TCP: &health.TCPSpec{Port: 1}}}
	for i := range n {
		_, _, err := s.Put(context.Background(), "vm-"+strconv.Itoa(i), spec)
		require.NoError(t, err)
	}
	parents := map[string]int{}
	for i := range n {
		id := "vm-" + strconv.Itoa(i)
		info, err := s.Get(context.Background(), id)
		require.NoError(t, err, id)
		assert.Equal(t, id, info.Instance.ID)
		parent, _, _ := strings.Cut(s.lookup(id).pid.Load().Id, "/")
		parents[parent]++
	}
	assert.Len(t, parents, 4, "every parent has a share: %v", parents)
	require.NoError(t, s.Close(context.Background()))
	for i, stopped := range s.parentsStopped {
		select {
		case <-stopped:
		default:
			t.Errorf("parent %d has not stopped", i)
		}
	}
}
