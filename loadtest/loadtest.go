// Package loadtest is vigil's fleet-scale harness. It registers a synthetic
// fleet whose targets run in a process of their own (each instance on its
// own 127.x.y.z address, all on one port per protocol), drives it for a
// while — some targets hung, some flipping unhealthy and back — and
// reports what the process under test did from inside (probe start − due
// time, from its Observer or its /metrics) and what the targets saw
// (the gap between two arrivals of one instance − the interval), with
// starvation, detection and readiness times, false alarms, CPU and memory
// of each process, and the efficiency against a raw probe loop run in a
// process of its own against the same targets.
//
// The process under test is either the scheduler embedded in this process
// (the default) or a `vigil serve` process with Badger, driven over its API
// with the Go client as a user would (Config.Serve), optionally under a
// flood of API clients (Config.APIClients) and beside a CPU hog in another
// process (Config.Hog).
//
// Concurrency contract: Run is safe to call once at a time per process (it
// reads process-wide CPU and memory figures).
package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
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
	Duration    time.Duration // the measurement window, after registration and settling
	Store       string        // memory or badger (embedded; vigil serve always runs Badger)
	DataDir     string        // badger directory; a temp dir when empty
	Budget      int           // probe budget (0: actors.DefaultProbeBudget)
	// Notifiers, when above 0, delivers the event log to that many
	// notifiers: all but one to live receivers in the target process, which
	// time each delivery, and one to a receiver that is down
	Notifiers int
	// NotifierParallel is the live notifiers' parallel (0: the default, 1)
	NotifierParallel int
	Workers          int           // concurrent registrations
	RawFor           time.Duration // how long each raw probe loop runs (0: a quarter of Duration, ≤ 5 s)
	// Serve drives a `vigil serve` process instead of the embedded
	// scheduler: Badger in a temp dir, the fleet registered and its statuses
	// read over the API with the Go client
	Serve bool
	// APIClients, with Serve, floods the API with that many concurrent
	// clients through the window, in the proportions of APIMix
	APIClients int
	APIMix     string // kind=weight,...: get, list, summary, patch, put (empty: DefaultAPIMix)
	// Hog is the share of the machine (all its CPUs) a CPU hog in another
	// process takes through the window (0: none)
	Hog    float64
	Binary string // the vigil binary the load test's processes run (default: this executable)
	Log    zerolog.Logger
	// Progress gets a live line every second (nil: none)
	Progress io.Writer
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
	case c.Serve && c.Store != "badger":
		return errors.New("--store memory is for the embedded scheduler: vigil serve (--serve) runs Badger")
	case c.Budget < 0:
		return fmt.Errorf("--probe-budget must not be negative (got %d)", c.Budget)
	case c.Condition != "" && c.Type != "http" && c.Type != "mixed":
		return errors.New("--condition applies to HTTP instances: use --type http or mixed")
	case c.APIClients < 0:
		return fmt.Errorf("--api-clients must not be negative (got %d)", c.APIClients)
	case c.APIClients > 0 && !c.Serve:
		return errors.New("--api-clients floods vigil serve's API: add --serve")
	case c.Hog < 0 || c.Hog >= 1:
		return fmt.Errorf("--hog must be a share of the machine at least 0 and below 1 (got %g)", c.Hog)
	}
	if c.Condition != "" {
		if _, err := condition.Compile(c.Condition); err != nil {
			return fmt.Errorf("--condition is not a valid CEL condition: %w", err)
		}
	}
	if c.APIClients > 0 {
		if _, err := parseMix(c.APIMix); err != nil {
			return err
		}
	}
	return nil
}

// Report is what a run measured. Times are in milliseconds.
type Report struct {
	Mode       string  `json:"mode"` // embedded or serve
	Instances  int     `json:"instances"`
	Type       string  `json:"type"`
	IntervalMS float64 `json:"interval_ms"`
	DurationS  float64 `json:"duration_s"`
	Store      string  `json:"store"`
	// the inside view: probes as the process under test counted them, and
	// its scheduling lag (probe start − due time; embedded from its
	// Observer, exact to 6 %; vigil serve from its /metrics histogram,
	// whose buckets double)
	Probes          uint64  `json:"probes"`
	ProbesPerSecond float64 `json:"probes_per_second"`
	LagP50MS        float64 `json:"lag_p50_ms"`
	LagP99MS        float64 `json:"lag_p99_ms"`
	LagMaxMS        float64 `json:"lag_max_ms"`
	HealthyLagP99MS float64 `json:"healthy_lag_p99_ms"` // embedded only
	// healthy-target instances with no probe started in 3 intervals
	// (embedded only; -1 with vigil serve, which the target's view covers)
	Starved        int     `json:"starved"`
	DetectionP50MS float64 `json:"detection_p50_ms"`
	DetectionP99MS float64 `json:"detection_p99_ms"`
	Detections     uint64  `json:"detections"`
	ReadinessP99MS float64 `json:"readiness_p99_ms"` // embedded only
	RegistrationS  float64 `json:"registration_s"`
	Skipped        uint64  `json:"skipped"`
	Failures       uint64  `json:"failures"`
	// the targets' view of the window (the target process's figures)
	Target TargetReport `json:"target"`
	// statuses at the end of the window: healthy-target instances shown
	// unhealthy then or turned unhealthy during it (false alarms), those
	// with a failed probe in the window, and the hung ones shown unhealthy
	FalseAlarms   int `json:"false_alarms"`
	HealthyFailed int `json:"healthy_with_failures"`
	Hung          int `json:"hung"`
	HungDetected  int `json:"hung_detected"`
	// the process under test alone: this one embedded, vigil serve's with
	// --serve (its CPU from /proc over the window; RSS sampled every 250 ms)
	CPUPercent float64 `json:"cpu_percent"`
	// with --serve: this process's own CPU (registration, statuses, the API
	// clients), in % of one core over the window
	DriverCPUPercent float64 `json:"driver_cpu_percent,omitempty"`
	RSSBytes         int64   `json:"rss_bytes"` // the median over the window
	RSSPeakBytes     int64   `json:"rss_peak_bytes"`
	RSSPerInstance   int64   `json:"rss_per_instance_bytes"`
	// the raw loop, in its own process against the target process, before
	// the process under test has instances and after it stopped
	RawCeilingPerSec     float64 `json:"raw_ceiling_per_second"`
	RawCPUPerProbeUS     float64 `json:"raw_cpu_per_probe_us"` // the mean of the loops before and after
	RawCPUBeforeUS       float64 `json:"raw_cpu_per_probe_before_us"`
	RawCPUAfterUS        float64 `json:"raw_cpu_per_probe_after_us"`
	RawTargetCPUPerProbe float64 `json:"raw_target_cpu_per_probe_us"` // the target process's, during the raw loops
	VigilCPUPerProbeUS   float64 `json:"vigil_cpu_per_probe_us"`
	Efficiency           float64 `json:"efficiency"`
	AllocPerProbe        float64 `json:"alloc_per_probe_bytes"` // embedded only
	GCCycles             uint32  `json:"gc_cycles"`             // embedded only
	// handshakes dropped by full accept queues (TcpExt ListenOverflows) and
	// by listening sockets for any reason (ListenDrops, overflows included)
	// during the raw loops and the window: the whole network namespace's,
	// -1 where unreadable. Each stalls a probe for a SYN retransmit, so
	// anything but 0 means the targets, not vigil, set the pace
	RawListenOverflows int64 `json:"raw_listen_overflows"`
	ListenOverflows    int64 `json:"listen_overflows"`
	RawListenDrops     int64 `json:"raw_listen_drops"`
	ListenDrops        int64 `json:"listen_drops"`
	// with --hog: the share asked for and what the hog process took, in %
	// of one core
	HogShare      float64 `json:"hog_share,omitempty"`
	HogCPUPercent float64 `json:"hog_cpu_percent,omitempty"`
	// with --notifiers: deliveries to the live receivers during the window
	// and their lag from the transition to its arrival
	NotifierDeliveries uint64  `json:"notifier_deliveries,omitempty"`
	NotifierLagP50MS   float64 `json:"notifier_lag_p50_ms,omitempty"`
	NotifierLagP99MS   float64 `json:"notifier_lag_p99_ms,omitempty"`
	NotifierLagMaxMS   float64 `json:"notifier_lag_max_ms,omitempty"`
	// with --api-clients: the flood
	API *FloodReport `json:"api,omitempty"`
}

// subject is the process under test: the scheduler embedded in this
// process, or a vigil serve process driven over its API.
type subject interface {
	// register puts every instance of the fleet
	register(ctx context.Context) error
	// healthy counts the instances shown healthy
	healthy(ctx context.Context) (int, error)
	notify(ctx context.Context, receivers []string) (stop func(), err error)
	begin(ctx context.Context) error
	// tick runs every second of the window
	tick(now time.Time)
	// flipped tells when the flipping targets turned down or up
	flipped(down bool, at time.Time)
	progress() string
	end(ctx context.Context) (inside, error)
	// statuses are every instance's, by fleet index, read as a user would
	statuses(ctx context.Context) ([]instanceStatus, error)
	pid() int
	cpu() time.Duration
	close(ctx context.Context) error
}

// inside is what the process under test measured of the window.
type inside struct {
	probes, skipped, failures  uint64
	lagP50, lagP99, lagMax     float64
	healthyLagP99              float64
	starved                    int
	detectionP50, detectionP99 float64
	detections                 uint64
	readinessP99               float64
	allocPerProbe              float64
	gcCycles                   uint32
	alarms                     []bool // healthy-target instances that turned unhealthy in the window
}

type instanceStatus struct {
	status      health.Status
	lastFailure time.Time
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
	progress := func(format string, args ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, format+"\n", args...)
		}
	}
	tp, first, err := startProc(cfg, childOf(roleTargets, cfg))
	if err != nil {
		return nil, err
	}
	defer tp.close()
	f := newFleet(cfg)
	f.ports = *first.Ports

	// the same probes in tight loops in a process of their own, before the
	// fleet is registered and again once the process under test has
	// stopped: nothing of vigil's is billed to the raw loop, and the two
	// windows bracket the measurement, so a machine that drifts faster or
	// slower over the run moves both sides of the efficiency alike
	rawFor := cfg.RawFor
	if rawFor <= 0 {
		rawFor = min(5*time.Second, cfg.Duration/4)
	}
	budget := cfg.Budget
	if budget == 0 {
		budget = actors.DefaultProbeBudget
	}
	rawBefore, err := runRaw(ctx, cfg, f, tp, rawFor, budget)
	if err != nil {
		return nil, err
	}

	var sub subject
	if cfg.Serve {
		sub, err = startServe(ctx, cfg, f, budget)
	} else {
		sub, err = startEmbedded(ctx, cfg, f, budget)
	}
	if err != nil {
		return nil, err
	}
	closed := false
	defer func() {
		if !closed {
			_ = sub.close(context.Background())
		}
	}()

	regBegan := time.Now()
	if err := sub.register(ctx); err != nil {
		return nil, err
	}
	regTook := time.Since(regBegan)
	progress("registered %d instances in %.1f s", cfg.Instances, regTook.Seconds())
	if err := settle(ctx, cfg, f, tp, sub, progress); err != nil {
		return nil, err
	}

	// notifiers, after the registration burst: a new notifier starts at the
	// newest event, so what they deliver is the steady state's
	if cfg.Notifiers > 0 {
		stop, err := sub.notify(ctx, first.Receivers)
		if err != nil {
			return nil, err
		}
		defer stop()
	}
	// the hog and the flood run through the whole window: both start a
	// little before it
	var hogProc *proc
	if cfg.Hog > 0 {
		cc := childOf(roleHog, cfg)
		cc.Share = cfg.Hog
		if hogProc, _, err = startProc(cfg, cc); err != nil {
			return nil, err
		}
		defer hogProc.close()
	}
	var fl *flood
	if cfg.APIClients > 0 {
		if fl, err = startFlood(ctx, sub.(*served).api(), f, cfg); err != nil {
			return nil, err
		}
		defer fl.stop()
	}
	if hogProc != nil || fl != nil {
		if err := sleep(ctx, min(cfg.Interval, 5*time.Second)); err != nil {
			return nil, err
		}
	}

	// the window
	if cfg.AtStart != nil {
		cfg.AtStart()
	}
	var hogBegan time.Duration
	if hogProc != nil {
		hogBegan, _ = cpuTicks(hogProc.pid())
	}
	if _, err := tp.call(request{Cmd: "begin"}); err != nil {
		return nil, err
	}
	if err := sub.begin(ctx); err != nil {
		return nil, err
	}
	if fl != nil {
		fl.begin()
	}
	began, cpuBegan, driverBegan := time.Now(), sub.cpu(), cpuTime()
	overflowsBegan, dropsBegan := listenCounters()
	var rssSamples []int64
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	end := began.Add(cfg.Duration)
	flipDownAt, flipUpAt := began.Add(cfg.Duration/3), began.Add(2*cfg.Duration/3)
	flipped, unflipped := cfg.Flip == 0, cfg.Flip == 0
	nextSecond := began.Add(time.Second)
	for now := time.Now(); now.Before(end); now = time.Now() {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
		now = time.Now()
		rssSamples = append(rssSamples, rssOf(sub.pid()))
		if !flipped && now.After(flipDownAt) {
			flipped = true
			if _, err := tp.call(request{Cmd: "down", Down: true}); err != nil {
				return nil, err
			}
			sub.flipped(true, now)
		}
		if !unflipped && now.After(flipUpAt) {
			unflipped = true
			if _, err := tp.call(request{Cmd: "down", Down: false}); err != nil {
				return nil, err
			}
			sub.flipped(false, now)
		}
		if now.Before(nextSecond) {
			continue
		}
		nextSecond = nextSecond.Add(time.Second)
		sub.tick(now)
		if cfg.Progress != nil {
			peek, err := tp.call(request{Cmd: "peek"})
			if err != nil {
				return nil, err
			}
			el := now.Sub(began)
			line := fmt.Sprintf("\r[%3.0fs/%.0fs] %s  target: lag p99 %6.1f ms  starved %d", el.Seconds(), cfg.Duration.Seconds(),
				sub.progress(), peek.Report.LagP99MS, peek.Report.Starved)
			if fl != nil {
				line += "  " + fl.progress(el)
			}
			fmt.Fprint(cfg.Progress, line+"   ")
		}
	}
	wall, cpu, driverCPU := time.Since(began), sub.cpu()-cpuBegan, cpuTime()-driverBegan
	overflows, drops := countersSince(overflowsBegan, dropsBegan)
	if fl != nil {
		fl.end()
	}
	endRep, err := tp.call(request{Cmd: "end"})
	if err != nil {
		return nil, err
	}
	in, err := sub.end(ctx)
	if err != nil {
		return nil, err
	}
	var hogCPU time.Duration
	if hogProc != nil {
		t, _ := cpuTicks(hogProc.pid())
		hogCPU = t - hogBegan
	}
	if cfg.AtEnd != nil {
		cfg.AtEnd()
	}
	if cfg.Progress != nil {
		fmt.Fprintln(cfg.Progress)
	}
	if fl != nil {
		fl.stop()
	}
	if hogProc != nil {
		hogProc.close()
	}
	statuses, err := sub.statuses(ctx)
	if err != nil {
		return nil, err
	}
	closed = true
	if err := sub.close(ctx); err != nil {
		return nil, err
	}
	rawAfter, err := runRaw(ctx, cfg, f, tp, rawFor, budget)
	if err != nil {
		return nil, err
	}

	mode := "embedded"
	if cfg.Serve {
		mode = "serve"
	}
	rep := &Report{Mode: mode, Instances: cfg.Instances, Type: cfg.Type, IntervalMS: ms(cfg.Interval), DurationS: wall.Seconds(),
		Store: cfg.Store, Probes: in.probes, LagP50MS: in.lagP50, LagP99MS: in.lagP99, LagMaxMS: in.lagMax,
		HealthyLagP99MS: in.healthyLagP99, Starved: in.starved, DetectionP50MS: in.detectionP50, DetectionP99MS: in.detectionP99,
		Detections: in.detections, ReadinessP99MS: in.readinessP99, RegistrationS: regTook.Seconds(),
		Skipped: in.skipped, Failures: in.failures, Target: *endRep.Report,
		CPUPercent: 100 * cpu.Seconds() / wall.Seconds(), AllocPerProbe: in.allocPerProbe, GCCycles: in.gcCycles,
		RawListenOverflows: sum(rawBefore.Overflows, rawAfter.Overflows), RawListenDrops: sum(rawBefore.Drops, rawAfter.Drops),
		ListenOverflows: overflows, ListenDrops: drops}
	rep.ProbesPerSecond = float64(rep.Probes) / wall.Seconds()
	if cfg.Serve {
		rep.DriverCPUPercent = 100 * driverCPU.Seconds() / wall.Seconds()
	}
	if rep.Probes > 0 {
		rep.VigilCPUPerProbeUS = float64(cpu.Microseconds()) / float64(rep.Probes)
	}
	rep.RSSBytes, rep.RSSPeakBytes = medianPeak(rssSamples)
	rep.RSSPerInstance = rep.RSSBytes / int64(cfg.Instances)
	rep.RawCPUBeforeUS, rep.RawCPUAfterUS = rawBefore.CPUPerProbeUS, rawAfter.CPUPerProbeUS
	rep.RawCeilingPerSec = (rawBefore.PerSecond + rawAfter.PerSecond) / 2
	rep.RawCPUPerProbeUS = (rawBefore.CPUPerProbeUS + rawAfter.CPUPerProbeUS) / 2
	rep.RawTargetCPUPerProbe = (rawBefore.TargetCPUPerProbeUS + rawAfter.TargetCPUPerProbeUS) / 2
	if rep.VigilCPUPerProbeUS > 0 {
		rep.Efficiency = rep.RawCPUPerProbeUS / rep.VigilCPUPerProbeUS
	}
	for i, st := range statuses {
		switch {
		case f.hung[i]:
			rep.Hung++
			if st.status == health.StatusUnhealthy {
				rep.HungDetected++
			}
		case f.healthy(i):
			if st.status == health.StatusUnhealthy || (i < len(in.alarms) && in.alarms[i]) {
				rep.FalseAlarms++
			}
			if !st.lastFailure.Before(began) {
				rep.HealthyFailed++
			}
		}
	}
	if cfg.Notifiers > 0 {
		t := rep.Target
		rep.NotifierDeliveries = t.NotifierArrivals
		rep.NotifierLagP50MS, rep.NotifierLagP99MS, rep.NotifierLagMaxMS = t.NotifierP50MS, t.NotifierP99MS, t.NotifierMaxMS
	}
	if hogProc != nil {
		rep.HogShare, rep.HogCPUPercent = cfg.Hog, 100*hogCPU.Seconds()/wall.Seconds()
	}
	if fl != nil {
		rep.API = fl.report(wall)
	}
	return rep, nil
}

// settle waits until the process under test shows every instance with a
// healthy target healthy, and then one interval more: an instance's first
// steady pause is shortened by its phase (up to a whole interval), and the
// gap it ends belongs to the registration, not to the steady state the
// window measures. It gives up waiting after ten intervals and 30 s.
func settle(ctx context.Context, cfg Config, f *fleet, tp *proc, sub subject, progress func(string, ...any)) error {
	want := f.count(func(i int) bool { return !f.hung[i] })
	giveUp := time.Now().Add(10*cfg.Interval + 30*time.Second)
	for {
		n, err := sub.healthy(ctx)
		if err != nil {
			return err
		}
		if n >= want {
			break
		}
		if time.Now().After(giveUp) {
			probed, err := tp.call(request{Cmd: "probed"})
			if err != nil {
				return err
			}
			progress("settling: %d of %d instances healthy (%d of %d probed) after %s; measuring anyway",
				n, want, probed.Probed, cfg.Instances, 10*cfg.Interval+30*time.Second)
			break
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	return sleep(ctx, cfg.Interval+100*time.Millisecond)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// sum adds two counts, unknown (-1) if either is.
func sum(a, b int64) int64 {
	if a < 0 || b < 0 {
		return -1
	}
	return a + b
}

// medianPeak is the median and the largest of samples (0, 0 when none).
func medianPeak(samples []int64) (int64, int64) {
	if len(samples) == 0 {
		return 0, 0
	}
	s := append([]int64(nil), samples...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2], s[len(s)-1]
}

// summaryLine is a status count for the progress line.
func summaryLine(m map[health.Status]int) string {
	var b strings.Builder
	for _, st := range health.Statuses {
		if m[st] > 0 {
			fmt.Fprintf(&b, " %s %d", st, m[st])
		}
	}
	return strings.TrimSpace(b.String())
}
