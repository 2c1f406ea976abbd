package actors

import (
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
	due    time.Time // for the observer: start minus how late it was
	handed time.Time // when the actor handed it over (monotonic)
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
// its creation every time. A worker waits for its next job for idle, then
// exits, so an idle host keeps no goroutines.
//
// Concurrency contract: do and close may be called from any goroutine; do
// after close runs nothing.
type workers struct {
	jobs chan probeJob
	idle time.Duration
	exec func(probeJob)

	mu      sync.Mutex
	closed  bool
	pending sync.WaitGroup // jobs not yet finished
	running sync.WaitGroup // worker goroutines
	done    chan struct{}
}

func newWorkers(idle time.Duration, exec func(probeJob)) *workers {
	return &workers{jobs: make(chan probeJob), idle: idle, exec: exec, done: make(chan struct{})}
}

// do runs j on an idle worker, or on a new one when none is waiting. It
// reports false once the pool is closed.
func (w *workers) do(j probeJob) bool {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return false
	}
	w.pending.Add(1)
	w.mu.Unlock()
	select {
	case w.jobs <- j:
	default:
		w.running.Add(1)
		go w.work(j)
	}
	return true
}

func (w *workers) work(j probeJob) {
	defer w.running.Done()
	t := time.NewTimer(w.idle)
	defer t.Stop()
	for {
		w.exec(j)
		w.pending.Done()
		j = probeJob{} // hold nothing while idle
		select {
		case j = <-w.jobs:
			continue
		default:
		}
		t.Reset(w.idle)
		select {
		case j = <-w.jobs:
		case <-t.C:
			return
		case <-w.done:
			return
		}
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
