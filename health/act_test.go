package health

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func restartPolicy(t *testing.T, js string) *RestartPolicy {
	t.Helper()
	var s RestartPolicySpec
	require.NoError(t, json.Unmarshal([]byte(js), &s))
	p, err := s.Normalize()
	require.NoError(t, err)
	return &p
}

// TestRestartRules walks the restart rules through a sequence of inputs on
// a fake clock: the after delay, exponential backoff to the cap, the
// attempts limit, holds, and the reset after stable_after of health.
func TestRestartRules(t *testing.T) {
	p := restartPolicy(t, `{"policy":"on_unhealthy","url":"http://127.0.0.1:1/restart","backoff":"5s","max_backoff":"20s","max_attempts":4,"stable_after":"1m","after":"10s"}`)
	var r RestartState
	down := when(0) // unhealthy since
	type step struct {
		at      time.Duration
		status  Status
		since   Instant
		held    string
		attempt bool
		wake    time.Duration // from t0; -1 for none
		blocked string
		n       int
	}
	for i, s := range []step{
		{at: 0, status: StatusUnhealthy, since: down, wake: 10 * time.Second}, // after 10 s
		{at: 9 * time.Second, status: StatusUnhealthy, since: down, wake: 10 * time.Second},
		{at: 10 * time.Second, status: StatusUnhealthy, since: down, attempt: true, wake: 15 * time.Second, n: 1},
		{at: 12 * time.Second, status: StatusUnhealthy, since: down, wake: 15 * time.Second, n: 1}, // inside the backoff
		{at: 15 * time.Second, status: StatusUnhealthy, since: down, attempt: true, wake: 25 * time.Second, n: 2},
		{at: 25 * time.Second, status: StatusUnhealthy, since: down, attempt: true, wake: 45 * time.Second, n: 3},
		{at: 45 * time.Second, status: StatusUnhealthy, since: down, held: BlockedFlapping, wake: -1, blocked: BlockedFlapping, n: 3},
		{at: 46 * time.Second, status: StatusUnhealthy, since: down, attempt: true, wake: 66 * time.Second, n: 4}, // capped at 20 s
		{at: 66 * time.Second, status: StatusUnhealthy, since: down, wake: -1, blocked: BlockedMaxAttempts, n: 4},
		{at: 70 * time.Second, status: StatusHealthy, since: when(70 * time.Second), wake: 130 * time.Second, blocked: BlockedMaxAttempts, n: 4},
		{at: 130 * time.Second, status: StatusHealthy, since: when(70 * time.Second), wake: -1, n: 0}, // stable: reset
		{at: 200 * time.Second, status: StatusUnhealthy, since: when(195 * time.Second), wake: 205 * time.Second, n: 0},
		{at: 205 * time.Second, status: StatusUnhealthy, since: when(195 * time.Second), attempt: true, wake: 210 * time.Second, n: 1},
	} {
		attempt, wake := r.Decide(p, RestartInput{Status: s.status, Since: s.since, Now: when(s.at), Held: s.held, Reason: ReasonTimeout})
		assert.Equal(t, s.attempt, attempt, "step %d: attempt", i)
		if s.wake < 0 {
			assert.True(t, wake.IsZero(), "step %d: no wake, got %s", i, wake)
		} else {
			assert.Equal(t, when(s.wake), wake, "step %d: wake", i)
		}
		assert.Equal(t, s.blocked, r.Blocked, "step %d: blocked", i)
		assert.Equal(t, s.n, r.Attempts, "step %d: attempts", i)
	}
}

// TestRestartSurvivesAKillBetweenAttemptAndDelivery: the attempt is in the
// durable state (Pending) before it is sent; a vigil killed before sending
// finds it again and sends that attempt, not a new one inside the backoff.
func TestRestartSurvivesAKillBetweenAttemptAndDelivery(t *testing.T) {
	p := restartPolicy(t, `{"policy":"on_unhealthy","url":"http://127.0.0.1:1/r","backoff":"30s"}`)
	var r RestartState
	attempt, _ := r.Decide(p, RestartInput{Status: StatusUnhealthy, Since: when(0), Now: when(0), Reason: ReasonTimeout, LastError: "probe timed out"})
	require.True(t, attempt)
	require.True(t, r.Pending)
	b, err := json.Marshal(r) // what the snapshot holds when vigil is killed
	require.NoError(t, err)

	var back RestartState
	require.NoError(t, json.Unmarshal(b, &back))
	r.nextMono, r.live = 0, false // a snapshot keeps the wall clock's times only
	assert.Equal(t, r, back)
	// the restarted vigil's monotonic clock has another origin: the
	// backoff's end is placed on it by its wall distance
	restarted := Instant{Wall: t0.Add(2 * time.Second), Mono: time.Hour}
	attempt, wake := back.Decide(p, RestartInput{Status: StatusUnhealthy, Since: restarted.Of(t0), Now: restarted})
	assert.False(t, attempt, "no second attempt inside the backoff")
	assert.Equal(t, Instant{Wall: t0.Add(30 * time.Second), Mono: time.Hour + 28*time.Second}, wake)
	assert.True(t, back.Pending, "the attempt made before the kill is still to be delivered")
	assert.Equal(t, 1, back.Attempts)
	assert.Equal(t, "probe timed out", back.LastError)
}

func TestRestartPolicyRejections(t *testing.T) {
	for js, field := range map[string]string{
		`{"policy":"always"}`:                                                            "restart_policy.policy",
		`{"policy":"on_unhealthy"}`:                                                      "restart_policy.url",
		`{"policy":"on_unhealthy","url":"ftp://x/y"}`:                                    "restart_policy.url",
		`{"policy":"on_unhealthy","url":"http://x/","backoff":"10ms"}`:                   "restart_policy.backoff",
		`{"policy":"on_unhealthy","url":"http://x/","backoff":"1m","max_backoff":"30s"}`: "restart_policy.max_backoff",
		`{"policy":"on_unhealthy","url":"http://x/","max_attempts":0}`:                   "restart_policy.max_attempts",
		`{"policy":"on_unhealthy","url":"http://x/","after":"-1s"}`:                      "restart_policy.after",
		`{"policy":"on_unhealthy","url":"http://x/","stable_after":"1000h"}`:             "restart_policy.stable_after",
	} {
		var s RestartPolicySpec
		require.NoError(t, json.Unmarshal([]byte(js), &s))
		_, err := s.Normalize()
		var fe *FieldError
		require.ErrorAs(t, err, &fe, js)
		assert.Equal(t, field, fe.Field, js)
	}
	p := restartPolicy(t, `{}`)
	assert.False(t, p.Enabled(), "no policy restarts nothing")
}

func TestFlapping(t *testing.T) {
	window := FlapWindow(time.Second) // 10 s
	var f Flap
	for i := range FlapChanges - 1 {
		assert.False(t, f.Change(when(time.Duration(i)*time.Second), window), "change %d", i)
	}
	assert.True(t, f.Change(when(5*time.Second), window), "the sixth change within 10 s")
	assert.True(t, f.Flapping)
	assert.False(t, f.Change(when(6*time.Second), window), "flapping starts once")
	assert.Equal(t, when(16*time.Second), f.SteadyAt(when(6*time.Second), window))
	assert.False(t, f.Settle(when(15*time.Second), window))
	assert.True(t, f.Settle(when(16*time.Second), window), "steady for the window")
	assert.False(t, f.Flapping)

	var slow Flap
	for i := range 12 {
		assert.False(t, slow.Change(when(time.Duration(i)*3*time.Second), window), "a change every 3 s never flaps")
	}
	assert.True(t, ReasonTimeout.Counts())
	assert.False(t, ReasonLifecycle.Counts(), "a lifecycle change is not the workload's")
}

func TestAStateHoldsAFlappingRingOnlyWhileItCanDecide(t *testing.T) {
	window := FlapWindow(time.Second) // 10 s
	var s State
	assert.Nil(t, s.Flap, "a new state holds none")
	assert.False(t, s.FlapChange(when(0), window))
	require.NotNil(t, s.Flap)
	s.FlapForget(when(window), window)
	assert.NotNil(t, s.Flap, "a change within the window is kept")
	s.FlapForget(when(window+time.Millisecond), window)
	assert.Nil(t, s.Flap, "every change older than the window: nothing left to decide")

	// forgetting is invisible: two states given the same changes at the
	// same times, one forgetting after every step, flap alike throughout
	var kept, forgetting State
	at, r := time.Duration(0), uint32(1)
	flapped, forgotten := 0, 0
	for i := range 2000 {
		r = r*1664525 + 1013904223
		at += []time.Duration{200 * time.Millisecond, 500 * time.Millisecond, time.Second, 3 * time.Second,
			12 * time.Second}[r>>29%5]
		now := when(at)
		if r>>16%3 != 0 {
			assert.Equal(t, kept.FlapChange(now, window), forgetting.FlapChange(now, window), "change %d", i)
		}
		assert.Equal(t, kept.FlapSettle(now, window), forgetting.FlapSettle(now, window), "settle %d", i)
		assert.Equal(t, kept.FlapSteadyAt(now, window), forgetting.FlapSteadyAt(now, window), "steady %d", i)
		assert.Equal(t, kept.Flapping(), forgetting.Flapping(), "step %d", i)
		had := forgetting.Flap != nil
		forgetting.FlapForget(now, window)
		if forgetting.Flapping() {
			flapped++
			require.NotNil(t, forgetting.Flap, "a flapping instance keeps its ring")
		} else if had && forgetting.Flap == nil {
			forgotten++
		}
	}
	assert.Greater(t, flapped, 10, "the sequence flaps")
	assert.Greater(t, forgotten, 10, "and goes quiet long enough to be forgotten")
}

func TestACloneOfAStateSharesNothingItChanges(t *testing.T) {
	p := restartPolicy(t, `{"policy":"on_unhealthy","url":"http://x/"}`)
	var s State
	s.FlapChange(when(0), time.Minute)
	s.RestartToChange().Attempts = 2
	c := s.Clone()
	c.FlapChange(when(time.Second), time.Minute)
	c.RestartToChange().Decide(p, RestartInput{Status: StatusHealthy, Since: when(0), Now: when(time.Hour)})
	assert.Equal(t, 2, s.Restarts().Attempts, "the original's attempts")
	assert.Equal(t, 0, c.Restarts().Attempts, "the clone's, stable since")
	assert.Equal(t, 1, s.Flap.Next, "the original's ring")
	assert.Equal(t, 2, c.Flap.Next)
	var none State
	assert.Equal(t, none, none.Clone(), "nothing held, nothing made")
}

func TestIncidentRules(t *testing.T) {
	d := Incidents{Rules: DefaultIncidentRules}
	const active = 300
	var opened *Incident
	for i := range 59 {
		inc, open, _ := d.Observe(fmt.Sprint("vm-", i), true, active, i+1, when(time.Duration(i)*100*time.Millisecond))
		require.False(t, open, "%d of 300 is below 20 %%", i+1)
		require.Nil(t, inc)
	}
	inc, open, _ := d.Observe("vm-59", true, active, 60, when(6*time.Second))
	require.True(t, open, "60 of 300 within 30 s opens an incident")
	opened = inc
	inc, open, _ = d.Observe("vm-60", true, active, 61, when(7*time.Second))
	assert.False(t, open)
	assert.Same(t, opened, inc, "later failures fold into it")
	// recovery below half the threshold (10 %) closes it
	unhealthy := 61
	for unhealthy >= 31 {
		unhealthy--
		inc, _, closed := d.Observe(fmt.Sprint("vm-", unhealthy), false, active, unhealthy, when(time.Minute))
		if unhealthy >= 30 {
			assert.False(t, closed, "%d unhealthy of 300", unhealthy)
		} else {
			assert.True(t, closed)
			assert.Same(t, opened, inc)
		}
	}
	_, _, closed := d.Observe("vm-29", false, active, 29, when(time.Minute))
	assert.True(t, closed)
	assert.NotNil(t, opened.ClosedAt)
	assert.Nil(t, d.Open())

	// few instances: the floor of 10
	small := Incidents{Rules: DefaultIncidentRules}
	for i := range 9 {
		_, open, _ := small.Observe(fmt.Sprint("vm-", i), true, 20, i+1, when(0))
		assert.False(t, open)
	}
	_, open, _ = small.Observe("vm-9", true, 20, 10, when(0))
	assert.True(t, open)
	// one instance flapping is one instance, however often
	flap := Incidents{Rules: DefaultIncidentRules}
	for i := range 50 {
		_, open, _ := flap.Observe(fmt.Sprint("vm-", i%3), true, 20, 3, when(time.Duration(i)*time.Second))
		assert.False(t, open, "3 instances failing again and again")
	}
	// spread out over more than the window: no incident
	slow := Incidents{Rules: DefaultIncidentRules}
	for i := range 100 {
		_, open, _ := slow.Observe(fmt.Sprint("vm-", i), true, 300, i+1, when(time.Duration(i)*time.Second))
		assert.False(t, open, "%d", i)
	}
}

func TestLabels(t *testing.T) {
	ok := map[string]string{"service": "web", "tenant": "t1", "example.com/tier": "a_b.c-9", "empty": ""}
	assert.NoError(t, ValidateLabels(ok))
	for k, v := range map[string]string{"-bad": "x", "a/": "x", "UP.per/x": "x", "k": "-x", "long": string(make([]byte, 64))} {
		err := ValidateLabels(map[string]string{k: v})
		var fe *FieldError
		require.ErrorAs(t, err, &fe, "%q=%q", k, v)
		assert.Equal(t, "labels."+k, fe.Field)
	}
	many := map[string]string{}
	for i := range 33 {
		many[string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
	}
	assert.Error(t, ValidateLabels(many))
	assert.True(t, MatchLabels(ok, map[string]string{"service": "web"}))
	assert.False(t, MatchLabels(ok, map[string]string{"service": "db"}))
	assert.True(t, MatchLabels(ok, nil))
}
