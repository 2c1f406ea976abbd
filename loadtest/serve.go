package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigilhq/vigil/client"
	"github.com/vigilhq/vigil/health"
)

// served is a `vigil serve` process with Badger in a temp dir, driven over
// its API with the Go client as a user would: the fleet registered with
// PUTs, statuses read back with list pages, the event stream followed
// through the window, the inside view from /metrics, CPU and RSS from /proc.
type served struct {
	cfg    Config
	f      *fleet
	p      *benchProc
	root   string
	closed bool

	began    time.Time
	m0       metricsSnap
	evCancel context.CancelFunc
	evDone   chan struct{}

	alarms     []atomic.Bool
	detection  hist
	detections atomic.Uint64
	flippedAt  atomic.Int64
	flipDown   atomic.Bool
}

// serveIP is the address vigil serve's API listens on: in 127.0.0.0/8,
// apart from the fleet's 127.16.0.0/12 and the fleet-of-nodes benchmark's.
const serveIP = "127.0.3.1"

func startServe(ctx context.Context, cfg Config, f *fleet, budget int) (_ *served, err error) {
	bin, err := cfg.binary()
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp("", "vigil-loadtest-serve")
	if err != nil {
		return nil, err
	}
	s := &served{cfg: cfg, f: f, root: root, alarms: make([]atomic.Bool, f.n)}
	dir := cfg.DataDir
	if dir == "" {
		dir = root
	}
	s.p = &benchProc{name: "vigil serve", ip: serveIP, dir: dir, quiet: true, clients: cfg.Workers,
		args: []string{"--probe-budget", strconv.Itoa(budget)}}
	if err := s.p.start(ctx, bin); err != nil {
		s.p.kill()
		_ = os.RemoveAll(root)
		return nil, err
	}
	return s, nil
}

// api is the API's address.
func (s *served) api() string { return s.p.api }

func (s *served) register(ctx context.Context) error {
	return registerRange(ctx, s.p.c, s.f, s.cfg, 0, s.f.n, s.cfg.Workers)
}

func (s *served) healthy(ctx context.Context) (int, error) {
	sum, err := s.p.c.Summary(ctx)
	if err != nil {
		return 0, err
	}
	return sum.Healthy, nil
}

func (s *served) notify(ctx context.Context, receivers []string) (func(), error) {
	return putNotifiers(ctx, s.p.c, receivers, s.cfg.NotifierParallel)
}

func (s *served) begin(ctx context.Context) error {
	s.began = time.Now()
	ectx, cancel := context.WithCancel(context.Background())
	s.evCancel, s.evDone = cancel, make(chan struct{})
	go s.follow(ectx)
	m, err := scrape(ctx, s.p.c)
	s.m0 = m
	return err
}

// follow reads the event stream from its newest event: transitions of
// healthy targets' instances to unhealthy in the window are false alarms,
// the flipping ones' are detections.
func (s *served) follow(ctx context.Context) {
	defer close(s.evDone)
	for ev, err := range s.p.c.Events(ctx, client.EventsOptions{}) {
		if err != nil || ev.Transition == nil || ev.Transition.Kind != nil || ev.Transition.InstanceId == nil {
			continue
		}
		t := ev.Transition
		i := s.f.index(*t.InstanceId)
		if i < 0 || t.At.Before(s.began) {
			continue
		}
		to := health.Status(t.To)
		if to == health.StatusUnhealthy && s.f.healthy(i) {
			s.alarms[i].Store(true)
		}
		if !s.f.flips[i] {
			continue
		}
		at := s.flippedAt.Load()
		if at == 0 {
			continue
		}
		if (s.flipDown.Load() && to == health.StatusUnhealthy) || (!s.flipDown.Load() && to == health.StatusHealthy) {
			s.detection.add(time.Since(time.Unix(0, at)))
			s.detections.Add(1)
		}
	}
}

func (s *served) tick(time.Time) {}

func (s *served) flipped(down bool, at time.Time) {
	s.flipDown.Store(down)
	s.flippedAt.Store(at.UnixNano())
}

func (s *served) progress() string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	sum, err := s.p.c.Summary(ctx)
	if err != nil {
		return "summary: " + err.Error()
	}
	return fmt.Sprintf("vigil serve: healthy %d unhealthy %d starting %d", sum.Healthy, sum.Unhealthy, sum.Starting)
}

func (s *served) end(ctx context.Context) (inside, error) {
	m1, err := scrape(ctx, s.p.c)
	if err != nil {
		return inside{}, err
	}
	s.evCancel()
	<-s.evDone
	d := m1.since(s.m0)
	in := inside{probes: uint64(d.probes), skipped: uint64(d.skipped), failures: uint64(d.failures), starved: -1,
		lagP50: d.lagQuantile(0.5), lagP99: d.lagQuantile(0.99), lagMax: d.lagMax(),
		detectionP50: s.detection.quantile(0.5), detectionP99: s.detection.quantile(0.99), detections: s.detections.Load(),
		alarms: make([]bool, s.f.n)}
	for i := range in.alarms {
		in.alarms[i] = s.alarms[i].Load()
	}
	return in, nil
}

func (s *served) statuses(ctx context.Context) ([]instanceStatus, error) {
	out := make([]instanceStatus, s.f.n)
	for in, err := range s.p.c.All(ctx, client.ListOptions{Limit: 1000}) {
		if err != nil {
			return nil, fmt.Errorf("read the statuses back: %w", err)
		}
		i := s.f.index(in.Id)
		if i < 0 {
			continue
		}
		out[i].status = health.Status(in.HealthStatus.Status)
		if t := in.HealthStatus.LastFailureAt; t != nil {
			out[i].lastFailure = *t
		}
	}
	return out, nil
}

func (s *served) pid() int { return s.p.cmd.Process.Pid }

func (s *served) cpu() time.Duration {
	t, _ := cpuTicks(s.pid())
	return t
}

// close stops vigil serve with SIGTERM, as its service manager would, and
// removes its data.
func (s *served) close(context.Context) error {
	if s.closed {
		return nil
	}
	s.closed = true
	err := s.p.term(30 * time.Second)
	_ = os.RemoveAll(s.root)
	return err
}

// metricsSnap is what the load test reads of vigil serve's /metrics.
type metricsSnap struct {
	lagLE    []float64 // the lag histogram's bucket bounds, in seconds, ascending (+Inf last)
	lagCum   []float64 // cumulative counts
	probes   float64
	skipped  float64
	failures float64
}

func scrape(ctx context.Context, c *client.Client) (metricsSnap, error) {
	b, err := c.Metrics(ctx)
	if err != nil {
		return metricsSnap{}, fmt.Errorf("read /metrics: %w", err)
	}
	return parseMetrics(b), nil
}

// parseMetrics reads the scheduling-lag histogram and the probe counters
// from the Prometheus text format.
func parseMetrics(b []byte) metricsSnap {
	var m metricsSnap
	type bucket struct{ le, n float64 }
	var buckets []bucket
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		name, labels := line[:sp], ""
		if k := strings.IndexByte(name, '{'); k >= 0 {
			name, labels = name[:k], name[k:]
		}
		switch name {
		case "vigil_schedule_lag_seconds_bucket":
			le := label(labels, "le")
			bound := math.Inf(1)
			if le != "+Inf" {
				if bound, err = strconv.ParseFloat(le, 64); err != nil {
					continue
				}
			}
			buckets = append(buckets, bucket{bound, v})
		case "vigil_probes_total":
			m.probes += v
			switch label(labels, "outcome") {
			case string(health.Skipped):
				m.skipped += v
			case string(health.Failure):
				m.failures += v
			}
		}
	}
	sort.Slice(buckets, func(i, j int) bool { return buckets[i].le < buckets[j].le })
	for _, b := range buckets {
		m.lagLE = append(m.lagLE, b.le)
		m.lagCum = append(m.lagCum, b.n)
	}
	return m
}

// label is the value of one label in a Prometheus label set.
func label(set, name string) string {
	k := strings.Index(set, name+`="`)
	if k < 0 {
		return ""
	}
	rest := set[k+len(name)+2:]
	if e := strings.IndexByte(rest, '"'); e >= 0 {
		return rest[:e]
	}
	return ""
}

// since is what the counters counted after before.
func (m metricsSnap) since(before metricsSnap) metricsSnap {
	d := metricsSnap{lagLE: m.lagLE, lagCum: make([]float64, len(m.lagCum)), probes: m.probes - before.probes,
		skipped: m.skipped - before.skipped, failures: m.failures - before.failures}
	for i := range m.lagCum {
		d.lagCum[i] = m.lagCum[i]
		if i < len(before.lagCum) {
			d.lagCum[i] -= before.lagCum[i]
		}
	}
	return d
}

// lagQuantile is the q-quantile of the lag in milliseconds, interpolated
// within its bucket as Prometheus's histogram_quantile does.
func (m metricsSnap) lagQuantile(q float64) float64 {
	if len(m.lagCum) == 0 || m.lagCum[len(m.lagCum)-1] == 0 {
		return 0
	}
	rank := q * m.lagCum[len(m.lagCum)-1]
	lower, prev := 0.0, 0.0
	for i, cum := range m.lagCum {
		if cum >= rank {
			if math.IsInf(m.lagLE[i], 1) {
				return lower * 1000
			}
			if cum == prev {
				return m.lagLE[i] * 1000
			}
			return (lower + (m.lagLE[i]-lower)*(rank-prev)/(cum-prev)) * 1000
		}
		lower, prev = m.lagLE[i], cum
	}
	return lower * 1000
}

// lagMax is the upper bound of the highest bucket in use, in milliseconds
// (its lower bound when that is +Inf).
func (m metricsSnap) lagMax() float64 {
	if len(m.lagCum) == 0 {
		return 0
	}
	total := m.lagCum[len(m.lagCum)-1]
	if total == 0 {
		return 0
	}
	lower := 0.0
	for i, cum := range m.lagCum {
		if cum >= total {
			if math.IsInf(m.lagLE[i], 1) {
				return lower * 1000
			}
			return m.lagLE[i] * 1000
		}
		lower = m.lagLE[i]
	}
	return lower * 1000
}

// lineWriter calls fn with each line written to it (without its newline).
type lineWriter struct {
	mu  sync.Mutex
	buf []byte
	fn  func(line []byte)
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		k := bytes.IndexByte(w.buf, '\n')
		if k < 0 {
			break
		}
		w.fn(w.buf[:k])
		w.buf = w.buf[k+1:]
	}
	if len(w.buf) == 0 {
		w.buf = nil
	}
	return len(b), nil
}
