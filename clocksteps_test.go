package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/vigilhq/vigil/client"
)

// requireTimeNamespaces skips the test where the kernel refuses a time
// namespace, saying why; under CI as root, where it must work, it fails.
func requireTimeNamespaces(t *testing.T) {
	t.Helper()
	out, err := exec.Command("unshare", "--time", "--fork", "--monotonic", "3600", "true").CombinedOutput()
	if err == nil {
		return
	}
	if msg := bytes.TrimSpace(out); len(msg) > 0 {
		err = fmt.Errorf("%w: %s", err, msg)
	}
	why := fmt.Sprintf("no time namespace here (`unshare --time --fork --monotonic 3600 true`: %v): it needs "+
		"Linux 5.6 or later built with CONFIG_TIME_NS, util-linux's unshare 2.36 or later, and CAP_SYS_ADMIN", err)
	if os.Getenv("CI") != "" && os.Geteuid() == 0 {
		t.Fatal(why + "; CI runs as root, where time namespaces must work")
	}
	t.Skip(why)
}

// inTimeNamespace is the command that runs its argument in a new time
// namespace whose monotonic and boot clocks read off from the host's by
// these offsets (whole seconds). CLOCK_REALTIME is the host's: a time
// namespace cannot move it.
func inTimeNamespace(mono, boot time.Duration) []string {
	return []string{"unshare", "--time", "--fork", "--kill-child",
		"--monotonic", strconv.FormatInt(int64(mono/time.Second), 10),
		"--boottime", strconv.FormatInt(int64(boot/time.Second), 10)}
}

// child is the pid of the vigil that unshare forked.
func (p *proc) child() int {
	p.t.Helper()
	pid := p.cmd.Process.Pid
	var kids []byte
	require.Eventually(p.t, func() bool {
		kids, _ = os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		return len(bytes.Fields(kids)) > 0
	}, 5*time.Second, 10*time.Millisecond, "unshare's child")
	child, err := strconv.Atoi(string(bytes.Fields(kids)[0]))
	require.NoError(p.t, err)
	return child
}

// monotonicOffset is the offset of pid's time namespace for the monotonic
// clock, as /proc/<pid>/timens_offsets tells.
func monotonicOffset(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/timens_offsets", pid))
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && (f[0] == "monotonic" || f[0] == "1") {
			sec, err := strconv.ParseInt(f[1], 10, 64)
			require.NoError(t, err)
			return time.Duration(sec) * time.Second
		}
	}
	require.FailNow(t, "no monotonic offset", "%s", b)
	return 0
}

// clockReading reads one of the host's clocks.
func clockReading(t *testing.T, id int32) time.Duration {
	t.Helper()
	var ts unix.Timespec
	require.NoError(t, unix.ClockGettime(id, &ts))
	return time.Duration(ts.Nano())
}

// transitionsUntil reads transitions from ch until id turns to; it returns
// that one and every other it read on the way.
func transitionsUntil(t *testing.T, ch <-chan client.Event, id, to string, within time.Duration) (client.Event, []client.Event) {
	t.Helper()
	timeout := time.After(within)
	var others []client.Event
	for {
		select {
		case ev, ok := <-ch:
			require.True(t, ok, "stream ended")
			if deref(ev.InstanceId) == id && string(ev.To) == to {
				return ev, others
			}
			others = append(others, ev)
		case <-timeout:
			require.FailNow(t, "no transition", "%s to %s within %v; saw %+v", id, to, within, others)
		}
	}
}

// TestMonotonicClockShiftsThroughTheBinary runs the real binary in time
// namespaces. A namespace cannot step CLOCK_REALTIME, and stepping the
// host's clock would disturb everything else on it; what it can do is run
// vigil with its monotonic (and boot) clock far from the wall clock, which
// breaks any logic that mixes monotonic readings with wall times, and
// restart vigil on a monotonic clock far behind the one it ran on, as after
// a host reboot, which breaks any monotonic reading that was stored. First
// the monotonic clock is 1000 h ahead of the host's: an instance turns
// healthy at once, one whose VM started 3 s before registration leaves its
// 8 s grace exactly when started_at+8s passes, probes come once a second,
// and next_check_at and the events' times are wall times. Then vigil is
// killed and started again on a monotonic clock that reads a minute, like a
// host just booted: a grace under way ends when its started_at says (not
// anew from the restart, not at once), the healthy instance stays healthy
// with no transition, and probing keeps its cadence. Wall clock steps
// themselves are tested on the injected clock (actors, clock, health).
func TestMonotonicClockShiftsThroughTheBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	requireTimeNamespaces(t)
	ctx := context.Background()
	var okHits atomic.Int64
	ok := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { okHits.Add(1) }))
	defer ok.Close()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer bad.Close()
	portOf := func(s *httptest.Server) int {
		port, err := strconv.Atoi(s.URL[strings.LastIndex(s.URL, ":")+1:])
		require.NoError(t, err)
		return port
	}
	// cadence counts the probes of vm-ok over 5 s: once a second
	cadence := func(p *proc) {
		t.Helper()
		before := okHits.Load()
		time.Sleep(5 * time.Second)
		n := okHits.Load() - before
		assert.GreaterOrEqual(t, n, int64(3), "no stall: probes once a second")
		assert.LessOrEqual(t, n, int64(7), "no burst: probes once a second")
		in, err := p.c.Get(ctx, "vm-ok")
		require.NoError(t, err)
		require.NotNil(t, in.HealthStatus.NextCheckAt)
		assert.WithinDuration(t, time.Now(), *in.HealthStatus.NextCheckAt, 2*time.Second, "next_check_at is a wall time")
	}

	dataDir := t.TempDir()
	ahead := 1000 * time.Hour
	p := startVigilUnder(t, inTimeNamespace(ahead, ahead), dataDir, "--token", e2eToken)
	require.Equal(t, ahead, monotonicOffset(t, p.child()), "vigil runs in the namespace")
	stream, closeStream := p.events("0")
	defer func() { closeStream() }()

	graceStart := time.Now().Add(-3 * time.Second).Truncate(time.Millisecond)
	grace := instance(portOf(bad))
	grace.HealthCheck.StartPeriod, grace.StartedAt = ptr("8s"), &graceStart
	_, _, err := p.c.Put(ctx, "vm-grace", grace)
	require.NoError(t, err)
	_, _, err = p.c.Put(ctx, "vm-ok", instance(portOf(ok)))
	require.NoError(t, err)
	resumeStart := time.Now().Truncate(time.Millisecond)
	resume := instance(portOf(bad))
	resume.HealthCheck.StartPeriod, resume.StartedAt = ptr("20s"), &resumeStart
	_, _, err = p.c.Put(ctx, "vm-resume", resume)
	require.NoError(t, err)

	healthy, _ := transitionsUntil(t, stream, "vm-ok", "healthy", 10*time.Second)
	assert.WithinDuration(t, time.Now(), healthy.At, 5*time.Second, "a transition's time is a wall time")
	unhealthy, _ := transitionsUntil(t, stream, "vm-grace", "unhealthy", 15*time.Second)
	graceLasted := unhealthy.At.Sub(graceStart)
	assert.GreaterOrEqual(t, graceLasted, 8*time.Second, "the grace ends no sooner than started_at+start_period")
	assert.Less(t, graceLasted, 11*time.Second, "and at the first probe after it")
	cadence(p)
	require.Equal(t, "starting", p.status("vm-resume"), "inside its grace")
	require.Less(t, time.Since(resumeStart), 15*time.Second, "the restart comes inside vm-resume's grace")
	last, err := p.c.Get(ctx, "vm-grace")
	require.NoError(t, err)
	require.Equal(t, client.StatusUnhealthy, last.HealthStatus.Status)

	// kill -9, and start again on a monotonic clock that has just booted
	require.NoError(t, syscall.Kill(p.child(), syscall.SIGKILL))
	<-p.done
	closeStream()
	booted := time.Minute
	monoOff := booted - clockReading(t, unix.CLOCK_MONOTONIC)
	p = startVigilUnder(t, inTimeNamespace(monoOff, booted-clockReading(t, unix.CLOCK_BOOTTIME)), dataDir, "--token", e2eToken)
	require.Equal(t, monoOff/time.Second*time.Second, monotonicOffset(t, p.child()), "vigil's monotonic clock reads about a minute")
	stream, closeStream = p.events(strconv.FormatInt(unhealthy.Seq, 10))
	require.Equal(t, "healthy", p.status("vm-ok"), "resumed from the snapshot")
	require.Equal(t, "starting", p.status("vm-resume"), "its grace goes on")

	resumed, others := transitionsUntil(t, stream, "vm-resume", "unhealthy", 30*time.Second)
	resumeLasted := resumed.At.Sub(resumeStart)
	assert.GreaterOrEqual(t, resumeLasted, 20*time.Second, "the grace left at the restart is not cut short")
	assert.Less(t, resumeLasted, 23*time.Second, "nor begun again at the restart")
	cadence(p)
	select {
	case ev := <-stream:
		others = append(others, ev)
	default:
	}
	for _, ev := range others {
		assert.Fail(t, "a transition of the restart", "%s: %s to %s", deref(ev.InstanceId), ev.From, ev.To)
	}
}
