package actors

import (
	"container/list"
	"context"
	"sync"
)

// budget is the host-wide cap on probes in flight. Waiters queue in two
// classes; a released slot goes to the urgent class (starting and failing
// instances) first, except that every fourth grant goes to a waiting normal
// probe, so a crowd of failing instances cannot starve the healthy ones. A waiter gives up when its context ends, so the queue
// holds at most one waiter per instance and never fills.
type budget struct {
	mu     sync.Mutex
	free   int
	urgent list.List
	normal list.List
	grants int
}

type budgetWaiter struct {
	ready   chan struct{}
	granted bool
}

func newBudget(n int) *budget { return &budget{free: n} }

// tryAcquire takes a free slot without waiting, when the queues allow it.
func (b *budget) tryAcquire(urgent bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.free > 0 && b.urgent.Len() == 0 && (urgent || b.normal.Len() == 0) {
		b.free--
		return true
	}
	return false
}

// acquire takes a slot, waiting until ctx ends. It reports whether it got one.
func (b *budget) acquire(ctx context.Context, urgent bool) bool {
	b.mu.Lock()
	if b.free > 0 && b.urgent.Len() == 0 && (urgent || b.normal.Len() == 0) {
		b.free--
		b.mu.Unlock()
		return true
	}
	w := &budgetWaiter{ready: make(chan struct{})}
	q := &b.normal
	if urgent {
		q = &b.urgent
	}
	el := q.PushBack(w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return true
	case <-ctx.Done():
		b.mu.Lock()
		defer b.mu.Unlock()
		if w.granted {
			b.releaseLocked()
			return false
		}
		q.Remove(el)
		return false
	}
}

func (b *budget) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.releaseLocked()
}

func (b *budget) releaseLocked() {
	b.grants++
	order := [2]*list.List{&b.urgent, &b.normal}
	if b.grants%4 == 0 {
		order = [2]*list.List{&b.normal, &b.urgent}
	}
	for _, q := range order {
		if el := q.Front(); el != nil {
			w := q.Remove(el).(*budgetWaiter)
			w.granted = true
			close(w.ready)
			return
		}
	}
	b.free++
}

// inFlight is the number of slots taken.
func (b *budget) inFlight(capacity int) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return capacity - b.free
}
