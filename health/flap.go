package health

import "time"

// Flapping: an instance whose status changed FlapChanges times within
// FlapIntervals × its interval is flapping until it has been steady that
// long again. While it flaps, its transitions are still shown and logged,
// but notifiers get one flapping event instead of each, and restarts hold.
const (
	FlapChanges   = 6
	FlapIntervals = 10
)

// FlapWindow is the window of an interval.
func FlapWindow(interval time.Duration) time.Duration { return FlapIntervals * interval }

// Flap is an instance's flapping detector, part of its durable state: the
// times of its last status changes (a ring) and whether it flaps.
type Flap struct {
	Changes  [FlapChanges]int64 `json:"changes"` // unix nanoseconds; 0 for none
	Next     int                `json:"next"`
	Flapping bool               `json:"flapping"`
}

// Change records a status change at now; it reports whether the instance
// started flapping with it.
func (f *Flap) Change(now time.Time, window time.Duration) bool {
	f.Changes[f.Next] = now.UnixNano()
	f.Next = (f.Next + 1) % FlapChanges
	if f.Flapping {
		return false
	}
	oldest := f.Changes[f.Next] // the slot written next holds the oldest change
	if oldest != 0 && now.UnixNano()-oldest <= int64(window) {
		f.Flapping = true
		return true
	}
	return false
}

// last is the time of the newest change.
func (f *Flap) last() int64 { return f.Changes[(f.Next+FlapChanges-1)%FlapChanges] }

// SteadyAt is when a flapping instance stops flapping if its status does
// not change before (zero when it does not flap).
func (f *Flap) SteadyAt(window time.Duration) time.Time {
	if !f.Flapping {
		return time.Time{}
	}
	return time.Unix(0, f.last()+int64(window)).UTC()
}

// Settle reports whether a flapping instance has been steady for window at
// now, and if so it no longer flaps.
func (f *Flap) Settle(now time.Time, window time.Duration) bool {
	if !f.Flapping || now.Before(f.SteadyAt(window)) {
		return false
	}
	f.Flapping = false
	return true
}

// Counts reports whether a transition with this reason is a change of the
// workload's health (a probe's doing) rather than of its configuration.
func (r Reason) Counts() bool {
	switch r {
	case ReasonLifecycle, ReasonPolicyChanged, ReasonNewWindow, ReasonRegistered, ReasonDeleted:
		return false
	}
	return true
}
