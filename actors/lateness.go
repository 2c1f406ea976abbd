package actors

import (
	"sync/atomic"
	"time"
)

// Probing is behind when, in any quarter of a second within the last
// second, more than BehindShare of the probes started (and at least
// behindMin of them) started more than BehindLate after they were due. The
// API then works on its requests one at a time (api.Options.Behind), so that
// a flood of clients cannot take the CPU the probes are late for. BehindLate
// is half the 50 ms a probe may be late by, and a quarter is enough to see
// it, so the API gives way before the lag reaches that; one quarter holds it
// for a second, so that it does not take back the CPU as soon as the probes
// have it.
const (
	BehindLate  = 25 * time.Millisecond
	BehindShare = 0.01
	behindMin   = 10
)

// lateness counts, per quarter of a second of the monotonic clock, the
// probes started and those started more than BehindLate late, over the
// last four quarters. Counts are approximate at a quarter's turn (a count
// may land in the quarter just reset): it is a signal, not a measure.
//
// Concurrency contract: safe for concurrent use.
type lateness struct {
	quarters [4]quarter
}

type quarter struct {
	epoch       atomic.Int64 // which quarter-second of the monotonic clock this one counts
	total, late atomic.Int64
}

const quarterLen = 250 * time.Millisecond

// observe counts a probe started at mono (a reading of the monotonic clock),
// late after it was due.
func (l *lateness) observe(mono, late time.Duration) {
	epoch := int64(mono / quarterLen)
	q := &l.quarters[epoch%int64(len(l.quarters))]
	for {
		old := q.epoch.Load()
		if old > epoch {
			return // a reading of a quarter already turned over
		}
		if old == epoch {
			break
		}
		if q.epoch.CompareAndSwap(old, epoch) {
			q.total.Store(0)
			q.late.Store(0)
			break
		}
	}
	q.total.Add(1)
	if late > BehindLate {
		q.late.Add(1)
	}
}

// behind reports whether probing was behind in a quarter of the last
// second, as of mono.
func (l *lateness) behind(mono time.Duration) bool {
	now := int64(mono / quarterLen)
	for i := range l.quarters {
		q := &l.quarters[i]
		if e := q.epoch.Load(); e <= now && e > now-int64(len(l.quarters)) {
			if late := q.late.Load(); late >= behindMin && float64(late) > BehindShare*float64(q.total.Load()) {
				return true
			}
		}
	}
	return false
}
