package health

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// steppedBy is now with the wall clock stepped by d: the monotonic reading
// is the same.
func steppedBy(now Instant, d time.Duration) Instant {
	return Instant{Wall: now.Wall.Add(d), Mono: now.Mono}
}

// TestGraceIsMeasuredOnTheMonotonicClock: the grace of a VM that started
// 10 s before vigil learned of it ends 20 s later on the monotonic clock,
// whether the wall clock steps an hour forward or back in between; a
// started_at in the future (the VM manager's clock ahead) starts it now.
func TestGraceIsMeasuredOnTheMonotonicClock(t *testing.T) {
	p := tcpPolicy(func(p *Policy) { p.FailureThreshold = 1 }) // start_period 30 s
	for name, tc := range map[string]struct {
		startedAt time.Duration // from the registration's wall time
		step      time.Duration
		graceEnds time.Duration // on the monotonic clock, after the registration
	}{
		"no step":                {startedAt: -10 * time.Second, graceEnds: 20 * time.Second},
		"a step forward":         {startedAt: -10 * time.Second, step: time.Hour, graceEnds: 20 * time.Second},
		"a step back":            {startedAt: -10 * time.Second, step: -time.Hour, graceEnds: 20 * time.Second},
		"started in the future":  {startedAt: 2 * time.Minute, graceEnds: 30 * time.Second},
		"future, then a step":    {startedAt: 2 * time.Minute, step: -time.Hour, graceEnds: 30 * time.Second},
		"started long ago":       {startedAt: -time.Hour, graceEnds: 0},
		"long ago, step forward": {startedAt: -time.Hour, step: time.Hour, graceEnds: 0},
	} {
		t.Run(name, func(t *testing.T) {
			reg := Instant{Wall: t0, Mono: 5 * time.Minute} // any origin
			c := Config{Policy: p, Lifecycle: Running, StartedAt: t0.Add(tc.startedAt)}
			fail := func(after time.Duration) bool {
				var s State
				s.Configure(Config{}, c, reg)
				now := steppedBy(reg.Add(time.Second), tc.step) // the step, a second after the registration
				require.Equal(t, tc.graceEnds > time.Second, s.InGrace(p, now), "the step changes nothing")
				r := Result{Outcome: Failure, Reason: ReasonTimeout}
				_, changed := s.Observe(c, &r, steppedBy(reg.Add(after), tc.step))
				return changed
			}
			if tc.graceEnds > 0 {
				assert.False(t, fail(tc.graceEnds-time.Millisecond), "inside the grace: not counted")
			}
			assert.True(t, fail(tc.graceEnds), "the grace is over: counted, unhealthy at threshold 1")
		})
	}
}

// TestResumedStateKeepsItsRemainingGrace: a snapshot keeps wall times only.
// A vigil restarted (another monotonic origin) places the grace on its
// monotonic clock once, by the wall time then; a later step of the wall
// clock does not move it.
func TestResumedStateKeepsItsRemainingGrace(t *testing.T) {
	p := tcpPolicy(func(p *Policy) { p.FailureThreshold = 1 }) // start_period 30 s
	c := Config{Policy: p, Lifecycle: Running, StartedAt: t0}
	var s State
	s.Configure(Config{}, c, when(0))
	b, err := json.Marshal(s)
	require.NoError(t, err)

	resumeAt := Instant{Wall: t0.Add(10 * time.Second), Mono: 7 * time.Hour} // 20 s of grace left
	for _, step := range []time.Duration{0, time.Hour, -time.Hour} {
		var back State
		require.NoError(t, json.Unmarshal(b, &back))
		_, changed, fresh := back.Configure(c, c, resumeAt)
		require.False(t, changed || fresh, "resuming is no change")
		r := Result{Outcome: Failure, Reason: ReasonTimeout}
		_, changed = back.Observe(c, &r, steppedBy(resumeAt.Add(20*time.Second-time.Millisecond), step))
		assert.False(t, changed, "step %v: 20 s of grace were left at the restart", step)
		_, changed = back.Observe(c, &r, steppedBy(resumeAt.Add(20*time.Second), step))
		assert.True(t, changed, "step %v: and no more", step)
	}
}

// TestFlappingRestartsAndIncidentsIgnoreWallSteps: flapping's window, a
// restart's backoff and an incident's window are monotonic durations.
func TestFlappingRestartsAndIncidentsIgnoreWallSteps(t *testing.T) {
	window := FlapWindow(time.Second) // 10 s
	for _, step := range []time.Duration{time.Hour, -time.Hour} {
		var f Flap
		for i := range FlapChanges - 1 {
			require.False(t, f.Change(when(time.Duration(i)*time.Second), window))
		}
		// the sixth change within 10 s, after a step: still flapping
		assert.True(t, f.Change(steppedBy(when(5*time.Second), step), window), "step %v", step)
		later := steppedBy(when(14*time.Second), step)
		assert.Equal(t, 15*time.Second, f.SteadyAt(later, window).Mono, "step %v: steady 10 s after the last change", step)
		assert.False(t, f.Settle(later, window), "step %v: not yet steady", step)
		assert.True(t, f.Settle(steppedBy(when(15*time.Second), step), window), "step %v", step)

		p := &RestartPolicy{Policy: RestartOnUnhealthy, URL: "http://127.0.0.1:1/r", Backoff: 30 * time.Second,
			MaxBackoff: time.Minute, MaxAttempts: 5, StableAfter: time.Minute}
		var r RestartState
		attempt, wake := r.Decide(p, RestartInput{Status: StatusUnhealthy, Since: when(0), Now: when(0)})
		require.True(t, attempt)
		r.Pending = false
		attempt, wake2 := r.Decide(p, RestartInput{Status: StatusUnhealthy, Since: when(0), Now: steppedBy(when(29*time.Second), step)})
		assert.False(t, attempt, "step %v: still inside the backoff", step)
		assert.Equal(t, wake.Mono, wake2.Mono, "step %v: the backoff ends where it did", step)

		d := Incidents{Rules: IncidentRules{Fraction: 0.1, Min: 3, Window: 30 * time.Second}}
		_, opened, _ := d.Observe("a", true, 10, 1, when(0))
		require.False(t, opened)
		_, opened, _ = d.Observe("b", true, 10, 2, steppedBy(when(10*time.Second), step))
		require.False(t, opened)
		_, opened, _ = d.Observe("c", true, 10, 3, steppedBy(when(35*time.Second), step))
		assert.False(t, opened, "step %v: a is 35 s ago, outside the window", step)
		_, opened, _ = d.Observe("a", true, 10, 3, steppedBy(when(36*time.Second), step))
		assert.True(t, opened, "step %v: b, c and a within 26 s", step)
	}
}

// wallStepMachine drives the health core the way an actor does, with the
// wall clock stepped an hour forward or back now and then unless steady.
type wallStepMachine struct {
	steady bool
	s      State
	c      Config
	now    Instant
	starts int
	out    []decided
}

// decided is what the rules decided in a state, without the wall times.
type decided struct {
	Window              uint64
	Eval, Status        Status
	GraceOver           bool
	Successes, Failures int
	Attempts            int
	Blocked             string
	Flapping            bool
	WindowMono          time.Duration
	SinceMono           time.Duration
	NextMono            time.Duration
	FlapMono            [FlapChanges]time.Duration
	Attempt             bool
	Wake                time.Duration
}

var wallStepRestart = &RestartPolicy{Policy: RestartOnUnhealthy, URL: "http://127.0.0.1:1/r", Backoff: 2 * time.Second,
	MaxBackoff: 20 * time.Second, MaxAttempts: 3, StableAfter: 30 * time.Second, After: 5 * time.Second}

func (m *wallStepMachine) run(ops []byte) []decided {
	m.now = Instant{Wall: t0, Mono: time.Minute}
	m.c = Config{Policy: tcpPolicy(nil), Lifecycle: Running, StartedAt: t0.Add(-5 * time.Second)}
	m.s.Configure(Config{}, m.c, m.now)
	for i := 0; i+1 < len(ops); i += 2 {
		op, arg := ops[i], ops[i+1]
		var tr Transition
		var changed bool
		switch op % 6 {
		case 0, 1: // a probe result, some time later
			m.now = m.now.Add(time.Duration(arg%16) * 700 * time.Millisecond)
			r := Result{Outcome: []Outcome{Success, Failure, Failure, Skipped}[arg/16%4], Reason: ReasonTimeout, Start: m.now.Wall}
			tr, changed = m.s.Observe(m.c, &r, m.now)
		case 2: // the wall clock steps an hour forward or back
			if !m.steady {
				m.now.Wall = m.now.Wall.Add(time.Duration(int(arg%2)*2-1) * time.Hour)
			}
		case 3: // the VM started again a moment ago, by the (stepped) wall clock
			// a minute after the last event, so that no start is taken for
			// the one before (the nanoseconds: nor for one whole hours of
			// steps before)
			m.starts++
			m.now = m.now.Add(time.Minute)
			next := m.c
			next.StartedAt = m.now.Wall.Add(-time.Duration(arg%60)*time.Second - time.Duration(m.starts))
			tr, changed, _ = m.s.Configure(m.c, next, m.now)
			m.c = next
		case 4: // stopped or running again
			next := m.c
			next.Lifecycle = []Lifecycle{Running, Stopped}[arg%2]
			tr, changed, _ = m.s.Configure(m.c, next, m.now)
			m.c = next
		default: // time passes
			m.now = m.now.Add(time.Duration(arg) * 300 * time.Millisecond)
		}
		if changed && tr.Reason.Counts() && m.c.Lifecycle.Active() {
			m.s.FlapChange(m.now, FlapWindow(m.c.Policy.Interval))
		}
		m.s.FlapSettle(m.now, FlapWindow(m.c.Policy.Interval))
		r := m.s.RestartToChange()
		attempt, wake := r.Decide(wallStepRestart, RestartInput{Status: m.s.Status, Since: m.s.StatusSince(), Now: m.now})
		r.Pending = false
		var flapMono [FlapChanges]time.Duration
		if m.s.Flap != nil {
			flapMono = m.s.Flap.mono
		}
		m.out = append(m.out, decided{Window: m.s.Window, Eval: m.s.Eval, Status: m.s.Status, GraceOver: m.s.GraceOver,
			Successes: m.s.ConsecutiveSuccesses, Failures: m.s.ConsecutiveFailures, Attempts: r.Attempts,
			Blocked: r.Blocked, Flapping: m.s.Flapping(), WindowMono: m.s.windowMono, SinceMono: m.s.sinceMono,
			NextMono: r.nextMono, FlapMono: flapMono, Attempt: attempt, Wake: wake.Mono})
	}
	return m.out
}

// FuzzWallStepsDecideNothing drives the health core with probe results,
// restarts of the VM, lifecycle changes, time passing and wall clock steps
// of an hour either way, and again with the steps left out: every status,
// counter, grace, flapping and restart decision is the same.
func FuzzWallStepsDecideNothing(f *testing.F) {
	f.Add([]byte{1, 16, 2, 0, 1, 16, 1, 16, 5, 100, 1, 16, 2, 1, 1, 16, 1, 16, 1, 16})
	f.Add([]byte{0, 0, 2, 1, 1, 17, 1, 17, 1, 17, 5, 200, 2, 0, 0, 0, 1, 17, 0, 0, 1, 17, 0, 0})
	f.Add([]byte{3, 10, 1, 16, 2, 0, 1, 16, 1, 16, 1, 16, 5, 255, 5, 255, 4, 1, 2, 1, 4, 0, 1, 16})
	f.Add([]byte{1, 20, 2, 1, 0, 3, 1, 21, 0, 4, 2, 0, 1, 22, 0, 5, 1, 23, 0, 6, 1, 24, 2, 1, 5, 90})
	f.Fuzz(func(t *testing.T, ops []byte) {
		stepped := (&wallStepMachine{}).run(ops)
		steady := (&wallStepMachine{steady: true}).run(ops)
		require.Equal(t, steady, stepped)
	})
}
