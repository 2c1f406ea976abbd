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
// times of its last status changes (a ring) and whether it flaps. The
// window is measured on the monotonic clock: each change's reading is kept
// beside its wall time, which is what a snapshot stores.
type Flap struct {
	Changes  [FlapChanges]int64 `json:"changes,omitzero"` // unix nanoseconds; 0 for none
	Next     int                `json:"next,omitzero"`
	Flapping bool               `json:"flapping,omitzero"`

	// the monotonic readings of Changes; live once set (a decoded Flap is
	// placed on the monotonic clock by the first Instant it is given)
	mono [FlapChanges]time.Duration
	live bool
}

// IsZero reports whether no change has been recorded: a stored state
// leaves it out then (the monotonic readings alone are not a record).
func (f Flap) IsZero() bool { return f.Changes == [FlapChanges]int64{} && f.Next == 0 && !f.Flapping }

// resume places a decoded ring's changes on the monotonic clock, by their
// wall distance from now.
func (f *Flap) resume(now Instant) {
	if f.live {
		return
	}
	f.live = true
	for i, ns := range f.Changes {
		if ns != 0 {
			f.mono[i] = now.Of(time.Unix(0, ns)).Mono
		}
	}
}

// Change records a status change at now; it reports whether the instance
// started flapping with it.
func (f *Flap) Change(now Instant, window time.Duration) bool {
	f.resume(now)
	f.Changes[f.Next], f.mono[f.Next] = now.Wall.UnixNano(), now.Mono
	f.Next = (f.Next + 1) % FlapChanges
	if f.Flapping {
		return false
	}
	// the slot written next holds the oldest change
	if f.Changes[f.Next] != 0 && now.Mono-f.mono[f.Next] <= window {
		f.Flapping = true
		return true
	}
	return false
}

// SteadyAt is when a flapping instance stops flapping if its status does
// not change before (the zero Instant when it does not flap).
func (f *Flap) SteadyAt(now Instant, window time.Duration) Instant {
	f.resume(now)
	if !f.Flapping {
		return Instant{}
	}
	last := (f.Next + FlapChanges - 1) % FlapChanges
	return Instant{Wall: time.Unix(0, f.Changes[last]+int64(window)).UTC(), Mono: f.mono[last] + window}
}

// stale reports whether the ring can decide nothing any more: the instance
// does not flap and every change it holds is older than window at now, so
// none of them is within a window of any later change.
func (f *Flap) stale(now Instant, window time.Duration) bool {
	if f.Flapping {
		return false
	}
	f.resume(now)
	last := (f.Next + FlapChanges - 1) % FlapChanges
	return f.Changes[last] == 0 || now.Mono-f.mono[last] > window
}

// Settle reports whether a flapping instance has been steady for window at
// now, and if so it no longer flaps.
func (f *Flap) Settle(now Instant, window time.Duration) bool {
	if !f.Flapping || now.Mono < f.SteadyAt(now, window).Mono {
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
