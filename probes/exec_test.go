package probes

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/internal/guesttest"
	"github.com/vigilhq/vigil/probes/vsock/vsocktest"
)

// prober is an exec prober of vm, closed when the test ends.
func prober(t testing.TB, vm *guesttest.VM, cmd ...string) *Exec {
	x := NewExec(health.Vsock{Socket: vm.Mux.Path, Port: 2222}, health.ExecProbe{Command: cmd})
	t.Cleanup(func() { _ = x.Close() })
	return x
}

func probeWithin(x *Exec, d time.Duration) health.Result {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return x.Probe(ctx)
}

func TestExecThroughTheAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the agent")
	}
	vm := guesttest.Start(t, 64)

	r := probeWithin(prober(t, vm, "/bin/true"), 5*time.Second)
	require.Equal(t, health.Success, r.Outcome, r.Message)
	require.NotNil(t, r.ExitCode)
	assert.Equal(t, 0, *r.ExitCode)

	r = probeWithin(prober(t, vm, "/bin/sh", "-c", "echo out; echo err >&2; exit 3"), 5*time.Second)
	assert.Equal(t, health.Failure, r.Outcome)
	assert.Equal(t, health.ReasonExitNonzero, r.Reason)
	assert.Equal(t, 3, *r.ExitCode)
	assert.Contains(t, r.Output, "out\n")
	assert.Contains(t, r.Output, "err\n")

	began := time.Now()
	r = probeWithin(prober(t, vm, "/bin/sleep", "30"), 300*time.Millisecond)
	assert.Equal(t, health.ReasonTimeout, r.Reason, r.Message)
	assert.Less(t, time.Since(began), 2*time.Second, "the host deadline is exact")

	r = probeWithin(prober(t, vm, "/no/such/binary"), 5*time.Second)
	assert.Equal(t, health.Failure, r.Outcome)
	assert.Equal(t, health.ReasonExecError, r.Reason)
	assert.Contains(t, r.Message, "/no/such/binary")

	x := NewExec(health.Vsock{Socket: vm.Mux.Path, Port: 2222}, health.ExecProbe{Command: []string{"/bin/pwd"}, WorkingDir: "/tmp", Env: map[string]string{"A": "1"}})
	defer x.Close()
	r = probeWithin(x, 5*time.Second)
	assert.Equal(t, "/tmp\n", r.Output)
}

func TestExecHugeOutputIsBoundedAndTruncated(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the agent")
	}
	vm := guesttest.Start(t, 4)
	// 64 MiB of output ending in a known line, while the host's heap is sampled
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	r := probeWithin(prober(t, vm, "/bin/sh", "-c", "head -c 67108864 /dev/zero | tr '\\0' x; echo; echo THE-END"), 30*time.Second)
	close(stop)
	<-sampled
	grew := int64(peak.Load()) - int64(before.HeapInuse)
	t.Logf("host heap in use grew by at most %d KiB while 64 MiB passed", grew>>10)
	assert.Less(t, grew, int64(24<<20), "the host drains the output instead of buffering it")
	require.Equal(t, health.Success, r.Outcome, r.Message)
	assert.True(t, r.Truncated)
	assert.LessOrEqual(t, len(r.Output), health.MaxOutput)
	assert.True(t, strings.HasSuffix(r.Output, "THE-END\n"), "the tail is kept")
}

func TestExecHostCancelKillsTheProcessGroup(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the agent")
	}
	vm := guesttest.Start(t, 4)
	pidFile := filepath.Join(vm.Dir, "child.pid")
	x := prober(t, vm, "/bin/sh", "-c", "sleep 60 & echo $! > "+pidFile+"; wait")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan health.Result, 1)
	go func() { done <- x.Probe(ctx) }()
	var pid int
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	}, 5*time.Second, 5*time.Millisecond)
	cancel()
	r := <-done
	assert.Equal(t, health.ReasonCanceled, r.Reason)
	require.Eventually(t, func() bool { return syscall.Kill(pid, 0) != nil }, 5*time.Second, 10*time.Millisecond,
		"the background child of the command is gone")
}

func TestExecRecoversAfterAgentRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the agent")
	}
	vm := guesttest.Start(t, 4)
	x := prober(t, vm, "/bin/true")
	require.Equal(t, health.Success, probeWithin(x, 5*time.Second).Outcome)
	vm.StopAgent()
	r := probeWithin(x, time.Second)
	assert.Equal(t, health.ReasonAgentUnreachable, r.Reason, r.Message)
	vm.StartAgent(4)
	restarted := time.Now()
	for probeWithin(x, time.Second).Outcome != health.Success {
		require.Less(t, time.Since(restarted), 5*time.Second, "no recovery")
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("recovered %v after the agent was back", time.Since(restarted))
	assert.Less(t, time.Since(restarted), 2*time.Second)
}

func TestExecMuxerFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the agent")
	}
	vm := guesttest.Start(t, 4)
	for _, tc := range []struct {
		fault   vsocktest.Fault
		timeout time.Duration
		reason  health.Reason
	}{
		{vsocktest.NoReply, time.Second, health.ReasonAgentUnreachable},
		{vsocktest.Garbage, time.Second, health.ReasonAgentUnreachable},
		{vsocktest.SlowOK, 300 * time.Millisecond, health.ReasonTimeout},
		{vsocktest.Reset, 2 * time.Second, health.ReasonAgentUnreachable},
		{vsocktest.Pause, 300 * time.Millisecond, health.ReasonTimeout},
	} {
		vm.Mux.SetFault(tc.fault)
		x := prober(t, vm, "/bin/sh", "-c", "head -c 100000 /dev/zero")
		began := time.Now()
		r := probeWithin(x, tc.timeout)
		assert.Equal(t, health.Failure, r.Outcome, "fault %d", tc.fault)
		assert.Equal(t, tc.reason, r.Reason, "fault %d: %s", tc.fault, r.Message)
		assert.Less(t, time.Since(began), tc.timeout+time.Second, "fault %d", tc.fault)
		_ = x.Close()
	}
	vm.Mux.SetFault(vsocktest.None)
	assert.Equal(t, health.Success, probeWithin(prober(t, vm, "/bin/true"), 5*time.Second).Outcome)
}

func TestExec64ConcurrentOnOneInstance(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the agent")
	}
	vm := guesttest.Start(t, 64)
	x := prober(t, vm, "/bin/sh", "-c", "sleep 0.2; echo ok")
	var wg sync.WaitGroup
	results := make([]health.Result, 64)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = probeWithin(x, 10*time.Second)
		}()
	}
	wg.Wait()
	for i, r := range results {
		assert.Equal(t, health.Success, r.Outcome, "probe %d: %s", i, r.Message)
		assert.Equal(t, "ok\n", r.Output)
	}
}

func TestAgentRefusesBeyondItsCap(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the agent")
	}
	vm := guesttest.Start(t, 1)
	x := prober(t, vm, "/bin/sleep", "1")
	first := make(chan health.Result, 1)
	go func() { first <- probeWithin(x, 5*time.Second) }()
	time.Sleep(200 * time.Millisecond) // let the first take the only slot
	r := probeWithin(prober(t, vm, "/bin/true"), 5*time.Second)
	assert.Equal(t, health.ReasonExecError, r.Reason)
	assert.Contains(t, r.Message, "ResourceExhausted")
	assert.Equal(t, health.Success, (<-first).Outcome)
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(ents)
}

func TestExecLeavesNoFileDescriptors(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the agent")
	}
	vm := guesttest.Start(t, 4)
	before := countFDs(t)
	for range 20 {
		x := prober(t, vm, "/bin/true")
		require.Equal(t, health.Success, probeWithin(x, 5*time.Second).Outcome)
		require.NoError(t, x.Close())
	}
	require.Eventually(t, func() bool { return countFDs(t) <= before }, 5*time.Second, 20*time.Millisecond)

}
