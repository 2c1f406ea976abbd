package health

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// fuzzOps reads a fuzzer's bytes as a sequence of (op, arg) pairs.
type fuzzOps []byte

func (o *fuzzOps) next() (op, arg byte, ok bool) {
	if len(*o) < 2 {
		return 0, 0, false
	}
	op, arg = (*o)[0], (*o)[1]
	*o = (*o)[2:]
	return op, arg, true
}

var fuzzLifecycles = []Lifecycle{Created, Initializing, Running, Paused, Shutdown, Standby, Stopped, Unknown}

var fuzzReasons = []Reason{ReasonTimeout, ReasonConnectionRefused, ReasonAgentUnreachable, ReasonStatusMismatch,
	ReasonExitNonzero, ReasonExpectMismatch, Reason("custom_reason"), ReasonIOError}

// fuzzPolicy is a valid policy chosen by arg: thresholds 1-5, start period
// 0-35 s, interval 1-8 s; nil (disabled) for one value in eight.
func fuzzPolicy(arg byte) *Policy {
	if arg%8 == 7 {
		return nil
	}
	ft, st := int(arg%5)+1, int(arg/5%5)+1
	spec := PolicySpec{TCP: &TCPSpec{Port: 1}, FailureThreshold: &ft, SuccessThreshold: &st,
		StartPeriod: strconv.Itoa(int(arg/25%8)*5) + "s", Interval: strconv.Itoa(int(arg%8)+1) + "s"}
	p, err := spec.Normalize()
	if err != nil {
		panic(err)
	}
	return &p
}

var fuzzRestart = &RestartPolicy{Policy: RestartOnUnhealthy, URL: "http://127.0.0.1:1/restart", Backoff: 2 * time.Second,
	MaxBackoff: 20 * time.Second, MaxAttempts: 3, StableAfter: 30 * time.Second, After: 5 * time.Second}

// fuzzMachine is one run of the health core over a fuzzer's events, the way
// an instance actor drives it: configuration changes and probe results at
// times that only move forward on the monotonic clock while the wall clock
// may be stepped either way, the flapping detector fed with the transitions
// probes make, and the restart rules stepped after each event.
type fuzzMachine struct {
	t   *testing.T
	s   State
	c   Config
	now Instant
	// steps: the wall clock steps when the events say so (else those
	// events are ignored); stepped: an event said so, and from then on
	// no started_at is given (one, a wall time from outside, is placed by
	// its distance on the wall clock, which a step does change)
	steps, stepped bool
	// the window's failures outside the grace and successes, counted here
	// independently of the state
	failures, successes int
	// the end of the last restart attempt's backoff
	backoffUntil Instant
	states       []State
	decisions    []decision
}

// decision is what the rules decided after one event, without the times
// they were decided at.
type decision struct {
	Status, Eval        Status
	Window              uint64
	GraceOver           bool
	Successes, Failures int
	Flapping            bool
	RestartAttempts     int
	RestartBlocked      string
	HistoryLen          int
	LastError           string
}

func (m *fuzzMachine) decided() decision {
	s := &m.s
	return decision{Status: s.Status, Eval: s.Eval, Window: s.Window, GraceOver: s.GraceOver, Successes: s.ConsecutiveSuccesses,
		Failures: s.ConsecutiveFailures, Flapping: s.Flapping(), RestartAttempts: s.Restarts().Attempts,
		RestartBlocked: s.Restarts().Blocked, HistoryLen: s.History.Len(), LastError: s.LastError}
}

func (m *fuzzMachine) run(ops fuzzOps) {
	t := m.t
	m.now = Instant{Wall: t0, Mono: 5 * time.Second}
	m.c = Config{Policy: fuzzPolicy(0), Lifecycle: Running, StartedAt: t0}
	tr, changed, fresh := m.s.Configure(Config{}, m.c, m.now)
	require.True(t, changed && fresh && tr.From == StatusUnknown && tr.To == StatusStarting && tr.Reason == ReasonRegistered, "%+v", tr)
	m.check(State{}, tr, changed, fresh, false)
	for {
		op, arg, ok := ops.next()
		if !ok {
			return
		}
		prev := m.s
		var r *Result
		switch op % 8 {
		case 0, 1, 2: // a probe result, after some time
			m.now = m.now.Add(time.Duration(arg%16) * 500 * time.Millisecond)
			r = &Result{Outcome: Failure, Reason: fuzzReasons[int(arg/16)%len(fuzzReasons)], Start: m.now.Wall,
				Message: strings.Repeat("é", int(arg/16)*40)}
			switch {
			case op%8 == 0:
				r = &Result{Outcome: Success, Start: m.now.Wall, Duration: Duration(arg) * Duration(time.Millisecond)}
			case arg%16 == 15:
				r = &Result{Outcome: Skipped, Reason: ReasonBudgetFull}
			}
		case 3: // a lifecycle change
			m.now = m.now.Add(time.Duration(arg%4) * time.Second)
			next := m.c
			next.Lifecycle = fuzzLifecycles[int(arg/4)%len(fuzzLifecycles)]
			tr, changed, fresh = m.s.Configure(m.c, next, m.now)
			m.c = next
		case 4: // a policy change (or the policy removed)
			next := m.c
			next.Policy = fuzzPolicy(arg)
			tr, changed, fresh = m.s.Configure(m.c, next, m.now)
			m.c = next
		case 5: // a new started_at, up to a minute ago, or in the future
			if m.stepped {
				continue
			}
			next := m.c
			next.StartedAt = m.now.Wall.Add(time.Duration(int(arg)-200) * time.Second / 4)
			tr, changed, fresh = m.s.Configure(m.c, next, m.now)
			m.c = next
		case 6: // time passes: up to an hour
			m.now = m.now.Add(time.Duration(arg) * time.Duration(arg) * 55 * time.Millisecond)
			continue
		default: // the wall clock is stepped, up to an hour either way
			m.stepped = true
			if m.steps {
				m.now.Wall = m.now.Wall.Add(time.Duration(int(arg)-128) * 28 * time.Second)
			}
			continue
		}
		if r != nil {
			tr, changed = m.s.Observe(m.c, r, m.now)
			fresh = false
		}
		if r != nil && m.c.Policy.Enabled() && m.c.Lifecycle.Active() {
			m.checkObserved(prev, r)
		}
		m.check(prev, tr, changed, fresh, r != nil)
		if changed && tr.Reason.Counts() && m.c.Policy.Enabled() && m.c.Lifecycle.Active() {
			m.s.FlapChange(m.now, FlapWindow(m.c.Policy.Interval))
		}
		if m.c.Policy.Enabled() {
			m.s.FlapSettle(m.now, FlapWindow(m.c.Policy.Interval))
		}
		m.decideRestart(arg)
		m.states = append(m.states, m.s.Clone())
		m.decisions = append(m.decisions, m.decided())
	}
}

// check holds after every event.
func (m *fuzzMachine) check(prev State, tr Transition, changed, fresh, observed bool) {
	t, s, c := m.t, &m.s, m.c
	require.True(t, s.Status.Valid(), "status %q is one of the statuses", s.Status)
	require.Contains(t, []Status{"", StatusStarting, StatusHealthy, StatusUnhealthy}, s.Eval)
	require.Equal(t, Mask(c, s.Eval), s.Status, "the shown status is the evaluation masked")
	require.GreaterOrEqual(t, s.ConsecutiveFailures, 0)
	require.GreaterOrEqual(t, s.ConsecutiveSuccesses, 0)
	require.False(t, s.ConsecutiveFailures > 0 && s.ConsecutiveSuccesses > 0, "one run at a time: %+v", s)
	require.LessOrEqual(t, s.History.Len(), HistorySize)
	require.LessOrEqual(t, len(s.LastError), MaxLastError)
	require.True(t, utf8.ValidString(s.LastError))
	require.GreaterOrEqual(t, s.Window, prev.Window)
	if changed {
		require.NotEqual(t, tr.From, tr.To)
		want := prev.Status
		if want == "" {
			want = StatusUnknown
		}
		require.Equal(t, want, tr.From)
		require.Equal(t, s.Status, tr.To)
		require.Equal(t, m.now.Wall, tr.At)
		require.Equal(t, m.now.Wall, s.Since)
		if !observed || tr.To != StatusHealthy {
			require.NotEmpty(t, tr.Reason, "a transition not to healthy says why")
		}
	} else {
		require.Equal(t, prev.Status, s.Status, "no transition, no change of status")
		require.Equal(t, prev.Since, s.Since)
	}
	if fresh {
		require.Equal(t, prev.Window+1, s.Window)
		require.Equal(t, StatusStarting, s.Eval)
		require.Zero(t, s.ConsecutiveFailures)
		require.Zero(t, s.ConsecutiveSuccesses)
		m.failures, m.successes = 0, 0
	} else {
		require.Equal(t, prev.Window, s.Window, "the window changes only when it is fresh")
	}
	if c.Policy.Enabled() {
		pr := s.Progress(c.Policy)
		require.LessOrEqual(t, int(pr.Failures), c.Policy.FailureThreshold)
		require.LessOrEqual(t, int(pr.Successes), c.Policy.SuccessThreshold)
	} else {
		want, _ := json.Marshal(State{Window: s.Window, Status: s.Status, Since: s.Since})
		got, _ := json.Marshal(s)
		require.JSONEq(t, string(want), string(got), "no policy, no evidence")
	}
	// the evaluation moves only at a threshold, with a fresh window, or
	// when the policy is gone
	if s.Eval != prev.Eval && !fresh {
		switch {
		case s.Eval == "":
			require.False(t, c.Policy.Enabled(), "the evaluation is forgotten only with the policy")
		case !observed:
			t.Fatalf("a configuration change moved the evaluation from %q to %q", prev.Eval, s.Eval)
		case s.Eval == StatusHealthy:
			require.GreaterOrEqual(t, s.ConsecutiveSuccesses, c.Policy.SuccessThreshold)
			require.GreaterOrEqual(t, m.successes, c.Policy.SuccessThreshold)
		case s.Eval == StatusUnhealthy:
			require.GreaterOrEqual(t, s.ConsecutiveFailures, c.Policy.FailureThreshold)
			require.GreaterOrEqual(t, m.failures, c.Policy.FailureThreshold,
				"unhealthy only after failure_threshold failures outside the start period")
		default:
			t.Fatalf("the evaluation moved from %q to %q", prev.Eval, s.Eval)
		}
	}
	if changed && tr.To == StatusUnhealthy && !observed {
		require.Equal(t, StatusUnhealthy, prev.Eval, "a configuration change only reveals an unhealthy evaluation")
	}
}

// checkObserved holds after a result applied under a policy that probes.
func (m *fuzzMachine) checkObserved(prev State, r *Result) {
	t, s, p := m.t, &m.s, m.c.Policy
	last, ok := s.History.Last()
	require.True(t, ok)
	require.Equal(t, *r, last, "the history keeps the result as applied")
	switch {
	case r.Outcome == Skipped:
		require.Equal(t, prev.ConsecutiveFailures, s.ConsecutiveFailures, "a skip counts nothing")
		require.Equal(t, prev.ConsecutiveSuccesses, s.ConsecutiveSuccesses)
		require.Equal(t, prev.LastCheckedAt, s.LastCheckedAt)
		require.Equal(t, prev.Eval, s.Eval)
	case r.Outcome == Success:
		m.successes++
		m.failures = 0
		require.Zero(t, s.ConsecutiveFailures)
		require.Equal(t, saturatingInc(prev.ConsecutiveSuccesses), s.ConsecutiveSuccesses)
		require.Equal(t, m.now.Wall, s.LastSuccessAt)
		require.Empty(t, s.LastError)
	case prev.InGrace(p, m.now):
		m.successes = 0
		require.Zero(t, s.ConsecutiveSuccesses)
		require.Equal(t, prev.ConsecutiveFailures, s.ConsecutiveFailures, "a failure inside the grace does not count")
		require.Equal(t, prev.Eval, s.Eval)
		require.Equal(t, m.now.Wall, s.LastFailureAt)
	default:
		m.failures++
		m.successes = 0
		require.Zero(t, s.ConsecutiveSuccesses)
		require.Equal(t, saturatingInc(prev.ConsecutiveFailures), s.ConsecutiveFailures)
		require.NotEmpty(t, s.LastError, "a failure leaves its error")
		require.True(t, s.GraceOver || s.Eval != StatusStarting, "a counted failure ends the grace")
	}
	if r.Outcome != Skipped {
		require.Equal(t, m.now.Wall, s.LastCheckedAt)
	}
}

// decideRestart steps the restart rules as an actor with a restart policy
// does, and checks what an attempt needs.
func (m *fuzzMachine) decideRestart(arg byte) {
	t, r := m.t, m.s.RestartToChange()
	before := *r
	in := RestartInput{Status: m.s.Status, Since: m.s.StatusSince(), Now: m.now, HoldDown: time.Duration(arg%4) * time.Second,
		Reason: ReasonTimeout, LastError: m.s.LastError}
	if arg%32 == 31 {
		in.Held = BlockedIncident
	}
	if before.NextAttemptAt.IsZero() {
		m.backoffUntil = Instant{} // no attempt yet, or the count started again
	}
	attempt, wake := r.Decide(fuzzRestart, in)
	require.GreaterOrEqual(t, r.Attempts, 0)
	require.LessOrEqual(t, r.Attempts, fuzzRestart.MaxAttempts)
	require.True(t, wake.IsZero() || wake.Mono > m.now.Mono, "the next look is later, or never")
	if attempt {
		require.Equal(t, StatusUnhealthy, m.s.Status, "a restart only of an unhealthy instance")
		require.Empty(t, in.Held)
		require.GreaterOrEqual(t, m.now.Mono, in.Since.Mono+max(fuzzRestart.After, in.HoldDown), "not before after")
		if !before.NextAttemptAt.IsZero() {
			require.GreaterOrEqual(t, m.now.Mono, m.backoffUntil.Mono, "not inside the backoff")
		}
		m.backoffUntil = wake
		require.Equal(t, before.Attempts+1, r.Attempts)
		require.True(t, r.Pending)
		r.Pending = false // delivered
	} else {
		require.LessOrEqual(t, r.Attempts, before.Attempts, "no attempt, none counted")
	}
	if m.s.Flap != nil {
		require.GreaterOrEqual(t, m.s.Flap.Next, 0)
		require.Less(t, m.s.Flap.Next, FlapChanges)
	}
}

// FuzzStateMachine drives the health core with arbitrary sequences of probe
// results, lifecycle and policy changes, new start times and time passing,
// and checks its invariants after every event: a status among the defined
// ones and the one Mask shows; counters never negative and never both
// running; a transition exactly when the shown status changes; the window
// fresh only when Configure says so; the evaluation unhealthy only after
// failure_threshold consecutive failures outside the start period and
// healthy only after success_threshold successes; a failure inside the
// grace counted as nothing; restarts only of an unhealthy instance, after
// the hold-down and the backoff, and at most max_attempts; the same events
// giving the same states; and the wall clock stepped back or forth changing
// no decision (the same events without the steps decide the same).
func FuzzStateMachine(f *testing.F) {
	f.Add([]byte{0, 1, 1, 2, 2, 3, 0, 0, 1, 0, 6, 200, 1, 1, 1, 1, 1, 1})
	f.Add([]byte{6, 255, 1, 0, 1, 0, 1, 0, 1, 0, 6, 100, 1, 0, 3, 8, 3, 4, 0, 0})
	f.Add([]byte{4, 7, 0, 0, 4, 0, 1, 1, 3, 20, 3, 8, 5, 250, 1, 0, 1, 0, 1, 0, 6, 255})
	f.Add([]byte{3, 4, 2, 34, 2, 34, 3, 8, 1, 15, 0, 0})
	f.Add([]byte{6, 250, 1, 0, 1, 0, 1, 0, 6, 30, 7, 30, 7, 90, 0, 0, 1, 0, 1, 0, 1, 0, 6, 90, 1, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		m1 := fuzzMachine{t: t, steps: true}
		m1.run(fuzzOps(ops))
		m2 := fuzzMachine{t: t, steps: true}
		m2.run(fuzzOps(ops))
		require.Equal(t, m1.states, m2.states, "deterministic")
		m3 := fuzzMachine{t: t}
		m3.run(fuzzOps(ops))
		require.Equal(t, m3.decisions, m1.decisions, "a step of the wall clock changes no decision")
	})
}

// FuzzStateJSON checks the decoder of a stored state (a snapshot's
// "state", read back after a restart or handed over by another node): any
// JSON is refused with an error naming the field, or decodes to a state the
// health core can drive — its status one of the statuses, counters never
// negative, the flapping ring's position inside the ring — and whose JSON
// is a fixed point.
func FuzzStateJSON(f *testing.F) {
	var s State
	c := Config{Policy: fuzzPolicy(3), Lifecycle: Running, StartedAt: t0}
	start := Instant{Wall: t0, Mono: time.Second}
	s.Configure(Config{}, c, start)
	for i := range 12 {
		now := start.Add(time.Duration(i) * time.Minute)
		r := Result{Outcome: []Outcome{Failure, Success}[i%2], Reason: ReasonTimeout, Message: "m", Start: now.Wall}
		if tr, ok := s.Observe(c, &r, now); ok && tr.Reason.Counts() {
			s.FlapChange(now, time.Hour)
		}
	}
	b, err := json.Marshal(s)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"flap":{"next":6}}`))
	f.Add([]byte(`{"flap":{"next":-1,"changes":[1,2,3,4,5,6]}}`))
	f.Add([]byte(`{"status":"bogus","eval":"unknown"}`))
	f.Add([]byte(`{"consecutive_failures":-3,"restart":{"attempts":-1}}`))
	f.Add([]byte(`{"history":[{"outcome":"failure"}],"window":18446744073709551615}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s State
		if err := json.Unmarshal(b, &s); err != nil {
			return
		}
		require.True(t, s.Status == "" || s.Status.Valid(), "status %q", s.Status)
		require.Contains(t, []Status{"", StatusStarting, StatusHealthy, StatusUnhealthy}, s.Eval)
		require.GreaterOrEqual(t, s.ConsecutiveFailures, 0)
		require.GreaterOrEqual(t, s.ConsecutiveSuccesses, 0)
		require.GreaterOrEqual(t, s.Restarts().Attempts, 0)
		if s.Flap != nil {
			require.GreaterOrEqual(t, s.Flap.Next, 0)
			require.Less(t, s.Flap.Next, FlapChanges)
		}

		b1, err := json.Marshal(s)
		require.NoError(t, err)
		var s2 State
		require.NoError(t, json.Unmarshal(b1, &s2), "%s", b1)
		b2, err := json.Marshal(s2)
		require.NoError(t, err)
		require.Equal(t, string(b1), string(b2))

		// resumed the way an actor resumes a snapshot: driving it must hold
		// the machine's invariants
		c := Config{Policy: fuzzPolicy(b1[len(b1)/2]), Lifecycle: Running, StartedAt: t0}
		now := Instant{Wall: at(time.Hour), Mono: time.Minute}
		s.Configure(Config{Policy: c.Policy, Lifecycle: Running}, c, now)
		for i := range 8 {
			r := Result{Outcome: []Outcome{Failure, Success, Failure, Skipped}[i%4]}
			now = now.Add(time.Second)
			if tr, ok := s.Observe(c, &r, now); ok && tr.Reason.Counts() {
				s.FlapChange(now, time.Minute)
			}
			s.FlapSettle(now, time.Minute)
			s.FlapSteadyAt(now, time.Minute)
			before := s.Restarts().Attempts
			if attempt, _ := s.RestartToChange().Decide(fuzzRestart, RestartInput{Status: s.Status, Since: s.StatusSince(), Now: now}); attempt {
				require.LessOrEqual(t, s.Restart.Attempts, fuzzRestart.MaxAttempts, "an attempt only within max_attempts")
			} else {
				require.LessOrEqual(t, s.Restart.Attempts, before)
			}
			require.True(t, s.Status.Valid())
			require.GreaterOrEqual(t, s.ConsecutiveFailures, 0)
			require.GreaterOrEqual(t, s.ConsecutiveSuccesses, 0)
		}
		v := s.View(now.Wall, true)
		require.GreaterOrEqual(t, v.ConsecutiveFailures, 0)
	})
}
