package persistence

import (
	"github.com/prometheus/client_golang/prometheus"
)

// storeMetrics counts what the writer commits. It is written by the writer
// goroutine only and read by Prometheus scrapes.
type storeMetrics struct {
	commits     prometheus.Counter
	failures    prometheus.Counter
	snapshots   prometheus.Counter
	events      prometheus.Counter
	specs       prometheus.Counter
	commitTimes prometheus.Histogram
}

func newStoreMetrics() *storeMetrics {
	return &storeMetrics{
		commits: prometheus.NewCounter(prometheus.CounterOpts{Name: "vigil_store_commits_total",
			Help: "Group commits (one write batch and one sync) that succeeded."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "vigil_store_commit_failures_total",
			Help: "Group commits that failed and were retried."}),
		snapshots: prometheus.NewCounter(prometheus.CounterOpts{Name: "vigil_store_snapshot_writes_total",
			Help: "Instance snapshots written."}),
		events: prometheus.NewCounter(prometheus.CounterOpts{Name: "vigil_store_event_writes_total",
			Help: "Transition events written to the event log."}),
		specs: prometheus.NewCounter(prometheus.CounterOpts{Name: "vigil_store_spec_writes_total",
			Help: "Instance specs written or deleted."}),
		commitTimes: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "vigil_store_commit_seconds",
			Help:    "Time of one group commit, write batch and sync.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
	}
}

// Collectors returns the store's Prometheus metrics, for the caller to
// register.
func (s *Store) Collectors() []prometheus.Collector {
	m := s.metrics
	notLoaded := func(reason string, n *int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vigil_store_records_not_loaded",
			Help:        "Instance records on disk that the start did not load: unreadable (a damaged table) or skipped (undecodable or invalid).",
			ConstLabels: prometheus.Labels{"reason": reason}}, func() float64 {
			s.mu.Lock()
			defer s.mu.Unlock()
			return float64(*n)
		})
	}
	return []prometheus.Collector{m.commits, m.failures, m.snapshots, m.events, m.specs, m.commitTimes,
		notLoaded("unreadable", &s.missing), notLoaded("skipped", &s.skipped)}
}
