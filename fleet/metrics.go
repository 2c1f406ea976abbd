package fleet

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics of the fleet: nodes up and down, requests forwarded to other
// nodes and their latency, moves, and etcd's round trips.
type metrics struct {
	forwarded *prometheus.HistogramVec // by op and outcome
	moves     *prometheus.CounterVec   // by result
	etcd      *prometheus.HistogramVec // by op
}

func newMetrics(n *Node, reg prometheus.Registerer) *metrics {
	m := &metrics{
		forwarded: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "vigil_fleet_forwarded_seconds",
			Help:    "Requests forwarded to the node that owns the instance, by operation and outcome, and how long they took.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}}, []string{"op", "outcome"}),
		moves: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vigil_fleet_moves_total",
			Help: "Moves of instances out of this node, by result."}, []string{"result"}),
		etcd: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "vigil_fleet_etcd_seconds",
			Help:    "Round trips to etcd, by operation.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}, []string{"op"}),
	}
	if reg == nil {
		return m
	}
	reg.MustRegister(m.forwarded, m.moves, m.etcd, &nodeCollector{n: n,
		desc: prometheus.NewDesc("vigil_fleet_nodes", "Nodes of the fleet, by state.", []string{"state"}, nil)})
	return m
}

// nodeCollector reads the nodes up and down at scrape time.
type nodeCollector struct {
	n    *Node
	desc *prometheus.Desc
}

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	members, _ := c.n.cat.membersNow()
	up, down := 0, 0
	for _, m := range members {
		if m.up {
			up++
		} else {
			down++
		}
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(up), "up")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(down), "down")
}
