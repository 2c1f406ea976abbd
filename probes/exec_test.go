package probes

import (
	"context"
	"os"
	"os/exec"
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

	"github.com/vigilhq/vigil/actors/health"
	"github.com/vigilhq/vigil/internal/vigilbin"
	"github.com/vigilhq/vigil/probes/vsock/vsocktest"
)

// guestVM is one simulated VM: the real agent as a subprocess, listening on
// a Unix socket, behind the hybrid-vsock test muxer.
type guestVM struct {
	t     testing.TB
	dir   string
	agent *exec.Cmd
	mux   *vsocktest.Muxer
}

func startGuest(t testing.TB, maxConcurrent int) *guestVM {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "vm") // short: Unix socket paths stay under 108 bytes
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	vm := &guestVM{t: t, dir: dir}
	vm.startAgent(maxConcurrent)
	vm.mux, err = vsocktest.Start(dir, filepath.Join(dir, "agent.sock"))
	require.NoError(t, err)
	t.Cleanup(func() {
		vm.mux.Close()
		vm.stopAgent()
	})
	return vm
}

func (vm *guestVM) startAgent(maxConcurrent int) {
	vm.t.Helper()
	bin, err := vigilbin.Path()
	require.NoError(vm.t, err)
	ready := filepath.Join(vm.dir, "ready")
	_ = os.Remove(ready)
	cmd := exec.Command(bin, "agent", "--listen", "unix://"+filepath.Join(vm.dir, "agent.sock"),
		"--ready-file", ready, "--max-concurrent", strconv.Itoa(maxConcurrent), "--log-level", "warn")
	cmd.Stderr = os.Stderr
	require.NoError(vm.t, cmd.Start())
	vm.agent = cmd
	require.Eventually(vm.t, func() bool { _, err := os.Stat(ready); return err == nil }, 10*time.Second, 5*time.Millisecond)
}

func (vm *guestVM) stopAgent() {
	if vm.agent != nil && vm.agent.ProcessState == nil {
		_ = vm.agent.Process.Signal(syscall.SIGKILL)
		_ = vm.agent.Wait()
	}
}

func (vm *guestVM) prober(cmd ...string) *Exec {
	x := NewExec(health.Vsock{Socket: vm.mux.Path, Port: 2222}, health.ExecProbe{Command: cmd})
	vm.t.Cleanup(func() { _ = x.Close() })
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
	vm := startGuest(t, 64)

	r := probeWithin(vm.prober("/bin/true"), 5*time.Second)
	require.Equal(t, health.Success, r.Outcome, r.Message)
	require.NotNil(t, r.ExitCode)
	assert.Equal(t, 0, *r.ExitCode)

	r = probeWithin(vm.prober("/bin/sh", "-c", "echo out; echo err >&2; exit 3"), 5*time.Second)
	assert.Equal(t, health.Failure, r.Outcome)
	assert.Equal(t, health.ReasonExitNonzero, r.Reason)
	assert.Equal(t, 3, *r.ExitCode)
	assert.Contains(t, r.Output, "out\n")
	assert.Contains(t, r.Output, "err\n")

	began := time.Now()
	r = probeWithin(vm.prober("/bin/sleep", "30"), 300*time.Millisecond)
	assert.Equal(t, health.ReasonTimeout, r.Reason, r.Message)
	assert.Less(t, time.Since(began), 2*time.Second, "the host deadline is exact")

	r = probeWithin(vm.prober("/no/such/binary"), 5*time.Second)
	assert.Equal(t, health.Failure, r.Outcome)
	assert.Equal(t, health.ReasonExecError, r.Reason)
	assert.Contains(t, r.Message, "/no/such/binary")

	x := NewExec(health.Vsock{Socket: vm.mux.Path, Port: 2222}, health.ExecProbe{Command: []string{"/bin/pwd"}, WorkingDir: "/tmp", Env: map[string]string{"A": "1"}})
	defer x.Close()
	r = probeWithin(x, 5*time.Second)
	assert.Equal(t, "/tmp\n", r.Output)
}

func TestExecHugeOutputIsBoundedAndTruncated(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the agent")
	}
	vm := startGuest(t, 4)
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
	r := probeWithin(vm.prober("/bin/sh", "-c", "head -c 67108864 /dev/zero | tr '\\0' x; echo; echo THE-END"), 30*time.Second)
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
	vm := startGuest(t, 4)
	pidFile := filepath.Join(vm.dir, "child.pid")
	x := vm.prober("/bin/sh", "-c", "sleep 60 & echo $! > "+pidFile+"; wait")
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
	vm := startGuest(t, 4)
	x := vm.prober("/bin/true")
	require.Equal(t, health.Success, probeWithin(x, 5*time.Second).Outcome)
	vm.stopAgent()
	r := probeWithin(x, time.Second)
	assert.Equal(t, health.ReasonAgentUnreachable, r.Reason, r.Message)
	vm.startAgent(4)
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
	vm := startGuest(t, 4)
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
		vm.mux.SetFault(tc.fault)
		x := vm.prober("/bin/sh", "-c", "head -c 100000 /dev/zero")
		began := time.Now()
		r := probeWithin(x, tc.timeout)
		assert.Equal(t, health.Failure, r.Outcome, "fault %d", tc.fault)
		assert.Equal(t, tc.reason, r.Reason, "fault %d: %s", tc.fault, r.Message)
		assert.Less(t, time.Since(began), tc.timeout+time.Second, "fault %d", tc.fault)
		_ = x.Close()
	}
	vm.mux.SetFault(vsocktest.None)
	assert.Equal(t, health.Success, probeWithin(vm.prober("/bin/true"), 5*time.Second).Outcome)
}

func TestExec64ConcurrentOnOneInstance(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the agent")
	}
	vm := startGuest(t, 64)
	x := vm.prober("/bin/sh", "-c", "sleep 0.2; echo ok")
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
	vm := startGuest(t, 1)
	x := vm.prober("/bin/sleep", "1")
	first := make(chan health.Result, 1)
	go func() { first <- probeWithin(x, 5*time.Second) }()
	time.Sleep(200 * time.Millisecond) // let the first take the only slot
	r := probeWithin(vm.prober("/bin/true"), 5*time.Second)
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
	vm := startGuest(t, 4)
	before := countFDs(t)
	for range 20 {
		x := vm.prober("/bin/true")
		require.Equal(t, health.Success, probeWithin(x, 5*time.Second).Outcome)
		require.NoError(t, x.Close())
	}
	require.Eventually(t, func() bool { return countFDs(t) <= before }, 5*time.Second, 20*time.Millisecond)

}
