package clock

import (
	"cmp"
	"container/heap"
	"math"
	"math/bits"
	"slices"
	"sync"
	"time"
)

// Shared is the system clock with AfterFunc timers kept in one timing wheel
// and run by one goroutine. A fleet of actors that each keep a timer costs
// one runtime timer instead of one per actor, and a timer firing costs a
// call instead of a goroutine. Callbacks run on that goroutine and must not
// block (the actors' only send a message).
//
// The wheel has one slot per Slack (25 ms) over ≈ 100 s: setting,
// moving and firing a timer within the span touch only the timer and its
// slot, however many timers there are. Timers due further out wait in a heap
// and move into the wheel as it turns. Timers of one slot fire together, up
// to Slack early, in due order.
//
// The wheel turns on the monotonic clock (durations since the clock's base
// time, which carries Go's monotonic reading): a step of the wall clock fires
// no timer early, all at once, nor holds any back.
//
// Concurrency contract: safe for concurrent use; Close stops the goroutine.
type Shared struct {
	base time.Time        // the monotonic origin: ticks count Slack since it
	wall func() time.Time // what Now reads: time.Now, or a test's stepped clock

	mu      sync.Mutex
	slots   []*sharedTimer // each the head of a list; a power of two of them
	full    []uint64       // bit per non-empty slot
	n       int64          // len(slots)
	fired   int64          // every tick ≤ fired has fired
	later   timerHeap      // due beyond the wheel's span
	wakeAt  int64          // the tick the goroutine sleeps until
	wake    chan struct{}
	done    chan struct{}
	stopped chan struct{}
}

// Slack is how early a Shared timer may fire to share a wake-up with an
// earlier one (the width of a slot). A fleet's timers fire in batches a
// slot apart: 40 wake-ups a second, each running a few hundred probes back
// to back at 10 000 probes a second. Every wake-up of a half-idle process
// costs more than its system calls on a virtual machine — the runtime wakes
// a second thread, and the batch's first probes run on caches the host's
// other work has emptied: a TCP probe cost ≈ 35 µs of CPU with 10 ms slots
// and ≈ 31 µs with 25 ms ones (BENCHMARKS.md). Intervals are at least a
// second: 25 ms early is at most 2.5 % of one.
const Slack = 25 * time.Millisecond

// wheelSlots is how many slots NewShared's wheel has: its span is ≈ 100 s,
// longer than the default interval.
const wheelSlots = 1 << 12

// Where a timer is: in a slot (≥ 0), in the heap, or pending nowhere.
const (
	inHeap = -2
	idle   = -1
)

// NewShared starts a shared clock.
func NewShared() *Shared {
	s := newShared(wheelSlots)
	go s.run()
	return s
}

// newShared makes a clock with a wheel of slots slots (a power of two, at
// least 64) without starting its goroutine.
func newShared(slots int) *Shared {
	s := &Shared{base: time.Now(), wall: time.Now, wake: make(chan struct{}, 1), done: make(chan struct{}),
		stopped: make(chan struct{}), slots: make([]*sharedTimer, slots), full: make([]uint64, slots/64), n: int64(slots)}
	s.fired = tick(s.mono()) - 1
	return s
}

// span is how far ahead the wheel holds timers.
func (s *Shared) span() time.Duration { return time.Duration(s.n) * Slack }

// tick is the slot count of a monotonic reading.
func tick(mono int64) int64 { return mono / int64(Slack) }

// mono reads the monotonic clock alone (time.Since of a time with a
// monotonic reading reads nothing else), in nanoseconds since base.
func (s *Shared) mono() int64 { return int64(time.Since(s.base)) }

// Now is the system time.
func (s *Shared) Now() time.Time { return s.wall() }

// Mono is the time since the clock started, on the monotonic clock.
func (s *Shared) Mono() time.Duration { return time.Since(s.base) }

// AfterFunc runs f on the clock's goroutine after d.
func (s *Shared) AfterFunc(d time.Duration, f func()) Timer { return s.AfterWake(d, funcWaker(f)) }

// AfterWake calls w.Wake on the clock's goroutine after d.
func (s *Shared) AfterWake(d time.Duration, w Waker) Timer {
	t := &sharedTimer{s: s, w: w, slot: idle, index: -1}
	t.Reset(d)
	return t
}

// Close stops the goroutine; pending timers never fire.
func (s *Shared) Close() {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	<-s.stopped
}

func (s *Shared) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// add files t at t.at; it reports whether the clock's goroutine must look
// again (t is due before anything it waits for).
func (s *Shared) add(t *sharedTimer) bool {
	k := max(tick(t.at), s.fired+1)
	if k > s.fired+s.n {
		heap.Push(&s.later, t)
		t.slot = inHeap
		return k < s.wakeAt
	}
	i := int(k & (s.n - 1))
	t.slot, t.prev, t.next = i, nil, s.slots[i]
	if t.next != nil {
		t.next.prev = t
	}
	s.slots[i] = t
	s.full[i/64] |= 1 << (i % 64)
	return k < s.wakeAt
}

// remove takes a pending t out; it reports whether it was pending.
func (s *Shared) remove(t *sharedTimer) bool {
	switch {
	case t.slot == inHeap:
		heap.Remove(&s.later, t.index)
	case t.slot >= 0:
		if t.prev != nil {
			t.prev.next = t.next
		} else {
			s.slots[t.slot] = t.next
			if t.next == nil {
				s.full[t.slot/64] &^= 1 << (t.slot % 64)
			}
		}
		if t.next != nil {
			t.next.prev = t.prev
		}
		t.prev, t.next = nil, nil
	default:
		return false
	}
	t.slot = idle
	return true
}

// nextTick is the first tick after fired with a non-empty slot, or
// fired+n+1 when the wheel is empty.
func (s *Shared) nextTick() int64 {
	slots := int(s.n)
	start := int((s.fired + 1) & (s.n - 1))
	for n := 0; n <= slots; {
		i := (start + n) & (slots - 1)
		w := s.full[i/64] >> (i % 64)
		if w != 0 {
			n += bits.TrailingZeros64(w)
			if n >= slots {
				break
			}
			return s.fired + 1 + int64(n)
		}
		n += 64 - i%64
	}
	return s.fired + s.n + 1
}

// take moves what is due at now (a monotonic reading) into due, in slot
// order, and returns the wait until the next slot or heap timer is due.
func (s *Shared) take(now int64, due []*sharedTimer) ([]*sharedTimer, time.Duration) {
	last := tick(now)
	for {
		s.migrate()
		k := s.nextTick()
		if k > last {
			break
		}
		i := int(k & (s.n - 1))
		for t := s.slots[i]; t != nil; {
			next := t.next
			t.slot, t.prev, t.next = idle, nil, nil
			due = append(due, t)
			t = next
		}
		s.slots[i] = nil
		s.full[i/64] &^= 1 << (i % 64)
		s.fired = k
	}
	// nothing else is due up to last
	s.fired = max(s.fired, last)
	s.migrate()
	next := s.nextTick()
	if len(s.later) > 0 {
		// the wheel may be empty while the heap is not: sleep until its
		// first timer, however far
		next = min(next, tick(s.later[0].at))
	} else if next > s.fired+s.n {
		// nothing pending: any timer set wakes the goroutine
		s.wakeAt = math.MaxInt64
		return due, time.Hour
	}
	s.wakeAt = next
	return due, time.Duration(next*int64(Slack) - now)
}

// migrate moves the heap's timers that the wheel now spans into it.
func (s *Shared) migrate() {
	for len(s.later) > 0 && tick(s.later[0].at) <= s.fired+s.n {
		t := heap.Pop(&s.later).(*sharedTimer)
		t.slot = idle
		s.add(t)
	}
}

func (s *Shared) run() {
	defer close(s.stopped)
	wait := time.NewTimer(time.Hour)
	defer wait.Stop()
	var due []*sharedTimer
	for {
		s.mu.Lock()
		var next time.Duration
		due, next = s.take(s.mono(), due[:0])
		// in due order: a batch's last timers are the ones due last (fired
		// early), not ones due at its start and late by the whole batch
		slices.SortFunc(due, func(a, b *sharedTimer) int { return cmp.Compare(a.at, b.at) })
		s.mu.Unlock()
		for i, t := range due {
			t.w.Wake()
			due[i] = nil
		}
		if len(due) > 0 {
			continue // time passed while firing: look again
		}
		wait.Reset(next)
		select {
		case <-wait.C:
		case <-s.wake:
			if !wait.Stop() {
				select {
				case <-wait.C:
				default:
				}
			}
		case <-s.done:
			return
		}
	}
}

type sharedTimer struct {
	s          *Shared
	at         int64 // monotonic nanoseconds since the clock's base
	w          Waker
	prev, next *sharedTimer // in the slot's list
	slot       int          // in the wheel; inHeap or idle otherwise
	index      int          // in the heap
}

// Stop removes the timer; it reports whether it was still pending.
func (t *sharedTimer) Stop() bool {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	return t.s.remove(t)
}

// Reset makes the timer due d from now, pending or not.
func (t *sharedTimer) Reset(d time.Duration) bool {
	s := t.s
	at := s.mono() + int64(d)
	s.mu.Lock()
	pending := s.remove(t)
	t.at = at
	first := s.add(t)
	s.mu.Unlock()
	if first {
		s.poke()
	}
	return pending
}

// timerHeap orders the timers beyond the wheel by due time; guarded by
// Shared.mu.
type timerHeap []*sharedTimer

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}

func (h *timerHeap) Push(x any) {
	t := x.(*sharedTimer)
	t.index = len(*h)
	*h = append(*h, t)
}

func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	t.index = -1
	*h = old[:len(old)-1]
	return t
}
