package loadtest

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

func TestConditionIsChecked(t *testing.T) {
	base := Config{Instances: 10, Type: "http", Interval: time.Second, Timeout: time.Second, Duration: time.Second, Store: "memory"}
	c := base
	c.Condition = `stauts == 200`
	assert.EqualError(t, c.Validate(), "--condition is not a valid CEL condition: 1:1: undeclared reference to 'stauts' (in container '')")
	c = base
	c.Type, c.Condition = "tcp", `status == 200`
	assert.EqualError(t, c.Validate(), "--condition applies to HTTP instances: use --type http or mixed")
	c.Type = "mixed"
	assert.NoError(t, c.Validate())
}

// TestConditionDecidesHealth registers the HTTP fleet with a condition its
// targets meet and with one they do not: the first turns every instance
// healthy, the second every one unhealthy (the targets answer 200 with an
// empty body either way).
func TestConditionDecidesHealth(t *testing.T) {
	for _, tc := range []struct {
		condition string
		want      health.Status
	}{
		{`status == 200 && size(body) == 0 && duration_ms < 1000`, health.StatusHealthy},
		{`body == "ok"`, health.StatusUnhealthy},
	} {
		t.Run(string(tc.want), func(t *testing.T) {
			cfg := Config{Instances: 20, Type: "http", Interval: time.Second, Timeout: 500 * time.Millisecond, StartPeriod: 0,
				Duration: time.Second, Store: "memory", Workers: 4, Condition: tc.condition, Binary: vigilBinary(t)}
			require.NoError(t, cfg.Validate())
			tp, first, err := startProc(cfg, childOf(roleTargets, cfg))
			require.NoError(t, err)
			defer tp.close()
			f := newFleet(cfg)
			f.ports = *first.Ports
			s, err := actors.New(context.Background())
			require.NoError(t, err)
			defer func() { require.NoError(t, s.Close(context.Background())) }()
			col := &collector{f: f, registered: make([]atomic.Int64, cfg.Instances)}
			require.NoError(t, register(context.Background(), s, f, col, cfg))
			// failure_threshold 3 at 1 s (start_interval 1 s), with room for -race
			require.Eventually(t, func() bool { return s.Summary()[tc.want] == cfg.Instances }, 10*time.Second, 50*time.Millisecond,
				"summary %v", s.Summary())
			info, ok := s.Peek(f.id(0))
			require.True(t, ok)
			assert.Equal(t, tc.condition, info.HealthCheck.HTTP.Condition)
			if tc.want == health.StatusUnhealthy {
				assert.Equal(t, `condition is false: body=""`, info.Health.LastError)
			}
		})
	}
}
