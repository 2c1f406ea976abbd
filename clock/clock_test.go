package clock

import (
	"container/heap"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFakeRunsTimersInOrder(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := NewFake(t0)
	var got []time.Duration
	f.AfterFunc(3*time.Second, func() { got = append(got, f.Now().Sub(t0)) })
	f.AfterFunc(time.Second, func() { got = append(got, f.Now().Sub(t0)) })
	stopped := f.AfterFunc(2*time.Second, func() { t.Error("stopped timer ran") })
	assert.True(t, stopped.Stop())
	assert.Equal(t, 2, f.Pending())
	f.Advance(2 * time.Second)
	assert.Equal(t, []time.Duration{time.Second}, got)
	f.Advance(5 * time.Second)
	assert.Equal(t, []time.Duration{time.Second, 3 * time.Second}, got)
	assert.Equal(t, t0.Add(7*time.Second), f.Now())
	assert.Zero(t, f.Pending())
}

func TestRealClock(t *testing.T) {
	done := make(chan struct{})
	m := Real.Mono()
	Real.AfterFunc(time.Millisecond, func() { close(done) })
	<-done
	assert.WithinDuration(t, time.Now(), Real.Now(), time.Second)
	assert.GreaterOrEqual(t, Real.Mono()-m, time.Millisecond, "the monotonic reading moves with time")
}

// TestFakeStepMovesTheWallClockAlone: Step moves Now and nothing else, in
// either direction; timers fall due on the monotonic clock, which Advance
// moves with the wall clock.
func TestFakeStepMovesTheWallClockAlone(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := NewFake(t0)
	var fired []time.Duration
	f.AfterFunc(10*time.Second, func() { fired = append(fired, f.Mono()) })
	f.AfterFunc(20*time.Second, func() { fired = append(fired, f.Mono()) })

	f.Step(time.Hour)
	assert.Equal(t, t0.Add(time.Hour), f.Now())
	assert.Zero(t, f.Mono())
	assert.Empty(t, fired, "a step forward fires nothing")
	f.Advance(10 * time.Second)
	assert.Equal(t, []time.Duration{10 * time.Second}, fired, "due after 10 s of monotonic time")
	assert.Equal(t, t0.Add(time.Hour+10*time.Second), f.Now())

	f.Step(-2 * time.Hour)
	assert.Equal(t, t0.Add(-time.Hour+10*time.Second), f.Now())
	assert.Equal(t, 10*time.Second, f.Mono())
	f.Advance(10 * time.Second)
	assert.Equal(t, []time.Duration{10 * time.Second, 20 * time.Second}, fired, "a step back holds nothing back")
	assert.Equal(t, t0.Add(-time.Hour+20*time.Second), f.Now())
	assert.Zero(t, f.Pending())
}

func TestSharedFiresInOrderAndStops(t *testing.T) {
	s := NewShared()
	defer s.Close()
	var mu sync.Mutex
	var order []int
	done := make(chan struct{})
	// within a slot or two: timers of one slot fire in due order too
	for i, d := range []time.Duration{30, 10, 20, 40} {
		s.AfterFunc(d*time.Millisecond, func() {
			mu.Lock()
			defer mu.Unlock()
			order = append(order, i)
			if len(order) == 3 {
				close(done)
			}
		})
	}
	stopped := s.AfterFunc(25*time.Millisecond, func() { t.Error("a stopped timer fired") })
	assert.True(t, stopped.Stop())
	assert.False(t, stopped.Stop(), "only once")
	began := time.Now()
	<-done
	assert.GreaterOrEqual(t, time.Since(began), 30*time.Millisecond-Slack)
	mu.Lock()
	assert.Equal(t, []int{1, 2, 0}, order[:3], "the last may share the third's slot")
	mu.Unlock()

	// an earlier timer added while the goroutine waits for a later one
	fired := make(chan time.Time, 1)
	s.AfterFunc(time.Hour, func() {})
	began = time.Now()
	s.AfterFunc(5*time.Millisecond, func() { fired <- time.Now() })
	at := <-fired
	assert.Less(t, at.Sub(began), time.Second)
}

func TestSharedManyTimers(t *testing.T) {
	s := NewShared()
	defer s.Close()
	var wg sync.WaitGroup
	var stops []Timer
	for i := range 10_000 {
		d := time.Duration(i%50) * time.Millisecond
		if i%4 == 0 {
			stops = append(stops, s.AfterFunc(d+time.Second, func() { t.Error("stopped timer fired") }))
			continue
		}
		wg.Add(1)
		s.AfterFunc(d, wg.Done)
	}
	for _, st := range stops {
		assert.True(t, st.Stop())
	}
	wg.Wait()
}

func TestFakeReset(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	n := 0
	tm := f.AfterFunc(time.Second, func() { n++ })
	assert.True(t, tm.Reset(3*time.Second), "pending")
	f.Advance(2 * time.Second)
	assert.Equal(t, 0, n, "moved later")
	f.Advance(time.Second)
	assert.Equal(t, 1, n)
	assert.False(t, tm.Reset(time.Second), "fired already")
	f.Advance(time.Second)
	assert.Equal(t, 2, n, "fires again after a reset")
	assert.Equal(t, 0, f.Pending())
}

func TestSharedReset(t *testing.T) {
	s := NewShared()
	defer s.Close()
	fired := make(chan time.Time, 4)
	tm := s.AfterFunc(time.Hour, func() { fired <- time.Now() })
	began := time.Now()
	assert.True(t, tm.Reset(5*time.Millisecond), "pending")
	at := <-fired
	assert.Less(t, at.Sub(began), time.Second, "moved earlier")
	assert.False(t, tm.Reset(5*time.Millisecond), "fired already")
	<-fired
	tm.Reset(time.Hour)
	assert.True(t, tm.Stop())
	select {
	case <-fired:
		t.Fatal("stopped timer fired")
	case <-time.After(20 * time.Millisecond):
	}
}

func TestSharedWheel(t *testing.T) {
	s := NewShared()
	defer s.Close()
	// beyond the wheel's span: in the heap, moved into the wheel later
	far := s.AfterFunc(s.span()+time.Hour, func() { t.Error("far timer fired") })
	// set after the goroutine has slept a while with nothing due soon
	time.Sleep(30 * time.Millisecond)
	fired := make(chan int, 8)
	s.AfterFunc(5*time.Millisecond, func() { fired <- 1 })
	select {
	case <-fired:
	case <-time.After(5 * time.Second):
		t.Fatal("a timer set while the clock slept did not fire")
	}
	// moved from the heap into the wheel and fired
	s.mu.Lock()
	moved := &sharedTimer{s: s, w: funcWaker(func() { fired <- 2 }), slot: idle, index: -1, at: s.mono() - int64(time.Millisecond)}
	heap.Push(&s.later, moved)
	moved.slot = inHeap
	s.mu.Unlock()
	s.poke()
	select {
	case n := <-fired:
		assert.Equal(t, 2, n)
	case <-time.After(5 * time.Second):
		t.Fatal("a heap timer was not moved into the wheel")
	}
	assert.True(t, far.Stop(), "the far timer was pending in the heap")
	// many timers in one slot and in many slots, some stopped, some of those
	// set again: each fires exactly once or is stopped for good
	var wg sync.WaitGroup
	for i := range 2000 {
		wg.Add(1)
		tm := s.AfterFunc(time.Duration(i%7)*time.Millisecond, wg.Done)
		if i%3 == 0 && tm.Stop() {
			if i%2 == 0 {
				tm.Reset(time.Duration(i%11) * time.Millisecond)
			} else {
				wg.Done()
			}
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("timers did not all fire")
	}
}

// TestSharedTakeBeyondTheSpan drives the wheel by hand: a timer due beyond
// its span, with nothing else pending, sets the wait to its due time, moves
// into the wheel as time passes, and fires.
func TestSharedTakeBeyondTheSpan(t *testing.T) {
	s := newShared(wheelSlots)
	now := s.mono()
	s.fired = tick(now) - 1
	wheelSpan := s.span()
	fired := false
	far := &sharedTimer{s: s, w: funcWaker(func() { fired = true }), slot: idle, index: -1, at: now + int64(wheelSpan) + int64(4*time.Second)}
	s.add(far)
	require.Equal(t, inHeap, far.slot)
	due, wait := s.take(now, nil)
	assert.Empty(t, due)
	assert.LessOrEqual(t, wait, wheelSpan+4*time.Second+2*Slack, "wakes by the heap's first timer at the latest")
	assert.Greater(t, wait, wheelSpan/2, "not an hour, not at once")
	due, _ = s.take(now+int64(wheelSpan), nil)
	assert.Empty(t, due, "not yet due")
	assert.GreaterOrEqual(t, far.slot, 0, "moved into the wheel")
	due, wait = s.take(far.at, nil)
	require.Len(t, due, 1)
	due[0].w.Wake()
	assert.True(t, fired)
	assert.Equal(t, time.Hour, wait, "nothing left")
	assert.Equal(t, int64(math.MaxInt64), s.wakeAt, "any timer set wakes the goroutine")
}

// TestSharedRunsPeriodicTimersBeyondItsSpan runs the clock's goroutine with a
// 64 ms wheel and timers that, like actors, set themselves again each time
// they fire: a short one that stops, then only ones beyond the span (through
// the heap), with the wheel empty between them. Every one keeps firing on
// time.
func TestSharedRunsPeriodicTimersBeyondItsSpan(t *testing.T) {
	s := newShared(64)
	go s.run()
	defer s.Close()
	periods := []time.Duration{5 * time.Millisecond, 90 * time.Millisecond, 150 * time.Millisecond}
	var mu sync.Mutex
	fires := make([][]time.Time, len(periods))
	for i, p := range periods {
		var tm Timer
		tm = s.AfterFunc(time.Hour, func() {
			mu.Lock()
			fires[i] = append(fires[i], time.Now())
			n := len(fires[i])
			mu.Unlock()
			if i == 0 && n == 3 {
				return // the short one stops: the long ones are left alone
			}
			tm.Reset(p)
		})
		tm.Reset(p) // set here, so the callback's tm is assigned before it runs
	}
	time.Sleep(time.Second)
	mu.Lock()
	defer mu.Unlock()
	assert.Len(t, fires[0], 3)
	for i, p := range periods[1:] {
		got := fires[i+1]
		require.GreaterOrEqual(t, len(got), int(time.Second/p)-2, "period %v keeps firing", p)
		for j := 1; j < len(got); j++ {
			gap := got[j].Sub(got[j-1])
			assert.Greater(t, gap, p-2*Slack, "period %v: not early", p)
			assert.Less(t, gap, p+200*time.Millisecond, "period %v: not stalled", p)
		}
	}
}

// steppedWall is a wall clock that a test steps: the system's, plus an
// offset.
type steppedWall struct{ offset atomic.Int64 }

func (w *steppedWall) now() time.Time       { return time.Now().Add(time.Duration(w.offset.Load())) }
func (w *steppedWall) step(d time.Duration) { w.offset.Add(int64(d)) }

// TestSharedIgnoresWallSteps runs periodic timers, as actors keep them, on a
// shared clock whose wall clock steps an hour forward and then two hours
// back: no timer fires early or all at once at the step forward, none is
// held back at the step back, and Now shows each step.
func TestSharedIgnoresWallSteps(t *testing.T) {
	var wall steppedWall
	s := newShared(64) // a 1.6 s span: some periods go through the heap
	s.wall = wall.now
	go s.run()
	defer s.Close()
	periods := []time.Duration{50 * time.Millisecond, 90 * time.Millisecond, 150 * time.Millisecond}
	var mu sync.Mutex
	fires := make([][]time.Duration, len(periods))
	began := time.Now()
	for i, p := range periods {
		var tm Timer
		tm = s.AfterFunc(time.Hour, func() {
			mu.Lock()
			fires[i] = append(fires[i], time.Since(began))
			mu.Unlock()
			tm.Reset(p)
		})
		tm.Reset(p)
	}
	time.Sleep(300 * time.Millisecond)
	wall.step(time.Hour)
	assert.WithinDuration(t, time.Now().Add(time.Hour), s.Now(), time.Second, "Now shows the step")
	time.Sleep(300 * time.Millisecond)
	wall.step(-2 * time.Hour)
	assert.WithinDuration(t, time.Now().Add(-time.Hour), s.Now(), time.Second, "Now shows the step")
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	for i, p := range periods {
		got := fires[i]
		// a timer set again as it fires is due in a later slot: p to p+Slack apart
		require.GreaterOrEqual(t, len(got), int(900*time.Millisecond/(p+Slack))-2, "period %v keeps firing", p)
		assert.LessOrEqual(t, len(got), int(900*time.Millisecond/(p-Slack))+1, "period %v: no burst", p)
		for j := 1; j < len(got); j++ {
			gap := got[j] - got[j-1]
			assert.Greater(t, gap, p-2*Slack, "period %v: not early", p)
			assert.Less(t, gap, p+200*time.Millisecond, "period %v: not held back", p)
		}
	}
}
