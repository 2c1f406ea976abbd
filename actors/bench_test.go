package actors

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/clock"
	"github.com/vigilhq/vigil/health"
)

// BenchmarkInlineProbeCycle is one instance's probe cycle on a fake clock:
// the timer fires, the actor starts a probe that settles at once, applies
// its result, publishes it and sets its timer again.
func BenchmarkInlineProbeCycle(b *testing.B) {
	clk := clock.NewFake(t0)
	s, err := New(context.Background(), WithClock(clk), WithLogger(zerolog.Nop()), settledProbes(nil))
	require.NoError(b, err)
	defer func() { require.NoError(b, s.Close(context.Background())) }()
	spec := health.InstanceSpec{State: health.Running, Network: &health.Network{IP: "127.0.0.1"},
		HealthCheck: &health.PolicySpec{Interval: "10s", StartPeriod: "0s", TCP: &health.TCPSpec{Port: 1}}}
	_, _, err = s.Put(context.Background(), "a", spec)
	require.NoError(b, err)
	clk.Advance(0)
	b.ReportAllocs()
	for b.Loop() {
		clk.Advance(10 * time.Second)
	}
	b.StopTimer()
	info, err := s.Get(context.Background(), "a")
	require.NoError(b, err)
	require.Equal(b, health.StatusHealthy, info.Health.Status)
	require.GreaterOrEqual(b, info.Health.ConsecutiveSuccesses, b.N)
}
