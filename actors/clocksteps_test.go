package actors

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/clock"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/probes"
)

// settled is a Starter whose probe settles as it starts, as a TCP connect to
// loopback does: the whole probe runs on the actor's goroutine, inside the
// fake clock's Advance. It fails while fail is set.
type settled struct{ fail *atomic.Bool }

func (p settled) Probe(context.Context) health.Result { r, _ := p.Start(); return r }

func (p settled) Start() (health.Result, probes.Rest) {
	if p.fail != nil && p.fail.Load() {
		return health.Result{Outcome: health.Failure, Reason: health.ReasonConnectionRefused, Message: "refused"}, nil
	}
	return health.Result{Outcome: health.Success}, nil
}

// settledProbes is a factory of settled probers sharing fail.
func settledProbes(fail *atomic.Bool) Option {
	return WithProberFactory(func(health.Instance) (probes.Prober, error) { return settled{fail: fail}, nil })
}

// tcpSpec is a TCP instance's spec with the policy's extra fields.
func tcpSpec(extra string) string {
	return `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":1}` + extra + `}}`
}

// noEvents checks that nothing more was published.
func noEvents(t *testing.T, sub *Subscription) {
	t.Helper()
	select {
	case ev := <-sub.C:
		t.Fatalf("a step of the wall clock published %+v", ev)
	default:
	}
}

// TestWallStepsCauseNoBurstNoStall steps the wall clock an hour forward,
// then two hours back, under an instance probed every 10 s: one probe
// every 10 s of monotonic time throughout, none early or late, no
// transition, and next_check_at on the wall clock as it reads.
func TestWallStepsCauseNoBurstNoStall(t *testing.T) {
	for _, step := range []time.Duration{time.Hour, -time.Hour} {
		t.Run(step.String(), func(t *testing.T) {
			h := newHarness(t, settledProbes(nil))
			h.put("a", tcpSpec(`,"interval":"10s","start_period":"0s"`))
			h.advance(0)
			require.Equal(t, health.StatusHealthy, h.results("a", 1).Health.Status)
			sub := h.s.Subscribe(16)
			defer sub.Close()
			// onto the cadence: the first steady pause is shortened by the
			// id's phase
			h.advance(h.get("a").Health.NextCheckAt.Sub(h.clk.Now()))
			n := h.results("a", 2).Health.ConsecutiveSuccesses
			require.Equal(t, 2, n)
			cycle := func(k int) {
				t.Helper()
				for range k {
					h.advance(10*time.Second - time.Millisecond)
					require.Equal(t, n, h.rec.count("a"), "no probe before its interval has passed")
					h.advance(time.Millisecond)
					n++
					require.Equal(t, n, h.rec.count("a"), "one probe when it has")
					info := h.get("a")
					require.Equal(t, health.StatusHealthy, info.Health.Status)
					require.Equal(t, h.clk.Now().Add(10*time.Second), *info.Health.NextCheckAt, "next_check_at on the wall clock")
				}
			}
			cycle(3)
			h.clk.Step(step)
			cycle(6)
			h.clk.Step(-2 * step)
			cycle(6)
			h.clk.Step(step)
			cycle(3)
			noEvents(t, sub)
		})
	}
}

// TestWallStepsNeitherEndNorExtendTheGrace: an instance whose probes all
// fail (threshold 1) stays starting for exactly its 60 s start period of
// monotonic time, counted from started_at (or from registration when
// started_at is not past), whichever way the wall clock steps 30 s in;
// probes keep their 2 s start interval.
func TestWallStepsNeitherEndNorExtendTheGrace(t *testing.T) {
	for name, tc := range map[string]struct {
		startedAt time.Duration // from the wall time at registration
		step      time.Duration
		graceEnds time.Duration // monotonic time after registration
	}{
		"step forward":                {step: time.Hour, graceEnds: 60 * time.Second},
		"step back":                   {step: -time.Hour, graceEnds: 60 * time.Second},
		"started 20 s before, back":   {startedAt: -20 * time.Second, step: -time.Hour, graceEnds: 40 * time.Second},
		"started 20 s before, ahead":  {startedAt: -20 * time.Second, step: time.Hour, graceEnds: 40 * time.Second},
		"started_at ahead, step back": {startedAt: 10 * time.Minute, step: -time.Hour, graceEnds: 60 * time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			var fail atomic.Bool
			fail.Store(true)
			h := newHarness(t, settledProbes(&fail))
			sub := h.s.Subscribe(16)
			defer sub.Close()
			startedAt := t0.Add(tc.startedAt).Format(time.RFC3339Nano)
			h.put("a", `{"state":"Running","started_at":"`+startedAt+`","network":{"ip":"127.0.0.1"},`+
				`"health_check":{"tcp":{"port":1},"interval":"10s","start_period":"60s","failure_threshold":1}}`)
			require.Equal(t, health.StatusStarting, (<-sub.C).To)
			for at := time.Duration(0); ; at += 2 * time.Second {
				if at == 30*time.Second {
					h.clk.Step(tc.step)
				}
				if at == 0 {
					h.advance(0)
				} else {
					h.advance(2 * time.Second)
				}
				info := h.get("a")
				require.Equal(t, int(at/(2*time.Second))+1, h.rec.count("a"), "one probe every 2 s")
				if at < tc.graceEnds {
					require.Equal(t, health.StatusStarting, info.Health.Status, "%v: inside the grace", at)
					require.Zero(t, info.Health.ConsecutiveFailures, "%v: not counted", at)
					continue
				}
				require.Equal(t, health.StatusUnhealthy, info.Health.Status, "%v: the grace is over", at)
				ev := <-sub.C
				assert.Equal(t, health.StatusUnhealthy, ev.To)
				noEvents(t, sub)
				return
			}
		})
	}
}

// TestResumedGraceIgnoresWallSteps restarts the scheduler (another fake
// clock, whose monotonic reading starts again at zero, 25 s of wall time
// later) in the middle of a 60 s grace: the grace left is placed on the new
// monotonic clock once, from the stored wall times, and a step of the wall
// clock right after the restart moves it neither way.
func TestResumedGraceIgnoresWallSteps(t *testing.T) {
	for _, step := range []time.Duration{time.Hour, -time.Hour} {
		t.Run(step.String(), func(t *testing.T) {
			var fail atomic.Bool
			fail.Store(true)
			store := NewMemoryStore()
			h := newHarness(t, WithStore(store), settledProbes(&fail))
			h.put("a", `{"state":"Running","started_at":"`+t0.Format(time.RFC3339)+`","network":{"ip":"127.0.0.1"},`+
				`"health_check":{"tcp":{"port":1},"interval":"10s","start_period":"60s","failure_threshold":1}}`)
			h.advance(0)
			for range 10 {
				h.advance(2 * time.Second)
			}
			require.Equal(t, health.StatusStarting, h.results("a", 11).Health.Status)
			require.NoError(t, h.s.Close(context.Background()))

			h2 := newHarnessOn(t, clock.NewFake(t0.Add(25*time.Second)), WithStore(store), settledProbes(&fail))
			sub := h2.s.Subscribe(16)
			defer sub.Close()
			h2.clk.Step(step)
			graceEnds := 35 * time.Second // t0+60s, 25 s after the restart
			seen := 0
			for h2.clk.Mono() < graceEnds+3*time.Second {
				h2.advance(100 * time.Millisecond)
				n := h2.rec.count("a")
				if n == seen {
					continue
				}
				seen = n
				// the probe ran within the last 100 ms
				if st := h2.get("a").Health.Status; h2.clk.Mono() < graceEnds {
					require.Equal(t, health.StatusStarting, st, "at %v: inside what was left of the grace", h2.clk.Mono())
				} else if h2.clk.Mono()-100*time.Millisecond >= graceEnds {
					require.Equal(t, health.StatusUnhealthy, st, "at %v: the grace is over", h2.clk.Mono())
				}
			}
			require.Equal(t, health.StatusUnhealthy, h2.get("a").Health.Status)
			require.Equal(t, health.StatusUnhealthy, (<-sub.C).To, "the one transition")
			noEvents(t, sub)
		})
	}
}

// TestWallStepDuringAProbe steps the wall clock while a probe is on a
// worker: its duration is monotonic (not an hour, nor negative), and the
// instance keeps its cadence.
func TestWallStepDuringAProbe(t *testing.T) {
	for _, step := range []time.Duration{time.Hour, -time.Hour} {
		t.Run(step.String(), func(t *testing.T) {
			h := newHarness(t)
			arrived, release := make(chan struct{}, 4), make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				arrived <- struct{}{}
				<-release
			}))
			t.Cleanup(srv.Close)
			t.Cleanup(func() {
				select {
				case <-release:
				default:
					close(release)
				}
			})
			port := srv.Listener.Addr().(*net.TCPAddr).Port
			h.put("a", `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"http":{"port":`+
				strconv.Itoa(port)+`},"interval":"10s","timeout":"5s","start_period":"0s"}}`)
			h.advance(0)
			<-arrived
			h.clk.Step(step)
			close(release)
			info := h.results("a", 1)
			require.Equal(t, health.StatusHealthy, info.Health.Status)
			d := time.Duration(info.Health.History[0].Duration)
			assert.GreaterOrEqual(t, d, time.Duration(0))
			assert.Less(t, d, time.Second, "the probe's duration is not the step's")
			assert.Equal(t, h.clk.Now().Add(10*time.Second-health.Phase("a", 10*time.Second)), *info.Health.NextCheckAt)
		})
	}
}
