package api

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// Metrics is vigil's Prometheus registry. It is the scheduler's Observer
// (probes, lag, transitions); New adds the gauges it reads from the Registry
// (instances by status, probes in flight) at scrape time. Safe for concurrent
// use; the Observer methods never block.
type Metrics struct {
	reg         *prometheus.Registry
	probes      *prometheus.CounterVec
	durations   *prometheus.HistogramVec
	lag         prometheus.Histogram
	transitions *prometheus.CounterVec
	events      *prometheus.CounterVec
	streams     prometheus.Gauge
	catchUps    prometheus.Counter
}

var _ actors.Observer = (*Metrics)(nil)

// NewMetrics builds the registry with the Go runtime and process collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vigil_probes_total",
			Help: "Probes finished, by probe type, outcome and reason."}, []string{"type", "outcome", "reason"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "vigil_probe_duration_seconds",
			Help:    "Time from a probe's start to its result, by probe type.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"type"}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "vigil_schedule_lag_seconds",
			Help:    "How late a scheduled probe started: actual start minus due time.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vigil_transitions_total",
			Help: "Durable status transitions, by from and to status."}, []string{"from", "to"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vigil_events_total",
			Help: "Durable events other than transitions, by kind (flapping, incident_opened, ...)."}, []string{"kind"}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vigil_event_streams",
			Help: "Open /v1/events streams."}),
		catchUps: prometheus.NewCounter(prometheus.CounterOpts{Name: "vigil_event_stream_catchups_total",
			Help: "Times an event stream fell behind live events and caught up from the log."}),
	}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.probes, m.durations, m.lag, m.transitions, m.events, m.streams, m.catchUps)
	return m
}

// Register adds collectors of other components, such as the store's.
func (m *Metrics) Register(cs ...prometheus.Collector) { m.reg.MustRegister(cs...) }

// Registry is where others register collectors of their own.
func (m *Metrics) Registry() prometheus.Registerer { return m.reg }

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// ProbeStarted records the scheduling lag of a probe that had a due time.
func (m *Metrics) ProbeStarted(_ string, _ health.Type, due, started time.Time) {
	if !due.IsZero() {
		m.lag.Observe(max(started.Sub(due), 0).Seconds())
	}
}

// ProbeFinished counts the probe and records its duration.
func (m *Metrics) ProbeFinished(_ string, typ health.Type, r health.Result) {
	m.probes.WithLabelValues(string(typ), string(r.Outcome), string(r.Reason)).Inc()
	m.durations.WithLabelValues(string(typ)).Observe(time.Duration(r.Duration).Seconds())
}

// Transitioned counts a durable transition, and the other events by kind.
func (m *Metrics) Transitioned(ev actors.Event) {
	if ev.Kind != "" {
		m.events.WithLabelValues(ev.Kind).Inc()
		return
	}
	m.transitions.WithLabelValues(string(ev.From), string(ev.To)).Inc()
}

// registryCollector reads the gauges that the Registry keeps at scrape time.
type registryCollector struct {
	reg       Registry
	isBehind  func() bool // Options.Behind; nil without it
	instances *prometheus.Desc
	inFlight  *prometheus.Desc
	behind    *prometheus.Desc
}

func newRegistryCollector(reg Registry, behind func() bool) *registryCollector {
	return &registryCollector{reg: reg, isBehind: behind,
		instances: prometheus.NewDesc("vigil_instances", "Registered instances by health status.", []string{"status"}, nil),
		inFlight:  prometheus.NewDesc("vigil_probes_in_flight", "Probes holding a slot of the probe budget.", nil, nil),
		behind: prometheus.NewDesc("vigil_probing_behind",
			"1 while probing runs behind its schedule (over 1 % of the last second's probes started over 50 ms late); the API then works on one request at a time.", nil, nil),
	}
}

func (c *registryCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.instances
	ch <- c.inFlight
	if c.isBehind != nil {
		ch <- c.behind
	}
}

func (c *registryCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.reg.Summary()
	for _, st := range health.Statuses {
		ch <- prometheus.MustNewConstMetric(c.instances, prometheus.GaugeValue, float64(counts[st]), string(st))
	}
	ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(c.reg.InFlight()))
	if c.isBehind != nil {
		v := 0.0
		if c.isBehind() {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.behind, prometheus.GaugeValue, v)
	}
}
