// Package guesttest runs one simulated VM for tests: the real guest agent
// (`vigil agent`) as a subprocess listening on a Unix socket, behind the
// hybrid-vsock test muxer. Test helper only.
//
// Concurrency contract: a VM is driven by one test goroutine; its muxer's
// fault knob is safe for concurrent use.
package guesttest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/internal/vigilbin"
	"github.com/vigilhq/vigil/probes/vsock/vsocktest"
)

// VM is one simulated VM. Mux.Path is its hybrid-vsock socket; Dir is a
// short directory of its own (Unix socket paths stay under 108 bytes).
type VM struct {
	t     testing.TB
	Dir   string
	Mux   *vsocktest.Muxer
	agent *exec.Cmd
}

// Start runs the agent (at most maxConcurrent commands at once) behind the
// muxer; both stop when the test ends.
func Start(t testing.TB, maxConcurrent int) *VM {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "vm")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	vm := &VM{t: t, Dir: dir}
	vm.StartAgent(maxConcurrent)
	vm.Mux, err = vsocktest.Start(dir, filepath.Join(dir, "agent.sock"))
	require.NoError(t, err)
	t.Cleanup(func() {
		vm.Mux.Close()
		vm.StopAgent()
	})
	return vm
}

// StartAgent starts the agent and waits until it listens.
func (vm *VM) StartAgent(maxConcurrent int) {
	vm.t.Helper()
	bin, err := vigilbin.Path()
	require.NoError(vm.t, err)
	ready := filepath.Join(vm.Dir, "ready")
	_ = os.Remove(ready)
	cmd := exec.Command(bin, "agent", "--listen", "unix://"+filepath.Join(vm.Dir, "agent.sock"),
		"--ready-file", ready, "--max-concurrent", strconv.Itoa(maxConcurrent), "--log-level", "warn")
	cmd.Stderr = os.Stderr
	require.NoError(vm.t, cmd.Start())
	vm.agent = cmd
	require.Eventually(vm.t, func() bool { _, err := os.Stat(ready); return err == nil }, 10*time.Second, 5*time.Millisecond)
}

// StopAgent kills the agent, as a crashed guest would lose it.
func (vm *VM) StopAgent() {
	if vm.agent != nil && vm.agent.ProcessState == nil {
		_ = vm.agent.Process.Signal(syscall.SIGKILL)
		_ = vm.agent.Wait()
	}
}
