package health

import (
	"math"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

// when is t0+d on both clocks: a monotonic clock that read 0 at t0.
func when(d time.Duration) Instant { return Instant{Wall: t0.Add(d), Mono: d} }

func tcpPolicy(mod func(*Policy)) *Policy {
	p, err := PolicySpec{TCP: &TCPSpec{Port: 1}}.Normalize()
	if err != nil {
		panic(err)
	}
	if mod != nil {
		mod(&p)
	}
	return &p
}

// step is one event of a scenario: a probe outcome or a configuration change.
type step struct {
	at      time.Duration
	outcome Outcome // probe result when non-empty
	reason  Reason
	config  *Config // configuration change when non-nil
	want    Status
	wantTr  bool
	wantS   int // consecutive successes after the step
	wantF   int // consecutive failures after the step
	fresh   bool
}

func run(t *testing.T, initial Config, steps []step) *State {
	t.Helper()
	var s State
	_, _, fresh := s.Configure(Config{}, initial, when(0))
	require.Equal(t, initial.Policy.Enabled() && initial.Lifecycle.Active(), fresh)
	cur := initial
	for i, st := range steps {
		now := when(st.at)
		var changed, fresh bool
		if st.config != nil {
			_, changed, fresh = s.Configure(cur, *st.config, now)
			cur = *st.config
			assert.Equal(t, st.fresh, fresh, "step %d: fresh window", i)
		} else {
			r := Result{Outcome: st.outcome, Reason: st.reason, Message: string(st.reason), Start: now.Wall}
			_, changed = s.Observe(cur, &r, now)
		}
		assert.Equal(t, st.want, s.Status, "step %d: status", i)
		assert.Equal(t, st.wantTr, changed, "step %d: transition", i)
		assert.Equal(t, st.wantS, s.ConsecutiveSuccesses, "step %d: successes", i)
		assert.Equal(t, st.wantF, s.ConsecutiveFailures, "step %d: failures", i)
	}
	return &s
}

func TestTransitions(t *testing.T) {
	p := tcpPolicy(nil) // fail 3, success 1, start_period 30s
	running := Config{Policy: p, Lifecycle: Running, StartedAt: t0}
	p2 := tcpPolicy(func(p *Policy) { p.SuccessThreshold = 2; p.StartPeriod = 0 })
	cases := map[string]struct {
		initial Config
		steps   []step
	}{
		"success makes healthy at threshold 1": {running, []step{
			{at: time.Second, outcome: Success, want: StatusHealthy, wantTr: true, wantS: 1},
			{at: 11 * time.Second, outcome: Success, want: StatusHealthy, wantS: 2},
		}},
		"failures inside grace are recorded, not counted": {running, []step{
			{at: 1 * time.Second, outcome: Failure, reason: ReasonConnectionRefused, want: StatusStarting},
			{at: 3 * time.Second, outcome: Failure, want: StatusStarting},
			{at: 5 * time.Second, outcome: Failure, want: StatusStarting},
			{at: 29 * time.Second, outcome: Failure, want: StatusStarting},
			{at: 30 * time.Second, outcome: Failure, want: StatusStarting, wantF: 1},
			{at: 32 * time.Second, outcome: Failure, want: StatusStarting, wantF: 2},
			{at: 34 * time.Second, outcome: Failure, reason: ReasonTimeout, want: StatusUnhealthy, wantTr: true, wantF: 3},
		}},
		"grace ends at the first healthy": {running, []step{
			{at: time.Second, outcome: Success, want: StatusHealthy, wantTr: true, wantS: 1},
			{at: 2 * time.Second, outcome: Failure, want: StatusHealthy, wantF: 1},
			{at: 3 * time.Second, outcome: Failure, want: StatusHealthy, wantF: 2},
			{at: 4 * time.Second, outcome: Failure, want: StatusUnhealthy, wantTr: true, wantF: 3},
			{at: 5 * time.Second, outcome: Success, want: StatusHealthy, wantTr: true, wantS: 1},
		}},
		"skipped changes nothing": {running, []step{
			{at: 40 * time.Second, outcome: Failure, want: StatusStarting, wantF: 1},
			{at: 41 * time.Second, outcome: Skipped, reason: ReasonBudgetFull, want: StatusStarting, wantF: 1},
			{at: 42 * time.Second, outcome: Failure, want: StatusStarting, wantF: 2},
		}},
		"a success resets failures": {running, []step{
			{at: 40 * time.Second, outcome: Failure, want: StatusStarting, wantF: 1},
			{at: 41 * time.Second, outcome: Failure, want: StatusStarting, wantF: 2},
			{at: 42 * time.Second, outcome: Success, want: StatusHealthy, wantTr: true, wantS: 1},
		}},
		"success threshold 2 and no start period": {Config{Policy: p2, Lifecycle: Running}, []step{
			{at: 1 * time.Second, outcome: Success, want: StatusStarting, wantS: 1},
			{at: 2 * time.Second, outcome: Failure, want: StatusStarting, wantF: 1},
			{at: 3 * time.Second, outcome: Success, want: StatusStarting, wantS: 1},
			{at: 4 * time.Second, outcome: Success, want: StatusHealthy, wantTr: true, wantS: 2},
		}},
		"Initializing shows starting while probes pass, Running reveals it": {Config{Policy: p, Lifecycle: Initializing}, []step{
			{at: time.Second, outcome: Success, want: StatusStarting, wantS: 1},
			{at: 2 * time.Second, outcome: Success, want: StatusStarting, wantS: 2},
			{at: 3 * time.Second, config: &Config{Policy: p, Lifecycle: Running}, want: StatusHealthy, wantTr: true, wantS: 2},
		}},
		"Stopped reads unknown, Running again opens a fresh window": {running, []step{
			{at: time.Second, outcome: Success, want: StatusHealthy, wantTr: true, wantS: 1},
			{at: 2 * time.Second, config: &Config{Policy: p, Lifecycle: Stopped, StartedAt: t0}, want: StatusUnknown, wantTr: true, wantS: 1},
			{at: 3 * time.Second, outcome: Success, want: StatusUnknown, wantS: 1},
			{at: 60 * time.Second, config: &Config{Policy: p, Lifecycle: Running, StartedAt: t0}, want: StatusStarting, wantTr: true, fresh: true},
			// the window reopened at 60s, so a failure at 70s is inside the grace
			{at: 70 * time.Second, outcome: Failure, want: StatusStarting},
		}},
		"a policy change opens a fresh window": {running, []step{
			{at: time.Second, outcome: Success, want: StatusHealthy, wantTr: true, wantS: 1},
			{at: 2 * time.Second, config: &Config{Policy: p2, Lifecycle: Running, StartedAt: t0}, want: StatusStarting, wantTr: true, fresh: true},
		}},
		"a new started_at opens a fresh window with a new grace": {running, []step{
			{at: 40 * time.Second, outcome: Failure, want: StatusStarting, wantF: 1},
			{at: 50 * time.Second, config: &Config{Policy: p, Lifecycle: Running, StartedAt: at(50 * time.Second)}, want: StatusStarting, fresh: true},
			{at: 51 * time.Second, outcome: Failure, want: StatusStarting},
		}},
		"a stale started_at long past leaves no grace": {Config{Policy: p, Lifecycle: Running, StartedAt: t0.Add(-time.Hour)}, []step{
			{at: time.Second, outcome: Failure, want: StatusStarting, wantF: 1},
		}},
		"disabling reads disabled": {running, []step{
			{at: time.Second, config: &Config{Lifecycle: Running}, want: StatusDisabled, wantTr: true},
		}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) { run(t, tc.initial, tc.steps) })
	}
}

func TestObserveRecordsEvidence(t *testing.T) {
	c := Config{Policy: tcpPolicy(nil), Lifecycle: Running, StartedAt: t0}
	var s State
	s.Configure(Config{}, c, when(0))
	long := make([]byte, 0, 600)
	for len(long) < 599 {
		long = append(long, "é"...)
	}
	r := Result{Outcome: Failure, Reason: ReasonIOError, Message: "x" + string(long), Output: string(long) + string(long) + string(long) + string(long) + string(long) + string(long) + string(long) + string(long)}
	_, changed := s.Observe(c, &r, when(time.Second))
	assert.False(t, changed)
	assert.LessOrEqual(t, len(s.LastError), MaxLastError)
	assert.Equal(t, "x", s.LastError[:1])
	assert.Equal(t, at(time.Second), s.LastFailureAt)
	last, ok := s.History.Last()
	require.True(t, ok)
	assert.LessOrEqual(t, len(last.Output), MaxOutput)

	ok2 := Result{Outcome: Success}
	s.Observe(c, &ok2, when(2*time.Second))
	assert.Empty(t, s.LastError)
	assert.Equal(t, 2, s.History.Len())
}

func TestTransitionReasonAndRegistration(t *testing.T) {
	c := Config{Policy: tcpPolicy(func(p *Policy) { p.StartPeriod = 0; p.FailureThreshold = 1 }), Lifecycle: Running}
	var s State
	tr, changed, fresh := s.Configure(Config{}, c, when(0))
	require.True(t, changed)
	assert.True(t, fresh)
	assert.Equal(t, Transition{From: StatusUnknown, To: StatusStarting, At: t0, Reason: ReasonRegistered}, tr)
	r := Result{Outcome: Failure, Reason: ReasonTimeout, Message: "probe timed out after 2s"}
	tr, changed = s.Observe(c, &r, when(time.Second))
	require.True(t, changed)
	assert.Equal(t, Transition{From: StatusStarting, To: StatusUnhealthy, At: at(time.Second), Reason: ReasonTimeout, LastError: "probe timed out after 2s"}, tr)
	assert.Equal(t, at(time.Second), s.Since)
}

func TestHistoryRing(t *testing.T) {
	var h History
	for i := 0; i < 15; i++ {
		h.Add(Result{HTTPStatus: i})
	}
	rs := h.Results()
	require.Len(t, rs, HistorySize)
	assert.Equal(t, 5, rs[0].HTTPStatus)
	assert.Equal(t, 14, rs[9].HTTPStatus)
	b, err := h.MarshalJSON()
	require.NoError(t, err)
	var back History
	require.NoError(t, back.UnmarshalJSON(b))
	assert.Equal(t, rs, back.Results())
}

func TestNextDelayAndPhase(t *testing.T) {
	p := tcpPolicy(nil)
	assert.Equal(t, p.StartInterval, NextDelay(p, StatusStarting))
	assert.Equal(t, p.Interval, NextDelay(p, StatusHealthy))
	assert.Equal(t, Phase("vm-1", 10*time.Second), Phase("vm-1", 10*time.Second))
	seen := map[time.Duration]bool{}
	for i := 0; i < 100; i++ {
		d := Phase(string(rune('a'+i%26))+string(rune('a'+i/26)), 10*time.Second)
		assert.True(t, d >= 0 && d < 10*time.Second)
		seen[d/time.Second] = true
	}
	assert.Greater(t, len(seen), 5, "phases spread over the interval")
	assert.Equal(t, time.Duration(0), Phase("x", 0))
}

// FuzzStateInvariants drives a state with an arbitrary sequence of outcomes
// and configuration changes and checks the invariants of SPEC §3.
func FuzzStateInvariants(f *testing.F) {
	f.Add([]byte{0, 1, 2, 0, 0, 0, 1, 5, 6, 7}, uint8(3), uint8(1), uint8(30))
	f.Add([]byte{1, 1, 1, 1, 4, 0, 0, 3}, uint8(1), uint8(2), uint8(0))
	f.Fuzz(func(t *testing.T, ops []byte, ft, st, sp uint8) {
		p := tcpPolicy(func(p *Policy) {
			p.FailureThreshold = int(ft%5) + 1
			p.SuccessThreshold = int(st%5) + 1
			p.StartPeriod = time.Duration(sp%60) * time.Second
		})
		lifecycles := []Lifecycle{Running, Initializing, Stopped, Paused}
		run := func() []Status {
			var s State
			c := Config{Policy: p, Lifecycle: Running, StartedAt: t0}
			s.Configure(Config{}, c, when(0))
			var seen []Status
			now := when(0)
			for _, op := range ops {
				now = now.Add(time.Duration(op%16) * time.Second)
				prev := s
				var tr Transition
				var changed bool
				switch op % 8 {
				case 0, 1, 2:
					r := Result{Outcome: Failure, Reason: ReasonTimeout}
					if op%8 == 0 {
						r.Outcome = Success
					}
					tr, changed = s.Observe(c, &r, now)
					if r.Outcome == Success && c.Lifecycle.Active() {
						require.Zero(t, s.ConsecutiveFailures)
					}
				case 3:
					r := Result{Outcome: Skipped}
					_, changed = s.Observe(c, &r, now)
					require.Equal(t, prev.ConsecutiveFailures, s.ConsecutiveFailures)
					require.Equal(t, prev.ConsecutiveSuccesses, s.ConsecutiveSuccesses)
				default:
					next := c
					next.Lifecycle = lifecycles[int(op/8)%len(lifecycles)]
					tr, changed, _ = s.Configure(c, next, now)
					c = next
				}
				require.GreaterOrEqual(t, s.ConsecutiveFailures, 0)
				require.GreaterOrEqual(t, s.ConsecutiveSuccesses, 0)
				require.False(t, s.ConsecutiveFailures > 0 && s.ConsecutiveSuccesses > 0)
				require.Equal(t, Mask(c, s.Eval), s.Status)
				if changed {
					require.NotEqual(t, tr.From, tr.To)
					require.Equal(t, prev.Status, tr.From)
					require.Equal(t, s.Status, tr.To)
				} else {
					require.Equal(t, prev.Status, s.Status)
				}
				// the evaluation changes only at a threshold or with a fresh window
				if s.Eval != prev.Eval && s.Window == prev.Window {
					switch s.Eval {
					case StatusHealthy:
						require.Equal(t, p.SuccessThreshold, s.ConsecutiveSuccesses)
					case StatusUnhealthy:
						require.Equal(t, p.FailureThreshold, s.ConsecutiveFailures)
					default:
						t.Fatalf("evaluation moved to %s without a fresh window", s.Eval)
					}
				}
				seen = append(seen, s.Status)
			}
			return seen
		}
		assert.Equal(t, run(), run(), "deterministic")
	})
}

func BenchmarkObserve(b *testing.B) {
	c := Config{Policy: tcpPolicy(nil), Lifecycle: Running, StartedAt: t0}
	var s State
	s.Configure(Config{}, c, when(0))
	results := [4]Result{
		{Outcome: Success}, {Outcome: Failure, Reason: ReasonTimeout, Message: "timed out"},
		{Outcome: Failure, Reason: ReasonConnectionRefused, Message: "refused"}, {Outcome: Success},
	}
	now := when(time.Minute)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		r := results[i&3]
		now = now.Add(time.Second)
		s.Observe(c, &r, now)
		i++
	}
}

func TestHistoryKeepsEveryFieldCompactly(t *testing.T) {
	code := -1
	in := []Result{
		{Outcome: Success, Start: t0, Duration: Duration(3 * time.Millisecond), HTTPStatus: 200},
		{Outcome: Failure, Reason: ReasonExitNonzero, Message: "exit code -1", Start: t0.Add(time.Second), ExitCode: &code,
			Output: "tail", Truncated: true},
		{Outcome: Failure, Reason: Reason("custom_reason"), Start: t0.Add(2 * time.Second)},
		{Outcome: Skipped, Reason: ReasonBudgetFull},
	}
	var h History
	for _, r := range in {
		h.Add(r)
	}
	assert.Equal(t, in, h.Results())
	last, ok := h.Last()
	require.True(t, ok)
	assert.Equal(t, in[3], last)
	for range HistorySize {
		h.Add(in[0])
	}
	assert.Len(t, h.Results(), HistorySize)
	assert.Nil(t, h.texts, "no text left once plain results replaced those with text")
	assert.Equal(t, 0.0, testing.AllocsPerRun(100, func() { h.Add(in[0]) }), "a plain result allocates nothing")
	assert.LessOrEqual(t, unsafe.Sizeof(h), uintptr(264), "24 bytes a result, and the two arrays beside")
}

// An HTTP probe's phases alone are packed into a word a result, in an array
// beside the ring; phases that do not fit (longer than 2.097151 s, or not
// whole microseconds) go with the texts. Either way they read back as added.
func TestHistoryPacksAnHTTPProbesPhases(t *testing.T) {
	ok := Result{Outcome: Success, Start: t0, HTTPStatus: 200,
		Phases: Phases{Connect: 120 * time.Microsecond, TLS: 2097151 * time.Microsecond, FirstByte: time.Millisecond}}
	in := []Result{
		ok,
		{Outcome: Success, Phases: Phases{Connect: 2097152 * time.Microsecond}},            // too long to pack
		{Outcome: Success, Phases: Phases{FirstByte: 1500 * time.Nanosecond}},              // not whole µs
		{Outcome: Failure, Reason: ReasonTimeout, Message: "timed out", Phases: ok.Phases}, // with a text
		{Outcome: Success, HTTPStatus: 204},
	}
	var h History
	for _, r := range in {
		h.Add(r)
	}
	assert.Equal(t, in, h.Results())
	for range HistorySize {
		h.Add(ok)
	}
	assert.Nil(t, h.texts, "phases alone take no text")
	assert.NotNil(t, h.phases)
	assert.Equal(t, 1.0, testing.AllocsPerRun(100, func() { h.Add(ok) }), "the phases' array alone, copied on write")
	for range HistorySize {
		h.Add(Result{Outcome: Success})
	}
	assert.Nil(t, h.phases, "no phases left once results without them replaced those with")

	h.Add(ok)
	snapshot := h // as a snapshot copies the state
	for range HistorySize {
		h.Add(Result{Outcome: Success, Phases: Phases{Connect: time.Microsecond}})
	}
	rs := snapshot.Results()
	assert.Equal(t, ok.Phases, rs[len(rs)-1].Phases, "the copy's phases did not change under it")
}

func TestHistoryCopiesKeepTheirTexts(t *testing.T) {
	var h History
	h.Add(Result{Outcome: Failure, Reason: ReasonConnectionRefused, Message: "refused", Start: t0})
	snapshot := h // as a snapshot copies the state
	for range HistorySize {
		h.Add(Result{Outcome: Failure, Reason: ReasonTimeout, Message: "timed out", Start: t0.Add(time.Second)})
	}
	rs := snapshot.Results()
	require.Len(t, rs, 1)
	assert.Equal(t, "refused", rs[0].Message, "the copy's text did not change under it")
	last, _ := h.Last()
	assert.Equal(t, "timed out", last.Message)
}

func TestBriefRendersLikeView(t *testing.T) {
	when := time.Date(2026, 11, 27, 3, 4, 5, 6, time.FixedZone("X", 3600))
	st := State{Status: StatusUnhealthy, Since: when, ConsecutiveFailures: 4, LastCheckedAt: when.Add(time.Second),
		LastFailureAt: when.Add(time.Second), LastError: "connection refused"}
	utc := func(d time.Duration) *time.Time { u := when.Add(d).UTC(); return &u }
	for _, next := range []time.Time{{}, when.Add(10 * time.Second)} {
		want := View{Status: StatusUnhealthy, Since: utc(0), ConsecutiveFailures: 4, LastCheckedAt: utc(time.Second),
			LastFailureAt: utc(time.Second), LastError: "connection refused"}
		if !next.IsZero() {
			want.NextCheckAt = utc(10 * time.Second)
		}
		b := st.Brief(next)
		assert.Equal(t, want, b.View(), "times in UTC, zero times absent")
		assert.Equal(t, want, st.View(next, false))
	}
	assert.Equal(t, int32(math.MaxInt32), (&State{ConsecutiveSuccesses: math.MaxInt32 + 1}).Brief(time.Time{}).ConsecutiveSuccesses)
}

func TestProgressIsCompactAndComparable(t *testing.T) {
	p := &Policy{SuccessThreshold: 2, FailureThreshold: 3}
	a := State{Window: 1, Eval: StatusHealthy, Status: StatusHealthy, ConsecutiveSuccesses: 7}
	b := a
	b.ConsecutiveSuccesses = 9
	assert.Equal(t, a.Progress(p), b.Progress(p), "successes past the threshold are evidence")
	b.Status = StatusUnhealthy
	assert.NotEqual(t, a.Progress(p), b.Progress(p))
	c := a
	c.ConsecutiveFailures = 1
	assert.NotEqual(t, a.Progress(p), c.Progress(p), "a failure below the threshold is progress")
	assert.LessOrEqual(t, unsafe.Sizeof(Progress{}), uintptr(24))
}

func TestRemovingThePolicyClearsItsEvidence(t *testing.T) {
	c := Config{Policy: tcpPolicy(func(p *Policy) { p.StartPeriod = 0; p.FailureThreshold = 1 }), Lifecycle: Running}
	var s State
	s.Configure(Config{}, c, when(0))
	r := Result{Outcome: Failure, Reason: ReasonTimeout, Message: "probe timed out"}
	s.Observe(c, &r, when(time.Second))
	require.Equal(t, StatusUnhealthy, s.Status)
	window := s.Window

	off := Config{Lifecycle: Running}
	tr, changed, fresh := s.Configure(c, off, when(2*time.Second))
	require.True(t, changed)
	assert.False(t, fresh)
	assert.Equal(t, Transition{From: StatusUnhealthy, To: StatusDisabled, At: at(2 * time.Second), Reason: ReasonPolicyChanged}, tr)
	assert.Equal(t, State{Window: window, Status: StatusDisabled, Since: at(2 * time.Second), sinceMono: 2 * time.Second, live: true}, s,
		"nothing of the old policy's evidence is left")

	// a new policy starts from nothing, in a fresh window
	_, _, fresh = s.Configure(off, c, when(3*time.Second))
	assert.True(t, fresh)
	assert.Equal(t, 0, s.History.Len())
	assert.Equal(t, StatusStarting, s.Status)
}
