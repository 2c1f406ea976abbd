package actors_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/internal/guesttest"
)

// TestExecInstanceThroughTheScheduler registers an exec instance with the
// real scheduler and agent: it turns healthy, turns unhealthy when its
// command starts failing, and its history shows the command's output.
func TestExecInstanceThroughTheScheduler(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the agent")
	}
	vm := guesttest.Start(t, 16)
	socket, dir := vm.Mux.Path, vm.Dir
	flag := filepath.Join(dir, "serving")
	require.NoError(t, os.WriteFile(flag, nil, 0o644))

	ctx := context.Background()
	s, err := actors.New(ctx)
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close(ctx)) }()
	one := 1
	_, _, err = s.Put(ctx, "vm-exec", health.InstanceSpec{State: health.Running,
		Vsock: &health.VsockSpec{Socket: socket},
		HealthCheck: &health.PolicySpec{Interval: "1s", Timeout: "900ms", StartPeriod: "0s", FailureThreshold: &one,
			Exec: &health.ExecSpec{Command: []string{"/bin/sh", "-c", "test -f " + flag + " && echo ready || { echo missing >&2; exit 4; }"}}}})
	require.NoError(t, err)

	status := func() health.Status { info, _ := s.Peek("vm-exec"); return info.Health.Status }
	require.Eventually(t, func() bool { return status() == health.StatusHealthy }, 10*time.Second, 20*time.Millisecond)
	require.NoError(t, os.Remove(flag))
	require.Eventually(t, func() bool { return status() == health.StatusUnhealthy }, 10*time.Second, 20*time.Millisecond)

	info, err := s.Get(ctx, "vm-exec")
	require.NoError(t, err)
	h := info.Health.History
	require.NotEmpty(t, h)
	last := h[len(h)-1]
	assert.Equal(t, health.ReasonExitNonzero, last.Reason)
	require.NotNil(t, last.ExitCode)
	assert.Equal(t, 4, *last.ExitCode)
	assert.Equal(t, "missing\n", last.Output)
	found := false
	for _, r := range h {
		found = found || strings.Contains(r.Output, "ready")
	}
	assert.True(t, found, "the successful probe's output is in the history")
	assert.Contains(t, info.Health.LastError, "exit code 4")
}

// TestExecAgentUnreachableWhileInitializingIsSkipped checks SPEC §3: a guest
// agent that is not up yet while the VM boots is no evidence.
func TestExecAgentUnreachableWhileInitializingIsSkipped(t *testing.T) {
	ctx := context.Background()
	s, err := actors.New(ctx)
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close(ctx)) }()
	one := 1
	spec := health.InstanceSpec{State: health.Initializing,
		Vsock: &health.VsockSpec{Socket: filepath.Join(t.TempDir(), "none.sock")},
		HealthCheck: &health.PolicySpec{Interval: "1s", Timeout: "500ms", StartPeriod: "0s", FailureThreshold: &one,
			Exec: &health.ExecSpec{Command: []string{"/bin/true"}}}}
	_, _, err = s.Put(ctx, "vm-boot", spec)
	require.NoError(t, err)
	r, info, err := s.ProbeNow(ctx, "vm-boot")
	require.NoError(t, err)
	assert.Equal(t, health.Skipped, r.Outcome)
	assert.Equal(t, health.ReasonAgentUnreachable, r.Reason)
	assert.Equal(t, health.StatusStarting, info.Health.Status)

	_, err = s.SetState(ctx, "vm-boot", health.Running, nil)
	require.NoError(t, err)
	r, info, err = s.ProbeNow(ctx, "vm-boot")
	require.NoError(t, err)
	assert.Equal(t, health.Failure, r.Outcome, "once Running an unreachable agent is a failure")
	assert.Equal(t, health.StatusUnhealthy, info.Health.Status)
}
