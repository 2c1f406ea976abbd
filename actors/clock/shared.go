package clock

import (
	"container/heap"
	"sync"
	"time"
)

// Shared is the system clock with AfterFunc timers kept in one heap and run
// by one goroutine, in due order. A fleet of actors that each keep a timer
// costs one runtime timer instead of one per actor, and a timer firing costs
// a call instead of a goroutine. Callbacks run on that goroutine and must
// not block (the actors' only send a message). Timers due within Slack of
// each other fire together.
//
// Concurrency contract: safe for concurrent use; Close stops the goroutine.
type Shared struct {
	mu      sync.Mutex
	timers  timerHeap
	wake    chan struct{}
	done    chan struct{}
	stopped chan struct{}
}

// Slack is how early a Shared timer may fire to share a wake-up with an
// earlier one.
const Slack = time.Millisecond

// NewShared starts a shared clock.
func NewShared() *Shared {
	s := &Shared{wake: make(chan struct{}, 1), done: make(chan struct{}), stopped: make(chan struct{})}
	go s.run()
	return s
}

// Now is the system time.
func (s *Shared) Now() time.Time { return time.Now() }

// AfterFunc runs f on the clock's goroutine after d.
func (s *Shared) AfterFunc(d time.Duration, f func()) Timer {
	t := &sharedTimer{s: s, at: time.Now().Add(d).UnixNano(), fn: f, index: -1}
	s.mu.Lock()
	heap.Push(&s.timers, t)
	first := t.index == 0
	s.mu.Unlock()
	if first {
		s.poke()
	}
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

func (s *Shared) run() {
	defer close(s.stopped)
	wait := time.NewTimer(time.Hour)
	defer wait.Stop()
	var due []*sharedTimer
	for {
		s.mu.Lock()
		now := time.Now().UnixNano()
		due = due[:0]
		for len(s.timers) > 0 && s.timers[0].at <= now+int64(Slack) {
			due = append(due, heap.Pop(&s.timers).(*sharedTimer))
		}
		next := time.Duration(-1)
		if len(s.timers) > 0 {
			next = time.Duration(s.timers[0].at - now)
		}
		s.mu.Unlock()
		for i, t := range due {
			t.fn()
			due[i] = nil
		}
		if len(due) > 0 {
			continue // time passed while firing: look again
		}
		if next < 0 {
			next = time.Hour
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
	s     *Shared
	at    int64 // unix nanoseconds
	fn    func()
	index int // in the heap; -1 when not in it
}

// Stop removes the timer; it reports whether it was still pending.
func (t *sharedTimer) Stop() bool {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	if t.index < 0 {
		return false
	}
	heap.Remove(&t.s.timers, t.index)
	return true
}

// Reset makes the timer due d from now, pending or not.
func (t *sharedTimer) Reset(d time.Duration) bool {
	at := time.Now().Add(d).UnixNano()
	s := t.s
	s.mu.Lock()
	pending := t.index >= 0
	t.at = at
	if pending {
		heap.Fix(&s.timers, t.index)
	} else {
		heap.Push(&s.timers, t)
	}
	first := t.index == 0
	s.mu.Unlock()
	if first {
		s.poke()
	}
	return pending
}

func (s *Shared) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// timerHeap orders timers by due time; guarded by Shared.mu.
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
