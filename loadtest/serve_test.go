package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// runBinary runs `vigil loadtest ARGS --json` and returns its report.
func runBinary(t *testing.T, args ...string) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, vigilBinary(t), append(append([]string{"loadtest"}, args...), "--json")...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir()) // vigil serve's data dir and the others, removed with the test
	err := cmd.Run()
	require.NoError(t, err, "stderr:\n%s", stderr.String())
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var rep Report
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &rep), stdout.String())
	return &rep
}

// TestServeModeMeasuresVigilServe drives a vigil serve process over its API
// through the binary's real entry point: every hung target's instance is
// read back unhealthy, no healthy one is, and the targets' view and the
// serve process's own CPU and memory are measured.
func TestServeModeMeasuresVigilServe(t *testing.T) {
	if testing.Short() {
		t.Skip("runs vigil serve for seconds")
	}
	cfg := Config{Instances: 200, Type: "http", Interval: time.Second, Timeout: 500 * time.Millisecond, Hung: 0.05}
	rep := runBinary(t, "--serve", "--instances", "200", "--type", "http", "--interval", "1s", "--timeout", "500ms",
		"--hung", "0.05", "--start-period", "0", "--duration", "8s", "--raw-for", "500ms")
	assert.Equal(t, "serve", rep.Mode)
	assert.Equal(t, 10, rep.Hung)
	assert.Equal(t, 10, rep.HungDetected, "10 of 10 hung detected")
	assert.Zero(t, rep.FalseAlarms)
	assert.Zero(t, rep.HealthyFailed)
	assert.Equal(t, -1, rep.Starved, "the inside starvation is not visible from outside")
	// the inside view, from vigil serve's /metrics
	assert.InDelta(t, 200*rep.DurationS, float64(rep.Probes), 200*rep.DurationS*0.3, "one probe a second each")
	assert.Positive(t, rep.Failures, "the hung ones time out")
	assert.GreaterOrEqual(t, rep.LagP99MS, rep.LagP50MS)
	assert.Positive(t, rep.LagMaxMS)
	// the serve process alone
	assert.Positive(t, rep.CPUPercent)
	assert.Positive(t, rep.VigilCPUPerProbeUS)
	assert.Positive(t, rep.RSSBytes)
	assert.GreaterOrEqual(t, rep.RSSPeakBytes, rep.RSSBytes)
	assert.Positive(t, rep.RawCPUPerProbeUS)
	assert.Positive(t, rep.Efficiency)
	assertTargetView(t, cfg, rep)
}

// TestFloodCountsEveryAnswer floods vigil serve's API beside a CPU hog:
// every request of each kind is counted under its status, and none breaks
// the rule.
func TestFloodCountsEveryAnswer(t *testing.T) {
	if testing.Short() {
		t.Skip("runs vigil serve for seconds")
	}
	rep := runBinary(t, "--serve", "--instances", "100", "--type", "tcp", "--interval", "1s", "--timeout", "500ms",
		"--start-period", "0", "--duration", "6s", "--raw-for", "300ms", "--api-clients", "16", "--hog", "0.1")
	require.NotNil(t, rep.API)
	a := rep.API
	assert.Equal(t, 16, a.Clients)
	assert.Zero(t, a.Violations)
	assert.InDelta(t, float64(a.Requests)/rep.DurationS, a.PerSecond, a.PerSecond*0.05)
	var total uint64
	for _, kind := range floodKinds {
		k, ok := a.Kinds[kind]
		require.True(t, ok, kind)
		assert.Positive(t, k.Requests, kind)
		var counted uint64
		for code, n := range k.Statuses {
			counted += n
			c, err := strconv.Atoi(code)
			require.NoError(t, err, "%s: %s", kind, code)
			assert.True(t, c == 200 || c == 201 || c == 503, "%s: %d", kind, c)
		}
		assert.Equal(t, k.Requests, counted, "%s: every answer counted under its status", kind)
		assert.Positive(t, k.P50MS, kind)
		assert.GreaterOrEqual(t, k.P99MS, k.P50MS, kind)
		total += k.Requests
	}
	assert.Equal(t, a.Requests, total)
	assert.Equal(t, 0.1, rep.HogShare)
	assert.Positive(t, rep.HogCPUPercent, "the hog's own CPU")
	assert.Zero(t, rep.FalseAlarms)
	assert.LessOrEqual(t, rep.Target.Starved, rep.Target.Healthy/3)
}

// TestKilledLoadTestLeavesNoChild kills the load test with SIGKILL while it
// measures: its target process, its vigil serve and its hog die with it.
func TestKilledLoadTestLeavesNoChild(t *testing.T) {
	if testing.Short() {
		t.Skip("runs vigil serve")
	}
	cmd := exec.Command(vigilBinary(t), "loadtest", "--serve", "--instances", "50", "--interval", "1s", "--timeout", "500ms",
		"--start-period", "0", "--duration", "60s", "--raw-for", "200ms", "--hog", "0.05")
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir()) // what the killed load test leaves goes with the test
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	require.NoError(t, cmd.Start())
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var kids []int
	require.Eventually(t, func() bool {
		kids = descendants(cmd.Process.Pid)
		return len(kids) >= 3 && strings.Contains(stderr.String(), "registered") // targets, vigil serve, hog
	}, 30*time.Second, 50*time.Millisecond, "children %v, stderr:\n%s", kids, stderr.String())
	time.Sleep(200 * time.Millisecond)
	kids = descendants(cmd.Process.Pid)
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	assert.Eventually(t, func() bool {
		for _, pid := range kids {
			if alive(pid) {
				return false
			}
		}
		return true
	}, 10*time.Second, 20*time.Millisecond, "children of the killed load test: %v", kids)
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader at once.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// descendants are the pids of pid's children and theirs, from /proc.
func descendants(pid int) []int {
	parent := map[int]int{}
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		s := string(b)
		rest := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(rest) < 2 {
			continue
		}
		p, _ := strconv.Atoi(rest[1])
		me, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		parent[me] = p
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		for c, pp := range parent {
			if pp == p {
				out = append(out, c)
				walk(c)
			}
		}
	}
	walk(pid)
	return out
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	rest := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	return len(rest) > 0 && rest[0] != "Z" && rest[0] != "X"
}

// TestLaunchedChildDiesWithItsParent runs this test binary as a parent that
// launches `sleep 60` and kills that parent: the sleep dies too, though
// nothing of it (no pipe, no signal) leads back to its parent.
func TestLaunchedChildDiesWithItsParent(t *testing.T) {
	if os.Getenv("VIGIL_LAUNCH_PARENT") == "1" {
		cmd := exec.Command("sleep", "60")
		if _, err := launch(cmd); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		runtime.GC() // the runtime goes on with its threads; the launching one stays
		fmt.Println(cmd.Process.Pid)
		select {}
	}
	parent := exec.Command(os.Args[0], "-test.run=^TestLaunchedChildDiesWithItsParent$")
	parent.Env = append(os.Environ(), "VIGIL_LAUNCH_PARENT=1")
	out, err := parent.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, parent.Start())
	defer func() { _ = parent.Process.Kill(); _ = parent.Wait() }()
	var pid int
	_, err = fmt.Fscan(out, &pid)
	require.NoError(t, err)
	require.True(t, alive(pid))
	require.NoError(t, parent.Process.Signal(syscall.SIGKILL))
	_ = parent.Wait()
	assert.Eventually(t, func() bool { return !alive(pid) }, 5*time.Second, 10*time.Millisecond)
	if alive(pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}
