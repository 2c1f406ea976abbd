package actors

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// After a burst calls up many workers, a steady trickle of jobs, one at a
// time and more often than the idle time, is served by the worker idle the
// shortest time: the rest get nothing, reach their idle time and exit. (In
// turn, each would get a job within its idle time and the pool would stay
// at the burst's size.)
func TestWorkersTheBurstCalledUpLeaveUnderSteadyLoad(t *testing.T) {
	const idle, burst = 200 * time.Millisecond, 100
	var ran atomic.Int64
	hold := make(chan struct{})
	var held sync.WaitGroup
	w := newWorkers(idle, func(j probeJob) {
		ran.Add(1)
		if j.token == 1 {
			held.Done()
			<-hold
		}
	})
	held.Add(burst)
	for range burst {
		require.True(t, w.do(probeJob{token: 1}))
	}
	held.Wait()
	assert.Equal(t, burst, w.size(), "a worker for each job of the burst")
	close(hold)

	// a job about every millisecond for three idle times: each of the
	// burst's workers would get one every 100 ms or so, in turn
	trickled := int64(0)
	for end := time.Now().Add(3 * idle); time.Now().Before(end); trickled++ {
		require.True(t, w.do(probeJob{token: 2}))
		time.Sleep(time.Millisecond)
	}
	require.Greater(t, trickled, int64(2*burst), "the trickle outnumbered the burst's workers")
	assert.LessOrEqual(t, w.size(), 10, "the burst's workers left")

	require.True(t, w.close(closeWithin(t, 10*time.Second)))
	assert.Zero(t, w.size(), "closed: every worker gone")
	assert.False(t, w.do(probeJob{}), "closed: no more jobs")
	assert.Equal(t, int64(burst)+trickled, ran.Load(), "every job ran")
}

// closeWithin is a stop for workers.close that ends the wait after d: a
// lost job fails the test instead of hanging it.
func closeWithin(t *testing.T, d time.Duration) <-chan struct{} {
	t.Helper()
	stop := make(chan struct{})
	timer := time.AfterFunc(d, func() { close(stop) })
	t.Cleanup(func() { timer.Stop() })
	return stop
}

// A worker whose idle time ends as a job is handed to it runs the job.
func TestWorkersRaceOfIdleAndHandOffLosesNoJob(t *testing.T) {
	var ran atomic.Int64
	w := newWorkers(time.Microsecond, func(probeJob) { ran.Add(1) })
	const n = 20000
	for i := range n {
		require.True(t, w.do(probeJob{token: uint64(i)}))
		if i%7 == 0 {
			time.Sleep(time.Microsecond)
		}
	}
	require.True(t, w.close(closeWithin(t, 10*time.Second)), "every job finished")
	assert.EqualValues(t, n, ran.Load())
	assert.Zero(t, w.size())
}
