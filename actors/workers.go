package actors

import (
	"slices"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/probes"
)

// probeJob is one probe handed to a worker; a value, so the hand-off
// allocates nothing.
type probeJob struct {
	self   *actor.PID
	run    *probeRun
	token  uint64
	id     string
	policy *health.Policy
	prober probes.Prober
	due    time.Time     // for the observer: start minus how late it was
	late   time.Duration // how late after its due time the actor handed it over
	handed time.Time     // when the actor handed it over (monotonic)
	// a probe the actor started (holding a budget slot): when, on the wall
	// clock (shown) and the monotonic one (its timeout and duration), and
	// what is left to do
	start     time.Time
	startMono time.Duration
	rest      probes.Rest
	urgent    bool
}

// workers runs probes on long-lived goroutines. A probe descends through the
// network stack; a fresh goroutine per probe grew its stack there and paid for
// its creation every time. A job goes to the worker that became idle last
// (a stack, not a queue), so the workers a burst called up and steady load
// does not need get no job, wait for idle and exit: handed in turn, every
// one of them would be kept alive by a job now and then, and the pool would
// stay at its peak, thousands of goroutines and their stacks. An idle host
// keeps no goroutines.
//
// Concurrency contract: do and close may be called from any goroutine; do
// after close runs nothing.
type workers struct {
	idle time.Duration
	exec func(probeJob)

	mu      sync.Mutex
	closed  bool
	ready   []*worker      // idle workers, the last to become idle last
	live    int            // worker goroutines
	pending sync.WaitGroup // jobs not yet finished
	running sync.WaitGroup // worker goroutines
	done    chan struct{}
}

// worker is one idle worker's hand: a job is put there while the worker
// is on ready, and only then (so it never blocks).
type worker struct{ jobs chan probeJob }

func newWorkers(idle time.Duration, exec func(probeJob)) *workers {
	return &workers{idle: idle, exec: exec, done: make(chan struct{})}
}

// do runs j on the worker idle the shortest time, or on a new one when none
// is. It reports false once the pool is closed.
func (w *workers) do(j probeJob) bool {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return false
	}
	w.pending.Add(1)
	if n := len(w.ready); n > 0 {
		wk := w.ready[n-1]
		w.ready[n-1] = nil
		w.ready = w.ready[:n-1]
		wk.jobs <- j
		w.mu.Unlock()
		return true
	}
	w.live++
	w.running.Add(1)
	w.mu.Unlock()
	go w.work(j)
	return true
}

// size is the number of worker goroutines.
func (w *workers) size() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.live
}

func (w *workers) work(j probeJob) {
	defer w.running.Done()
	wk := &worker{jobs: make(chan probeJob, 1)}
	t := time.NewTimer(w.idle)
	defer t.Stop()
	for {
		w.exec(j)
		w.pending.Done()
		j = probeJob{} // hold nothing while idle
		w.mu.Lock()
		if w.closed {
			w.live--
			w.mu.Unlock()
			return
		}
		w.ready = append(w.ready, wk)
		w.mu.Unlock()
		t.Reset(w.idle)
		select {
		case j = <-wk.jobs:
			continue
		case <-t.C:
		case <-w.done:
		}
		// leaving, unless a job was handed meanwhile
		w.mu.Lock()
		if i := slices.Index(w.ready, wk); i >= 0 {
			w.ready = slices.Delete(w.ready, i, i+1)
			w.live--
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
		j = <-wk.jobs
	}
}

// close refuses new jobs, waits for the accepted ones to finish (or for
// stop to close) and ends the idle workers.
func (w *workers) close(stop <-chan struct{}) bool {
	w.mu.Lock()
	already := w.closed
	w.closed = true
	w.mu.Unlock()
	if !already {
		finished := make(chan struct{})
		go func() { w.pending.Wait(); close(finished) }()
		select {
		case <-finished:
		case <-stop:
			return false
		}
		close(w.done)
	}
	w.running.Wait()
	return true
}
