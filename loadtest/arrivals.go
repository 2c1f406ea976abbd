package loadtest

import (
	"sync/atomic"
	"time"
)

// earlyBy is how much shorter than the interval a gap between two arrivals
// must be to count as an early probe.
const earlyBy = 50 * time.Millisecond

// instance classes, as the target process sees them
const (
	classHealthy = iota
	classHung
	classFlip
	classOther // exec: served by the agent, not attributed
)

// arrivals records, in the target process, when each instance's probes
// arrive: one fixed slot per instance (the latest arrival and a count,
// atomics) and lock-free histograms, so that recording an arrival takes a
// few atomic operations and allocates nothing, however many instances.
//
// A gap is the time between two arrivals of one instance; the lag the
// target sees is the gap minus the interval: positive when a probe came
// late, negative when early.
type arrivals struct {
	base     time.Time // monotonic origin of the slots' times
	interval int64     // ns
	class    []uint8   // per instance, fixed
	last     []atomic.Int64
	count    []atomic.Uint32 // arrivals in the window
	starved  []atomic.Bool   // a gap of more than two intervals in the window
	counting atomic.Bool
	began    atomic.Int64 // ns since base when the window began

	lag       signedHist // healthy instances: gap − interval
	lagSum    atomic.Int64
	hungGap   hist // hung instances' gaps
	gaps      atomic.Uint64
	early     atomic.Uint64
	byClass   [4]atomic.Uint64 // arrivals in the window
	strangers atomic.Uint64    // connections to an address of no instance
}

func newArrivals(f *fleet, interval time.Duration) *arrivals {
	a := &arrivals{base: time.Now(), interval: int64(interval), class: make([]uint8, f.n),
		last: make([]atomic.Int64, f.n), count: make([]atomic.Uint32, f.n), starved: make([]atomic.Bool, f.n)}
	for i := range f.n {
		switch {
		case f.types[i] == "exec":
			a.class[i] = classOther
		case f.hung[i]:
			a.class[i] = classHung
		case f.flips[i]:
			a.class[i] = classFlip
		}
	}
	return a
}

// now is the time since base, on the monotonic clock, plus one (0 is "no
// arrival yet").
func (a *arrivals) now() int64 { return int64(time.Since(a.base)) + 1 }

// arrive records a probe of instance i (-1: of no instance).
func (a *arrivals) arrive(i int) {
	if i < 0 || i >= len(a.last) {
		a.strangers.Add(1)
		return
	}
	now := a.now()
	prev := a.last[i].Swap(now)
	if !a.counting.Load() {
		return
	}
	cl := a.class[i]
	a.byClass[cl].Add(1)
	a.count[i].Add(1)
	if prev == 0 {
		return
	}
	gap := now - prev
	switch cl {
	case classHealthy:
		lag := gap - a.interval
		a.lag.add(time.Duration(lag))
		a.lagSum.Add(lag)
		a.gaps.Add(1)
		if gap < a.interval-int64(earlyBy) {
			a.early.Add(1)
		}
		if gap > 2*a.interval {
			a.starved[i].Store(true)
		}
	case classHung:
		a.hungGap.add(time.Duration(gap))
	}
}

// probed counts the healthy instances that have had at least one arrival,
// and all instances of any class that have.
func (a *arrivals) probed() (healthy, all int) {
	for i := range a.last {
		if a.last[i].Load() != 0 {
			all++
			if a.class[i] == classHealthy {
				healthy++
			}
		}
	}
	return healthy, all
}

func (a *arrivals) begin() {
	for i := range a.count {
		a.count[i].Store(0)
		a.starved[i].Store(false)
	}
	a.began.Store(a.now())
	a.counting.Store(true)
}

// TargetReport is what the target process saw in the window.
type TargetReport struct {
	// healthy instances: gap between two arrivals − interval
	LagP50MS  float64 `json:"lag_p50_ms"`
	LagP99MS  float64 `json:"lag_p99_ms"`
	LagMaxMS  float64 `json:"lag_max_ms"`
	LagMinMS  float64 `json:"lag_min_ms"` // the earliest (negative: early)
	LagMeanMS float64 `json:"lag_mean_ms"`
	Gaps      uint64  `json:"gaps"`
	// gaps shorter than the interval − 50 ms
	EarlyGaps  uint64  `json:"early_gaps"`
	EarlyShare float64 `json:"early_share"`
	// healthy instances with a gap of more than two intervals in the window
	// (the gap still open at its end included)
	Starved  int `json:"starved"`
	Healthy  int `json:"healthy"`  // instances whose arrivals are the figures above
	Unprobed int `json:"unprobed"` // healthy instances without an arrival in the window
	// arrivals in the window, by what the instance's target does
	ArrivalsHealthy uint64 `json:"arrivals_healthy"`
	ArrivalsHung    uint64 `json:"arrivals_hung"`
	ArrivalsFlip    uint64 `json:"arrivals_flip"`
	Strangers       uint64 `json:"arrivals_unknown"`
	// the gap between two arrivals of a hung instance (its probe's timeout
	// and the interval after it)
	HungGapP50MS float64 `json:"hung_gap_p50_ms"`
	// the target process's own CPU over the window
	CPUPercent       float64 `json:"cpu_percent"`
	CPUPerArrivalUS  float64 `json:"cpu_per_arrival_us"`
	RSSBytes         int64   `json:"rss_bytes"`
	WindowS          float64 `json:"window_s"`
	NotifierArrivals uint64  `json:"notifier_deliveries"`
	NotifierP50MS    float64 `json:"notifier_lag_p50_ms"`
	NotifierP99MS    float64 `json:"notifier_lag_p99_ms"`
	NotifierMaxMS    float64 `json:"notifier_lag_max_ms"`
}

// end closes the window and reports it.
func (a *arrivals) end() TargetReport {
	a.counting.Store(false)
	return a.peek()
}

// peek reports the window so far.
func (a *arrivals) peek() TargetReport {
	now := a.now()
	began := a.began.Load()
	r := TargetReport{Gaps: a.gaps.Load(), EarlyGaps: a.early.Load(), WindowS: float64(now-began) / 1e9,
		LagP50MS: a.lag.quantile(0.5), LagP99MS: a.lag.quantile(0.99), LagMaxMS: a.lag.maxMS(), LagMinMS: a.lag.minMS(),
		ArrivalsHealthy: a.byClass[classHealthy].Load(), ArrivalsHung: a.byClass[classHung].Load(),
		ArrivalsFlip: a.byClass[classFlip].Load(), Strangers: a.strangers.Load(), HungGapP50MS: a.hungGap.quantile(0.5)}
	if r.Gaps > 0 {
		r.EarlyShare = float64(r.EarlyGaps) / float64(r.Gaps)
		r.LagMeanMS = float64(a.lagSum.Load()) / float64(r.Gaps) / 1e6
	}
	for i := range a.last {
		if a.class[i] != classHealthy {
			continue
		}
		r.Healthy++
		last := a.last[i].Load()
		if a.count[i].Load() == 0 {
			r.Unprobed++
		}
		// an open gap of more than two intervals at the end counts as one
		if a.starved[i].Load() || now-max(last, began) > 2*a.interval {
			r.Starved++
		}
	}
	return r
}

// signedHist is a histogram of durations of either sign: the magnitudes of
// the negative ones in one log-linear histogram, the others in another.
type signedHist struct {
	neg, pos hist
}

func (h *signedHist) add(d time.Duration) {
	if d < 0 {
		h.neg.add(-d)
		return
	}
	h.pos.add(d)
}

// quantile returns the q-quantile in milliseconds, negative below zero.
func (h *signedHist) quantile(q float64) float64 {
	nn, np := h.neg.n.Load(), h.pos.n.Load()
	n := nn + np
	if n == 0 {
		return 0
	}
	rank := max(uint64(q*float64(n)+0.999999), 1)
	if rank > nn {
		return h.pos.rankMS(rank - nn)
	}
	// the rank-th smallest of the negatives is the (nn−rank+1)-th largest
	// magnitude
	return -h.neg.rankMS(nn - rank + 1)
}

func (h *signedHist) maxMS() float64 {
	if h.pos.n.Load() == 0 {
		return -h.neg.minMS()
	}
	return h.pos.maxMS()
}

func (h *signedHist) minMS() float64 {
	if h.neg.n.Load() > 0 {
		return -h.neg.maxMS()
	}
	return h.pos.minMS()
}
