// Package clock is the narrow time interface vigil's actors read and sleep
// through, with a real implementation and a fake one that tests advance by
// hand.
//
// A clock has two readings. Now is the wall clock, the time of day: what is
// shown and stored, and what a step of the system clock (NTP correcting it,
// an operator setting it) moves. Mono is the monotonic clock, which no step
// moves: timers, intervals, deadlines and every duration vigil measures run
// on it. The Fake steps its wall clock alone (Step) as well as both (Advance).
//
// Concurrency contract: every implementation is safe for concurrent use. A
// Fake runs due timer callbacks on the goroutine that calls Advance, outside
// its lock, in due order.
package clock

import (
	"sort"
	"sync"
	"time"
)

// Clock tells the time and runs functions later.
type Clock interface {
	// Now is the wall clock's time.
	Now() time.Time
	// Mono is the monotonic clock's reading: the time since an origin of
	// this clock's. Only the difference of two readings means anything.
	Mono() time.Duration
	// AfterFunc runs f once d has passed on the monotonic clock.
	AfterFunc(d time.Duration, f func()) Timer
	// AfterWake is AfterFunc calling w.Wake: a timer that wakes an object
	// reaches it from the timer directly, not through a closure (an object
	// of its own, and a cache miss for a timer that fires once an interval).
	AfterWake(d time.Duration, w Waker) Timer
}

// Waker is what an AfterWake timer calls.
type Waker interface{ Wake() }

// funcWaker makes a function a Waker without an allocation.
type funcWaker func()

func (f funcWaker) Wake() { f() }

// Timer is a pending AfterFunc.
type Timer interface {
	// Stop prevents the function from running; it reports whether it did.
	Stop() bool
	// Reset makes the function run after d (again, or instead of when it
	// was due); it reports whether the timer was pending. A timer that an
	// actor keeps for its lifetime and resets costs no allocation per use.
	Reset(d time.Duration) bool
}

// Real is the system clock.
var Real Clock = realClock{}

// origin is the real clocks' monotonic origin: time.Since of it reads the
// monotonic clock alone.
var origin = time.Now()

type realClock struct{}

func (realClock) Now() time.Time                            { return time.Now() }
func (realClock) Mono() time.Duration                       { return time.Since(origin) }
func (realClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }
func (realClock) AfterWake(d time.Duration, w Waker) Timer  { return time.AfterFunc(d, w.Wake) }

// Fake is a clock that moves only when told to. Its monotonic reading
// starts at zero; its timers fall due on it.
type Fake struct {
	mu     sync.Mutex
	now    time.Time     // the wall clock
	mono   time.Duration // the monotonic clock
	seq    uint64
	timers []*fakeTimer
}

type fakeTimer struct {
	f     *Fake
	at    time.Duration // on the monotonic clock
	seq   uint64
	w     Waker
	fired bool
}

// NewFake returns a fake clock whose wall clock reads t.
func NewFake(t time.Time) *Fake { return &Fake{now: t} }

// Now returns the fake wall time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Mono returns the fake monotonic reading.
func (f *Fake) Mono() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mono
}

// AfterFunc schedules fn to run when the clock has advanced by d.
func (f *Fake) AfterFunc(d time.Duration, fn func()) Timer { return f.AfterWake(d, funcWaker(fn)) }

// AfterWake schedules w.Wake to run when the clock has advanced by d.
func (f *Fake) AfterWake(d time.Duration, w Waker) Timer {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	t := &fakeTimer{f: f, at: f.mono + d, seq: f.seq, w: w}
	f.timers = append(f.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	return t.removeLocked()
}

func (t *fakeTimer) removeLocked() bool {
	for i, o := range t.f.timers {
		if o == t {
			t.f.timers = append(t.f.timers[:i], t.f.timers[i+1:]...)
			return !t.fired
		}
	}
	return false
}

// Reset schedules the timer's function d after the fake time.
func (t *fakeTimer) Reset(d time.Duration) bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	pending := t.removeLocked()
	t.f.seq++
	t.at, t.seq, t.fired = t.f.mono+d, t.f.seq, false
	t.f.timers = append(t.f.timers, t)
	return pending
}

// Advance moves both clocks forward by d, running every timer that falls
// due, in due order, each with the clocks set to its due time.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	end := f.mono + d
	f.mu.Unlock()
	for {
		f.mu.Lock()
		sort.Slice(f.timers, func(i, j int) bool {
			if f.timers[i].at == f.timers[j].at {
				return f.timers[i].seq < f.timers[j].seq
			}
			return f.timers[i].at < f.timers[j].at
		})
		if len(f.timers) == 0 || f.timers[0].at > end {
			f.moveLocked(end)
			f.mu.Unlock()
			return
		}
		t := f.timers[0]
		f.timers = f.timers[1:]
		t.fired = true
		f.moveLocked(t.at)
		f.mu.Unlock()
		t.w.Wake()
	}
}

// moveLocked moves both clocks to the monotonic reading mono, never back.
func (f *Fake) moveLocked(mono time.Duration) {
	if mono > f.mono {
		f.now = f.now.Add(mono - f.mono)
		f.mono = mono
	}
}

// Step moves the wall clock alone by d, forward or back, as NTP or an
// operator stepping the system clock does: the monotonic clock stays where
// it is and no timer fires.
func (f *Fake) Step(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

// Pending is the number of timers not yet fired or stopped.
func (f *Fake) Pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.timers)
}
