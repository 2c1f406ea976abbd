package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/client"
	"github.com/vigilhq/vigil/internal/vigilbin"
)

const e2eToken = "e2e-token"

// proc is one running `vigil serve`.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	url  string
	c    *client.Client
	done chan error

	mu   sync.Mutex
	logs []map[string]any // every JSON line it logged, in order
}

// logged returns the lines it logged with this message.
func (p *proc) logged(msg string) []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []map[string]any
	for _, l := range p.logs {
		if l["message"] == msg {
			out = append(out, l)
		}
	}
	return out
}

func startVigil(t *testing.T, dataDir string) *proc {
	t.Helper()
	return startVigilWith(t, dataDir, "--token", e2eToken)
}

// startVigilWith starts vigil serve on a free loopback port with these flags.
func startVigilWith(t *testing.T, dataDir string, flags ...string) *proc {
	t.Helper()
	return startVigilUnder(t, nil, dataDir, flags...)
}

// startVigilUnder is startVigilWith with the binary run by the command wrap
// (unshare …, which runs the binary as its child), or directly when wrap is
// empty.
func startVigilUnder(t *testing.T, wrap []string, dataDir string, flags ...string) *proc {
	t.Helper()
	bin, err := vigilbin.Path()
	require.NoError(t, err)
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--log-level", "info"}, flags...)
	cmd := exec.Command(bin, args...)
	if len(wrap) > 0 {
		cmd = exec.Command(wrap[0], append(append(wrap[1:len(wrap):len(wrap)], bin), args...)...)
	}
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &proc{t: t, cmd: cmd, done: make(chan error, 1)}
	listening := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				continue
			}
			p.mu.Lock()
			p.logs = append(p.logs, line)
			p.mu.Unlock()
			if line["message"] == "serving" {
				listen, _ := line["listen"].(string)
				listening <- listen
			}
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	})
	select {
	case addr := <-listening:
		p.url = "http://" + addr
	case err := <-p.done:
		require.FailNow(t, "vigil exited before serving", "%v", err)
	case <-time.After(30 * time.Second):
		require.FailNow(t, "vigil did not start serving within 30s")
	}
	token := ""
	for i, f := range flags {
		if f == "--token" && i+1 < len(flags) {
			token = flags[i+1]
		}
	}
	p.c, err = client.New(p.url, client.WithToken(token), client.WithRetry(50*time.Millisecond))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return p.c.Ready(context.Background()) == nil }, 30*time.Second, 20*time.Millisecond, "ready")
	return p
}

// instance is the e2e tests' HTTP policy against the target on port.
func instance(port int) client.InstanceInput {
	return client.InstanceInput{State: client.LifecycleRunning, Network: &client.Network{Ip: "127.0.0.1"},
		HealthCheck: &client.HealthCheck{Http: &client.HTTPCheck{Port: port, Path: ptr("/healthz")},
			Interval: ptr("1s"), Timeout: ptr("500ms"), StartPeriod: ptr("0s"), FailureThreshold: ptr(1)}}
}

func ptr[T any](v T) *T { return &v }

func (p *proc) status(id string) string {
	in, err := p.c.Get(context.Background(), id)
	if err != nil {
		return err.Error()
	}
	return string(in.HealthStatus.Status)
}

// events follows the event stream after the event after ("" for live only)
// through the client's iterator, which resumes across dropped connections.
func (p *proc) events(after string) (<-chan client.Event, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan client.Event, 1024)
	go func() {
		defer close(ch)
		for ev, err := range p.c.Events(ctx, client.EventsOptions{After: after}) {
			if err == nil && ev.Transition != nil {
				ch <- *ev.Transition
			}
		}
	}()
	return ch, cancel
}

func nextEvent(t *testing.T, ch <-chan client.Event, id, to string) client.Event {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			require.True(t, ok, "stream ended")
			if deref(ev.InstanceId) == id && string(ev.To) == to {
				return ev
			}
		case <-timeout:
			require.FailNow(t, "no transition", "%s to %s within 15s", id, to)
		}
	}
}

// TestEndToEnd runs the real binary through the Go client: register,
// transition, resume the event stream after a reconnect, SIGKILL and restart
// with nothing acknowledged lost, SIGTERM exits 0.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	ctx := context.Background()
	var up atomic.Bool
	up.Store(true)
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer target.Close()
	port, _ := strconv.Atoi(target.URL[strings.LastIndex(target.URL, ":")+1:])
	policy := instance(port)

	dataDir := t.TempDir()
	p := startVigil(t, dataDir)
	_, err := p.c.Summary(ctx)
	require.NoError(t, err)
	anon, err := client.New(p.url)
	require.NoError(t, err)
	_, err = anon.Summary(ctx)
	var ae *client.Error
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusUnauthorized, ae.Status, "the token is enforced")

	stream, closeStream := p.events("0")
	_, created, err := p.c.Put(ctx, "vm-1", policy)
	require.NoError(t, err)
	require.True(t, created)
	healthy := nextEvent(t, stream, "vm-1", "healthy")
	up.Store(false)
	unhealthy := nextEvent(t, stream, "vm-1", "unhealthy")
	assert.Greater(t, unhealthy.Seq, healthy.Seq)
	assert.Equal(t, "status_mismatch", unhealthy.Reason)
	closeStream()

	// while nobody listens, the target recovers; a reconnect gets what it missed
	up.Store(true)
	require.Eventually(t, func() bool { return p.status("vm-1") == "healthy" }, 15*time.Second, 50*time.Millisecond)
	stream, closeStream = p.events(strconv.FormatInt(unhealthy.Seq, 10))
	missed := nextEvent(t, stream, "vm-1", "healthy")
	assert.Equal(t, unhealthy.Seq+1, missed.Seq)
	closeStream()

	// acknowledged registrations survive SIGKILL
	var wg sync.WaitGroup
	var acked sync.Map
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("vm-burst-%d", i)
			if _, created, err := p.c.Put(ctx, id, policy); err == nil && created {
				acked.Store(id, true)
			}
		}()
	}
	wg.Wait()
	lastSeq := missed.Seq
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	<-p.done

	p = startVigil(t, dataDir)
	n := 0
	acked.Range(func(k, _ any) bool {
		_, err := p.c.Get(ctx, k.(string))
		assert.NoError(t, err, "%s lost", k)
		n++
		return true
	})
	assert.Equal(t, 40, n)
	assert.Equal(t, "healthy", p.status("vm-1"), "status resumes from the snapshot")
	stream, closeStream = p.events(strconv.FormatInt(lastSeq, 10))
	up.Store(false)
	after := nextEvent(t, stream, "vm-1", "unhealthy")
	assert.Greater(t, after.Seq, lastSeq, "sequence numbers continue after the restart")
	closeStream()

	metrics, err := p.c.Metrics(ctx)
	require.NoError(t, err)
	for _, name := range []string{"vigil_store_snapshot_writes_total", "vigil_store_commit_seconds_bucket",
		`vigil_instances{status="healthy"}`, `vigil_probes_total{outcome="failure",reason="status_mismatch",type="http"}`,
		"vigil_schedule_lag_seconds_bucket", "process_resident_memory_bytes"} {
		assert.Contains(t, string(metrics), name)
	}

	// SIGTERM with a stream open: exit 0, promptly
	stream, closeStream = p.events("")
	defer closeStream()
	began := time.Now()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-p.done:
		require.NoError(t, err, "exit status")
		assert.Less(t, time.Since(began), 10*time.Second)
	case <-time.After(15 * time.Second):
		require.FailNow(t, "vigil did not exit within 15s of SIGTERM")
	}
	closeStream()
	for range stream { //nolint:revive // the stream ends with the iterator
	}
}

// TestSlowBodyIsCutOffByTheBinary sends a PUT that announces 100 bytes and
// sends 8: the real server cuts it off at its 30 s body deadline.
func TestSlowBodyIsCutOffByTheBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the 30 s body deadline")
	}
	t.Parallel()
	p := startVigil(t, t.TempDir())
	addr := strings.TrimPrefix(p.url, "http://")
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	began := time.Now()
	require.NoError(t, c.SetDeadline(began.Add(45*time.Second)))
	_, err = io.WriteString(c, "PUT /v1/instances/vm-1 HTTP/1.1\r\nHost: vigil\r\nAuthorization: Bearer "+e2eToken+
		"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"state\"")
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	took := time.Since(began)
	assert.Equal(t, http.StatusRequestTimeout, resp.StatusCode)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	assert.InDelta(t, 30, took.Seconds(), 2, "cut off at the 30 s deadline")
}
