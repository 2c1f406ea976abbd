package actors

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/health"
)

// TestHandoffKeepsStateAndCadence detaches an instance from one scheduler
// and attaches it to another (two nodes of a fleet, each with its own
// store): window, counters, status, since and history come along, the
// attach emits no transition, and the next probe is where the first
// scheduler would have run it.
func TestHandoffKeepsStateAndCadence(t *testing.T) {
	a := newHarness(t)
	tg := newTarget(t)
	a.put("vm-1", tg.policy(`,"interval":"10s","start_period":"0s","failure_threshold":2`))
	a.advance(0)
	a.results("vm-1", 1)
	tg.code.Store(http.StatusInternalServerError)
	a.advance(10 * time.Second)
	before := a.results("vm-1", 2)
	require.Equal(t, health.StatusHealthy, before.Health.Status)
	require.Equal(t, 1, before.Health.ConsecutiveFailures)
	require.NotNil(t, before.Health.NextCheckAt)

	sub := a.s.Subscribe(16)
	defer sub.Close()
	h, err := a.s.Detach(context.Background(), "vm-1")
	require.NoError(t, err)
	assert.Equal(t, before.Health.NextCheckAt.UnixNano(), h.Snapshot.NextCheckAt.UnixNano())
	_, err = a.s.Get(context.Background(), "vm-1")
	assert.ErrorIs(t, err, ErrNotFound, "detached: no longer here")
	assert.Equal(t, 0, a.s.Summary()[health.StatusHealthy])
	_, err = a.store.Snapshot("vm-1")
	assert.NoError(t, err, "the data stays until discarded")
	probes := a.rec.count("vm-1")
	a.advance(30 * time.Second)
	assert.Equal(t, probes, a.rec.count("vm-1"), "a detached instance is not probed")

	b := newHarness(t)
	b.clk.Advance(a.clk.Now().Sub(b.clk.Now())) // the same time on both nodes
	bsub := b.s.Subscribe(16)
	defer bsub.Close()
	info, err := b.s.Attach(context.Background(), h)
	require.NoError(t, err)
	assert.Equal(t, before.Health.Status, info.Health.Status)
	assert.Equal(t, before.Health.Since, info.Health.Since)
	assert.Equal(t, 1, info.Health.ConsecutiveFailures)
	assert.Equal(t, before.Instance.Spec(), info.Instance.Spec(), "the spec as written came along")
	got := b.get("vm-1")
	assert.Len(t, got.Health.History, 2)
	// the next failure is the second: unhealthy at the threshold, counted
	// across the move
	b.advance(0)
	b.results("vm-1", 1)
	assert.Equal(t, health.StatusUnhealthy, b.get("vm-1").Health.Status)
	ev := <-bsub.C
	assert.Equal(t, health.StatusHealthy, ev.From, "the only transition is the probe's; the attach emitted none")
	assert.Equal(t, health.StatusUnhealthy, ev.To)
	select {
	case ev := <-sub.C:
		t.Fatalf("the detach emitted %+v", ev)
	default:
	}

	require.NoError(t, a.s.Discard(context.Background(), "vm-1"))
	_, err = a.store.Snapshot("vm-1")
	assert.ErrorIs(t, err, ErrNotStored)
	assert.ErrorIs(t, b.s.Discard(context.Background(), "vm-1"), ErrExists)
}

// TestHandoffWaitsForTheNextCheck checks that the attached instance probes
// at the handed-over next check, not at once and not at its hash phase.
func TestHandoffWaitsForTheNextCheck(t *testing.T) {
	a := newHarness(t)
	tg := newTarget(t)
	a.put("vm-2", tg.policy(`,"interval":"10s","start_period":"0s"`))
	a.advance(0)
	a.results("vm-2", 1)
	a.advance(10 * time.Second)
	info := a.results("vm-2", 2)
	due := *info.Health.NextCheckAt
	a.advance(3 * time.Second)
	h, err := a.s.Detach(context.Background(), "vm-2")
	require.NoError(t, err)

	b := newHarness(t)
	b.clk.Advance(a.clk.Now().Sub(b.clk.Now()))
	_, err = b.s.Attach(context.Background(), h)
	require.NoError(t, err)
	wait := due.Sub(b.clk.Now())
	require.Greater(t, wait, time.Second)
	b.advance(wait - time.Second)
	time.Sleep(20 * time.Millisecond)
	assert.Equal(t, 0, b.rec.count("vm-2"), "not before the next check")
	b.advance(time.Second)
	b.results("vm-2", 1)
	assert.Equal(t, due.UnixNano(), b.rec.started["vm-2"][0].UnixNano())
}
