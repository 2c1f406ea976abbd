// Package loadtest is vigil's fleet-scale harness: it embeds the actor system
// in this process, as other Go services do, registers a synthetic fleet whose
// targets listen on loopback (each instance on its own 127.x.y.z address),
// drives it for a while — some targets hung, some flipping unhealthy and
// back — and reports scheduling lag, starvation, detection and readiness
// times, CPU and memory, and the efficiency against a raw probe loop.
//
// Concurrency contract: Run is safe to call once at a time per process (it
// reads process-wide CPU and memory figures).
package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/rs/zerolog"

	"github.com/vigilhq/vigil/act"
	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/persistence"
	"github.com/vigilhq/vigil/probes"
	"github.com/vigilhq/vigil/probes/condition"
)

// Config is one scenario.
type Config struct {
	Instances   int
	Type        string // tcp, http, grpc, exec or mixed
	Interval    time.Duration
	Timeout     time.Duration
	StartPeriod time.Duration // < 0: the policy default
	Hung        float64       // fraction of targets that accept and never answer
	Flip        float64       // fraction that turn unhealthy a third of the way in, and back at two thirds
	Condition   string        // http.condition of the HTTP instances (a CEL expression; empty: none)
	Duration    time.Duration // after registration
	Store       string        // memory or badger
	DataDir     string        // badger directory; a temp dir when empty
	Budget      int           // probe budget (0: actors.DefaultProbeBudget)
	// Notifiers, when above 0, delivers the event log to that many
	// notifiers: all but one to live receivers in this process, which time
	// each delivery, and one to a receiver that is down
	Notifiers   int
	Workers     int           // concurrent registrations
	RawFor      time.Duration // how long the raw probe loop runs (0: a quarter of Duration, ≤ 5 s)
	AgentBinary string        // the vigil binary whose `agent` command serves exec targets
	Log         zerolog.Logger
	Progress    io.Writer // a live line every second (nil: none)
	// AtStart, when set, runs as the measurement begins, after
	// registration and settling (to profile the steady state only).
	AtStart func()
	// AtEnd, when set, runs after the measurement while the fleet still
	// runs (for a heap profile of the steady state).
	AtEnd func()
}

// Validate names the flag of the first invalid setting.
func (c *Config) Validate() error {
	switch {
	case c.Instances < 1 || c.Instances > MaxInstances:
		return fmt.Errorf("--instances must be between 1 and %d (got %d)", MaxInstances, c.Instances)
	case c.Type != "tcp" && c.Type != "http" && c.Type != "grpc" && c.Type != "exec" && c.Type != "mixed":
		return fmt.Errorf("--type must be tcp, http, grpc, exec or mixed (got %q)", c.Type)
	case c.Interval < health.MinInterval:
		return fmt.Errorf("--interval must be at least %s (got %s)", health.MinInterval, c.Interval)
	case c.Timeout <= 0 || c.Timeout > c.Interval:
		return fmt.Errorf("--timeout must be above 0 and at most --interval (got %s)", c.Timeout)
	case c.Hung < 0 || c.Hung > 1:
		return fmt.Errorf("--hung must be a fraction between 0 and 1 (got %g)", c.Hung)
	case c.Hung > 0 && c.Type == "tcp":
		return errors.New("--hung needs a protocol that can hang after accepting: use --type http, grpc, exec or mixed")
	case c.Flip < 0 || c.Flip > 1 || c.Hung+c.Flip > 1:
		return fmt.Errorf("--flip must be a fraction between 0 and 1, with --hung at most 1 together (got %g)", c.Flip)
	case c.Duration <= 0:
		return fmt.Errorf("--duration must be positive (got %s)", c.Duration)
	case c.Store != "memory" && c.Store != "badger":
		return fmt.Errorf("--store must be memory or badger (got %q)", c.Store)
	case c.Budget < 0:
		return fmt.Errorf("--probe-budget must not be negative (got %d)", c.Budget)
	case c.Condition != "" && c.Type != "http" && c.Type != "mixed":
		return errors.New("--condition applies to HTTP instances: use --type http or mixed")
	}
	if c.Condition != "" {
		if _, err := condition.Compile(c.Condition); err != nil {
			return fmt.Errorf("--condition is not a valid CEL condition: %w", err)
		}
	}
	return nil
}

// Report is what a run measured. Times are in milliseconds.
type Report struct {
	Instances          int     `json:"instances"`
	Type               string  `json:"type"`
	IntervalMS         float64 `json:"interval_ms"`
	DurationS          float64 `json:"duration_s"`
	Store              string  `json:"store"`
	Probes             uint64  `json:"probes"`
	ProbesPerSecond    float64 `json:"probes_per_second"`
	LagP50MS           float64 `json:"lag_p50_ms"`
	LagP99MS           float64 `json:"lag_p99_ms"`
	LagMaxMS           float64 `json:"lag_max_ms"`
	HealthyLagP99MS    float64 `json:"healthy_lag_p99_ms"`
	Starved            int     `json:"starved"`
	DetectionP50MS     float64 `json:"detection_p50_ms"`
	DetectionP99MS     float64 `json:"detection_p99_ms"`
	Detections         uint64  `json:"detections"`
	ReadinessP99MS     float64 `json:"readiness_p99_ms"`
	RegistrationS      float64 `json:"registration_s"`
	Skipped            uint64  `json:"skipped"`
	Failures           uint64  `json:"failures"`
	CPUPercent         float64 `json:"cpu_percent"`
	RSSBytes           int64   `json:"rss_bytes"`
	RSSPerInstance     int64   `json:"rss_per_instance_bytes"`
	RawCeilingPerSec   float64 `json:"raw_ceiling_per_second"`
	RawCPUPerProbeUS   float64 `json:"raw_cpu_per_probe_us"` // the mean of the loops before and after
	RawCPUBeforeUS     float64 `json:"raw_cpu_per_probe_before_us"`
	RawCPUAfterUS      float64 `json:"raw_cpu_per_probe_after_us"`
	VigilCPUPerProbeUS float64 `json:"vigil_cpu_per_probe_us"`
	Efficiency         float64 `json:"efficiency"`
	AllocPerProbe      float64 `json:"alloc_per_probe_bytes"`
	GCCycles           uint32  `json:"gc_cycles"`
	// handshakes dropped by full accept queues during the raw loop and the
	// measurement (TcpExtListenOverflows, the whole network namespace's; -1
	// where unreadable): each one stalls a probe for a SYN retransmit, so
	// anything but 0 means the targets, not vigil, set the pace
	RawListenOverflows int64 `json:"raw_listen_overflows"`
	ListenOverflows    int64 `json:"listen_overflows"`
	// with --notifiers: deliveries to the live receivers during the window
	// and their lag from the transition to its arrival
	NotifierDeliveries uint64  `json:"notifier_deliveries,omitempty"`
	NotifierLagP50MS   float64 `json:"notifier_lag_p50_ms,omitempty"`
	NotifierLagP99MS   float64 `json:"notifier_lag_p99_ms,omitempty"`
	NotifierLagMaxMS   float64 `json:"notifier_lag_max_ms,omitempty"`
}

// collector is the scheduler's Observer during a run.
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
	flippedAt   atomic.Int64   // unix nanos of the latest flip
	flipDown    atomic.Bool
	counting    atomic.Bool // inside the measurement window
	firstProbed atomic.Int64
	starvedOnce []atomic.Bool
}

// index is the fleet position of an instance id (-1 for another id). The
// scheduler hands back the id string it was given, which points into the
// fleet's block of ids: its place there is its position, found without
// reading it (for an instance probed once an interval that read is a cache
// miss, billed to vigil's CPU). Any other string with a fleet id is parsed.
func (f *fleet) index(id string) int {
	if uintptr(len(id)) == idWidth && len(f.ids) > 0 {
		off := uintptr(unsafe.Pointer(unsafe.StringData(id))) - uintptr(unsafe.Pointer(unsafe.StringData(f.ids)))
		if off < uintptr(len(f.ids)) && off%idWidth == 0 {
			return int(off / idWidth)
		}
	}
	n, ok := strings.CutPrefix(id, idPrefix)
	if !ok {
		return -1
	}
	i, err := strconv.Atoi(n)
	if err != nil || i < 0 || i >= f.n {
		return -1
	}
	return i
}

// idWidth is the length of every fleet id: the prefix and 7 digits (more
// than MaxInstances needs).
const idWidth = uintptr(len(idPrefix) + 7)

// makeIDs lays the ids of a fleet of n end to end in one string.
func makeIDs(n int) string {
	var b strings.Builder
	b.Grow(n * int(idWidth))
	for i := range n {
		fmt.Fprintf(&b, "%s%07d", idPrefix, i)
	}
	return b.String()
}

// id is instance i's id.
func (f *fleet) id(i int) string { w := int(idWidth); return f.ids[i*w : (i+1)*w] }

const idPrefix = "lt-"

func (c *collector) ProbeStarted(id string, _ health.Type, due, started time.Time) {
	i := c.f.index(id)
	if i < 0 || i >= len(c.lastStart) {
		return
	}
	if c.lastStart[i].Swap(started.UnixNano()) == 0 {
		c.firstProbed.Add(1)
	}
	if due.IsZero() || !c.counting.Load() {
		return
	}
	lag := started.Sub(due)
	c.lag.add(lag)
	if !c.f.hung[i] && !c.f.flips[i] {
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

// Run runs one scenario and reports what it measured.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Type == "" {
		cfg.Type = "tcp"
	}
	if cfg.Store == "" {
		cfg.Store = "badger"
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 64
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	f, err := startFleet(cfg)
	if err != nil {
		return nil, err
	}
	defer f.close()

	var store actors.Store = actors.NewMemoryStore()
	if cfg.Store == "badger" {
		dir := cfg.DataDir
		if dir == "" {
			if dir, err = os.MkdirTemp("", "vigil-loadtest-data"); err != nil {
				return nil, err
			}
			defer os.RemoveAll(dir)
		}
		bs, err := persistence.Open(dir, persistence.Options{Logger: cfg.Log})
		if err != nil {
			return nil, err
		}
		defer bs.Close()
		store = bs
	}
	// the same probes in tight loops, without the scheduler, before the
	// fleet is registered and again once the scheduler is closed: nothing of
	// vigil's is billed to the raw loop, and the two windows bracket the
	// measurement, so a machine that drifts faster or slower over the run
	// moves both sides of the efficiency alike
	rawFor := cfg.RawFor
	if rawFor <= 0 {
		rawFor = min(5*time.Second, cfg.Duration/4)
	}
	budget := cfg.Budget
	if budget == 0 {
		budget = actors.DefaultProbeBudget
	}
	overflowsBefore := listenOverflows()
	rawRate, rawCPU, err := rawCeiling(ctx, f, cfg, rawFor, budget)
	if err != nil {
		return nil, err
	}
	rawOverflows := overflowsSince(overflowsBefore)
	runtime.GC()

	n := cfg.Instances
	col := &collector{f: f, lastStart: make([]atomic.Int64, n), registered: make([]atomic.Int64, n),
		ready: make([]atomic.Bool, n), starvedOnce: make([]atomic.Bool, n)}
	s, err := actors.New(ctx, actors.WithStore(store), actors.WithObserver(col), actors.WithProbeBudget(budget),
		actors.WithLogger(cfg.Log))
	if err != nil {
		return nil, err
	}
	closed := false
	defer func() {
		if !closed {
			_ = s.Close(context.Background())
		}
	}()

	// register the fleet
	regBegan := time.Now()
	if err := register(ctx, s, f, col, cfg); err != nil {
		return nil, err
	}
	regTook := time.Since(regBegan)

	// settle: the registration burst's first probes queue behind each other;
	// the measurement starts once every instance has been probed once (at
	// most two intervals) and the budget queue has drained. Readiness covers
	// the burst.
	settleBy := time.Now().Add(2 * cfg.Interval)
	for (col.firstProbed.Load() < int64(n) || s.InFlight() > budget/8) && time.Now().Before(settleBy) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}

	// notifiers, after the registration burst: a new notifier starts at the
	// newest event, so what they deliver is the steady state's
	var notified *deliveries
	if cfg.Notifiers > 0 {
		var kv act.KV = act.NewMemoryKV()
		if bs, ok := store.(*persistence.Store); ok {
			kv = bs
		}
		var stop func()
		if notified, stop, err = startNotifiers(s, kv, cfg); err != nil {
			return nil, err
		}
		defer stop()
	}

	// drive it
	if cfg.AtStart != nil {
		cfg.AtStart()
	}
	col.counting.Store(true)
	if notified != nil {
		notified.counting.Store(true)
	}
	var msBegan runtime.MemStats
	runtime.ReadMemStats(&msBegan)
	began, cpuBegan, overflowsBegan := time.Now(), cpuTime(), listenOverflows()
	warm := began.Add(3 * cfg.Interval)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	end := began.Add(cfg.Duration)
	flipDownAt, flipUpAt := began.Add(cfg.Duration/3), began.Add(2*cfg.Duration/3)
	flipped, unflipped := cfg.Flip == 0, cfg.Flip == 0
	starved := 0
	for now := time.Now(); now.Before(end); now = time.Now() {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
		now = time.Now()
		if !flipped && now.After(flipDownAt) {
			flipped = true
			col.flipDown.Store(true)
			col.flippedAt.Store(time.Now().UnixNano())
			if err := f.setDown(true); err != nil {
				return nil, err
			}
		}
		if !unflipped && now.After(flipUpAt) {
			unflipped = true
			col.flipDown.Store(false)
			col.flippedAt.Store(time.Now().UnixNano())
			if err := f.setDown(false); err != nil {
				return nil, err
			}
		}
		if now.After(warm) {
			starved += col.countStarved(now, 3*cfg.Interval)
		}
		if cfg.Progress != nil {
			el := now.Sub(began)
			fmt.Fprintf(cfg.Progress, "\r[%3.0fs/%.0fs] probes/s %7.0f  lag p99 %6.1f ms  starved %d  in flight %4d  summary %v   ",
				el.Seconds(), cfg.Duration.Seconds(), float64(col.probes.Load())/el.Seconds(), col.lag.quantile(0.99), starved,
				s.InFlight(), s.Summary())
		}
	}
	col.counting.Store(false)
	if notified != nil {
		notified.counting.Store(false)
	}
	wall, cpu, overflows := time.Since(began), cpuTime()-cpuBegan, overflowsSince(overflowsBegan)
	var msEnd runtime.MemStats
	runtime.ReadMemStats(&msEnd)
	mem := rss()
	if cfg.AtEnd != nil {
		cfg.AtEnd()
	}
	if cfg.Progress != nil {
		fmt.Fprintln(cfg.Progress)
	}
	closed = true
	if err := s.Close(ctx); err != nil {
		return nil, err
	}
	overflowsBefore = listenOverflows()
	rawRateAfter, rawCPUAfter, err := rawCeiling(ctx, f, cfg, rawFor, budget)
	if err != nil {
		return nil, err
	}
	rawOverflows += overflowsSince(overflowsBefore)

	rep := &Report{Instances: n, Type: cfg.Type, IntervalMS: ms(cfg.Interval), DurationS: wall.Seconds(), Store: cfg.Store,
		Probes: col.probes.Load(), LagP50MS: col.lag.quantile(0.5), LagP99MS: col.lag.quantile(0.99), LagMaxMS: col.lag.maxMS(),
		HealthyLagP99MS: col.healthyLag.quantile(0.99), Starved: starved,
		DetectionP50MS: col.detection.quantile(0.5), DetectionP99MS: col.detection.quantile(0.99), Detections: col.detections.Load(),
		ReadinessP99MS: col.readiness.quantile(0.99), RegistrationS: regTook.Seconds(),
		Skipped: col.skipped.Load(), Failures: col.failures.Load(),
		CPUPercent: 100 * cpu.Seconds() / wall.Seconds(), RSSBytes: mem, RSSPerInstance: mem / int64(n),
		RawListenOverflows: rawOverflows, ListenOverflows: overflows}
	rep.ProbesPerSecond = float64(rep.Probes) / wall.Seconds()
	rep.GCCycles = msEnd.NumGC - msBegan.NumGC
	if rep.Probes > 0 {
		rep.AllocPerProbe = float64(msEnd.TotalAlloc-msBegan.TotalAlloc) / float64(rep.Probes)
	}
	if rep.Probes > 0 {
		rep.VigilCPUPerProbeUS = float64(cpu.Microseconds()) / float64(rep.Probes)
	}

	rep.RawCPUBeforeUS, rep.RawCPUAfterUS = rawCPU, rawCPUAfter
	rep.RawCeilingPerSec, rep.RawCPUPerProbeUS = (rawRate+rawRateAfter)/2, (rawCPU+rawCPUAfter)/2
	if rep.VigilCPUPerProbeUS > 0 {
		rep.Efficiency = rep.RawCPUPerProbeUS / rep.VigilCPUPerProbeUS
	}
	if notified != nil {
		rep.NotifierDeliveries = notified.n.Load()
		rep.NotifierLagP50MS, rep.NotifierLagP99MS, rep.NotifierLagMaxMS = notified.lag.quantile(0.5), notified.lag.quantile(0.99), notified.lag.maxMS()
	}
	return rep, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

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
		if c.f.hung[i] || c.f.flips[i] {
			continue
		}
		if c.lastStart[i].Load() < limit && !c.starvedOnce[i].Swap(true) {
			n++
		}
	}
	return n
}

// rawCeiling runs the fleet's healthy probes in tight loops, without the
// scheduler, and returns probes per second and CPU microseconds per probe.
// The loops go round the whole fleet, as the scheduler does: a few thousand
// targets would keep the kernel's per-destination state (routes, TCP
// metrics) in the cache, which a fleet of 100 000 addresses never is.
func rawCeiling(ctx context.Context, f *fleet, cfg Config, d time.Duration, workers int) (float64, float64, error) {
	var targets []probes.Prober
	for i := range f.n {
		if f.hung[i] || f.flips[i] {
			continue
		}
		in, err := f.spec(i, cfg).Normalize(f.id(i))
		if err != nil {
			return 0, 0, err
		}
		p, err := probes.New(in)
		if err != nil {
			return 0, 0, err
		}
		targets = append(targets, p)
	}
	if len(targets) == 0 {
		return 0, 0, nil
	}
	workers = min(workers, 4*runtime.GOMAXPROCS(0), len(targets))
	var count atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	began, cpuBegan := time.Now(), cpuTime()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n, j := 1, w; ; n, j = n+1, j+workers {
				select {
				case <-stop:
					return
				default:
				}
				pctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
				targets[j%len(targets)].Probe(pctx)
				cancel()
				count.Add(1)
				if n%16 == 0 {
					// let the in-process targets' accept loop in: the
					// runtime would otherwise run it once per time slice of
					// every busy worker, its queues would overflow, and a
					// dropped handshake stalls a worker for a second
					runtime.Gosched()
				}
			}
		}()
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	wall, cpu := time.Since(began), cpuTime()-cpuBegan
	for _, p := range targets {
		if c, ok := p.(io.Closer); ok {
			_ = c.Close()
		}
	}
	n := count.Load()
	if n == 0 {
		return 0, 0, nil
	}
	return float64(n) / wall.Seconds(), float64(cpu.Microseconds()) / float64(n), nil
}
