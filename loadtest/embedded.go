package loadtest

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigilhq/vigil/act"
	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/persistence"
)

// embedded is the scheduler in this process, as other Go services embed it.
type embedded struct {
	cfg     Config
	f       *fleet
	budget  int
	s       *actors.Scheduler
	store   actors.Store
	col     *collector
	closers []func()
	closed  bool

	began   time.Time
	ms      runtime.MemStats
	starved int
}

func startEmbedded(ctx context.Context, cfg Config, f *fleet, budget int) (_ *embedded, err error) {
	e := &embedded{cfg: cfg, f: f, budget: budget, store: actors.NewMemoryStore()}
	defer func() {
		if err != nil {
			e.release()
		}
	}()
	if cfg.Store == "badger" {
		dir := cfg.DataDir
		if dir == "" {
			if dir, err = os.MkdirTemp("", "vigil-loadtest-data"); err != nil {
				return nil, err
			}
			e.closers = append(e.closers, func() { _ = os.RemoveAll(dir) })
		}
		bs, err := persistence.Open(dir, persistence.Options{Logger: cfg.Log})
		if err != nil {
			return nil, err
		}
		e.closers = append(e.closers, func() { _ = bs.Close() })
		e.store = bs
	}
	runtime.GC()
	n := cfg.Instances
	e.col = &collector{f: f, lastStart: make([]atomic.Int64, n), registered: make([]atomic.Int64, n),
		ready: make([]atomic.Bool, n), starvedOnce: make([]atomic.Bool, n), alarms: make([]atomic.Bool, n)}
	if e.s, err = actors.New(ctx, actors.WithStore(e.store), actors.WithObserver(e.col), actors.WithProbeBudget(budget),
		actors.WithLogger(cfg.Log)); err != nil {
		return nil, err
	}
	return e, nil
}

// release closes the store and removes its directory.
func (e *embedded) release() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
	e.closers = nil
}

func (e *embedded) register(ctx context.Context) error { return register(ctx, e.s, e.f, e.col, e.cfg) }

func (e *embedded) healthy(context.Context) (int, error) {
	return e.s.Summary()[health.StatusHealthy], nil
}

func (e *embedded) notify(_ context.Context, receivers []string) (func(), error) {
	var kv act.KV = act.NewMemoryKV()
	if bs, ok := e.store.(*persistence.Store); ok {
		kv = bs
	}
	return startNotifiers(e.s, kv, receivers, e.cfg.NotifierParallel, e.cfg.Log)
}

func (e *embedded) begin(context.Context) error {
	e.col.counting.Store(true)
	runtime.ReadMemStats(&e.ms)
	e.began = time.Now()
	return nil
}

func (e *embedded) tick(now time.Time) {
	if now.After(e.began.Add(3 * e.cfg.Interval)) {
		e.starved += e.col.countStarved(now, 3*e.cfg.Interval)
	}
}

func (e *embedded) flipped(down bool, at time.Time) {
	e.col.flipDown.Store(down)
	e.col.flippedAt.Store(at.UnixNano())
}

func (e *embedded) progress() string {
	el := time.Since(e.began)
	return fmt.Sprintf("probes/s %7.0f  lag p99 %6.1f ms  starved %d  in flight %4d  %s",
		float64(e.col.probes.Load())/el.Seconds(), e.col.lag.quantile(0.99), e.starved, e.s.InFlight(), summaryLine(e.s.Summary()))
}

func (e *embedded) end(context.Context) (inside, error) {
	c := e.col
	c.counting.Store(false)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	in := inside{probes: c.probes.Load(), skipped: c.skipped.Load(), failures: c.failures.Load(),
		lagP50: c.lag.quantile(0.5), lagP99: c.lag.quantile(0.99), lagMax: c.lag.maxMS(), healthyLagP99: c.healthyLag.quantile(0.99),
		starved: e.starved, detectionP50: c.detection.quantile(0.5), detectionP99: c.detection.quantile(0.99),
		detections: c.detections.Load(), readinessP99: c.readiness.quantile(0.99), gcCycles: ms.NumGC - e.ms.NumGC,
		alarms: make([]bool, e.f.n)}
	if in.probes > 0 {
		in.allocPerProbe = float64(ms.TotalAlloc-e.ms.TotalAlloc) / float64(in.probes)
	}
	for i := range in.alarms {
		in.alarms[i] = c.alarms[i].Load()
	}
	return in, nil
}

func (e *embedded) statuses(context.Context) ([]instanceStatus, error) {
	out := make([]instanceStatus, e.f.n)
	for i := range out {
		info, ok := e.s.Peek(e.f.id(i))
		if !ok {
			continue
		}
		out[i].status = info.Health.Status
		if t := info.Health.LastFailureAt; t != nil {
			out[i].lastFailure = *t
		}
	}
	return out, nil
}

func (e *embedded) pid() int           { return os.Getpid() }
func (e *embedded) cpu() time.Duration { return cpuTime() }

func (e *embedded) close(ctx context.Context) error {
	if e.closed {
		return nil
	}
	e.closed = true
	err := e.s.Close(ctx)
	e.release()
	return err
}

// collector is the embedded scheduler's Observer during a run.
type collector struct {
	actors.NopObserver
	f           *fleet
	lag         hist
	healthyLag  hist
	detection   hist
	readiness   hist
	probes      atomic.Uint64
	skipped     atomic.Uint64
	failures    atomic.Uint64
	detections  atomic.Uint64
	lastStart   []atomic.Int64 // unix nanos of each instance's latest probe start
	registered  []atomic.Int64 // unix nanos when registration began
	ready       []atomic.Bool  // healthy published once
	alarms      []atomic.Bool  // a healthy target's instance turned unhealthy in the window
	flippedAt   atomic.Int64   // unix nanos of the latest flip
	flipDown    atomic.Bool
	counting    atomic.Bool // inside the measurement window
	starvedOnce []atomic.Bool
}

func (c *collector) ProbeStarted(id string, _ health.Type, due, started time.Time) {
	i := c.f.index(id)
	if i < 0 || i >= len(c.lastStart) {
		return
	}
	c.lastStart[i].Store(started.UnixNano())
	if due.IsZero() || !c.counting.Load() {
		return
	}
	lag := started.Sub(due)
	c.lag.add(lag)
	if c.f.healthy(i) {
		c.healthyLag.add(lag)
	}
}

func (c *collector) ProbeFinished(_ string, _ health.Type, r health.Result) {
	if !c.counting.Load() {
		return
	}
	c.probes.Add(1)
	switch r.Outcome {
	case health.Skipped:
		c.skipped.Add(1)
	case health.Failure:
		c.failures.Add(1)
	}
}

func (c *collector) Transitioned(ev actors.Event) {
	i := c.f.index(ev.InstanceID)
	if i < 0 || i >= len(c.registered) {
		return
	}
	now := time.Now()
	if ev.To == health.StatusHealthy && !c.ready[i].Swap(true) {
		if at := c.registered[i].Load(); at != 0 {
			c.readiness.add(now.Sub(time.Unix(0, at)))
		}
	}
	if ev.To == health.StatusUnhealthy && c.f.healthy(i) && c.counting.Load() {
		c.alarms[i].Store(true)
	}
	if !c.f.flips[i] {
		return
	}
	at := c.flippedAt.Load()
	if at == 0 {
		return
	}
	if (c.flipDown.Load() && ev.To == health.StatusUnhealthy) || (!c.flipDown.Load() && ev.To == health.StatusHealthy) {
		c.detection.add(now.Sub(time.Unix(0, at)))
		c.detections.Add(1)
	}
}

// register puts every instance with cfg.Workers in parallel.
func register(ctx context.Context, s *actors.Scheduler, f *fleet, col *collector, cfg Config) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, cfg.Workers)
	for range cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= cfg.Instances || ctx.Err() != nil {
					return
				}
				col.registered[i].Store(time.Now().UnixNano())
				if _, _, err := s.Put(ctx, f.id(i), f.spec(i, cfg)); err != nil {
					errc <- fmt.Errorf("register instance %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// countStarved counts healthy-target instances, newly found, with no probe
// started within window (SPEC: starved = no probe in 3 intervals).
func (c *collector) countStarved(now time.Time, window time.Duration) int {
	limit := now.Add(-window).UnixNano()
	n := 0
	for i := range c.lastStart {
		if !c.f.healthy(i) {
			continue
		}
		if c.lastStart[i].Load() < limit && !c.starvedOnce[i].Swap(true) {
			n++
		}
	}
	return n
}
