package actors

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/probes"
)

func TestLatenessIsTheShareOfLateProbesInAQuarterOfTheLastSecond(t *testing.T) {
	at := func(ms int) time.Duration { return time.Hour + time.Duration(ms)*time.Millisecond }
	var l lateness
	assert.False(t, l.behind(at(0)), "no probes: not behind")
	for i := range 9 {
		l.observe(at(i), time.Second)
	}
	assert.False(t, l.behind(at(9)), "9 late of 9: fewer than the minimum")

	l = lateness{}
	for i := range 1990 {
		l.observe(at(i/10), 10*time.Millisecond)
	}
	for range 15 {
		l.observe(at(200), time.Second)
	}
	l.observe(at(200), BehindLate) // at the bound: on time
	assert.False(t, l.behind(at(249)), "15 late of 2 006: under 1 %")
	for range 10 {
		l.observe(at(249), BehindLate+time.Nanosecond)
	}
	assert.True(t, l.behind(at(249)), "25 late of 2 016: over 1 %")

	// held for a second by that quarter, though every probe since is on time
	for i := range 750 {
		l.observe(at(250+i), 0)
	}
	assert.True(t, l.behind(at(999)), "the late quarter is within the last second")
	for i := range 10 {
		l.observe(at(1000+i), 0)
	}
	assert.False(t, l.behind(at(1010)), "the late quarter has turned over")

	// a slip within one quarter shows though the whole second's share is
	// under 1 %: 12 late of 1 012 in it, 12 of 4 012 over the second
	l = lateness{}
	for i := range 3000 {
		l.observe(at(i/4), 0)
	}
	for i := range 1000 {
		l.observe(at(750+i/4), 0)
	}
	assert.False(t, l.behind(at(999)))
	for range 12 {
		l.observe(at(999), time.Second)
	}
	assert.True(t, l.behind(at(999)), "12 late of 1 012 in the last quarter")

	// a long quiet spell: the quarters left hold counts of long ago
	for i := range 20 {
		l.observe(at(5000+i), time.Second)
	}
	assert.True(t, l.behind(at(5020)))
	assert.False(t, l.behind(at(6500)), "nothing counted within the last second")
}

// Probes that wait for the host's one budget slot behind a slow one start
// late, and the scheduler reports it is behind; once probes are quick
// again and start on time for a second, that it has caught up.
func TestSchedulerIsBehindWhileProbesStartLate(t *testing.T) {
	var slow atomic.Int64 // nanoseconds each probe takes
	h := newHarness(t, WithProbeBudget(1), withWaitFloor(0),
		WithProberFactory(func(health.Instance) (probes.Prober, error) {
			return probes.Func(func(context.Context) health.Result {
				time.Sleep(time.Duration(slow.Load()))
				return health.Result{Outcome: health.Success}
			}), nil
		}))
	const n = 20
	for i := range n {
		h.put("vm-"+strconv.Itoa(i), tcpSpec(`,"interval":"1s","timeout":"1s","start_period":"0s"`))
	}
	h.advance(0)
	for i := range n {
		h.results("vm-"+strconv.Itoa(i), 1)
	}

	// twenty probes due together, each 60 ms on the one slot: most wait
	// longer than BehindLate for it
	slow.Store(int64(60 * time.Millisecond))
	h.advance(time.Second)
	require.Eventually(t, h.s.Behind, 5*time.Second, time.Millisecond, "probes waiting for the budget")
	require.Eventually(t, func() bool { return h.s.InFlight() == 0 }, 10*time.Second, time.Millisecond)

	// quick again, and the clock moving in steps the actors keep up with
	slow.Store(0)
	for range 150 {
		h.advance(10 * time.Millisecond)
		time.Sleep(2 * time.Millisecond)
	}
	assert.False(t, h.s.Behind(), "a second and a half of probes on time")
}
