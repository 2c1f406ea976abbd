package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
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

	"github.com/vigilhq/vigil/internal/vigilbin"
)

const e2eToken = "e2e-token"

// proc is one running `vigil serve`.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	url  string
	done chan error
}

func startVigil(t *testing.T, dataDir string) *proc {
	t.Helper()
	bin, err := vigilbin.Path()
	require.NoError(t, err)
	cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--token", e2eToken, "--log-level", "info")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &proc{t: t, cmd: cmd, done: make(chan error, 1)}
	listening := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var line struct{ Message, Listen string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Message == "serving" {
				listening <- line.Listen
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
	require.Eventually(t, func() bool {
		resp, err := http.Get(p.url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 20*time.Millisecond, "ready")
	return p
}

func (p *proc) do(method, path, body string) (int, map[string]any) {
	p.t.Helper()
	req, err := http.NewRequest(method, p.url+path, strings.NewReader(body))
	require.NoError(p.t, err)
	req.Header.Set("Authorization", "Bearer "+e2eToken)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(p.t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return resp.StatusCode, out
}

func (p *proc) status(id string) string {
	code, out := p.do("GET", "/v1/instances/"+id, "")
	if code != http.StatusOK {
		return fmt.Sprint(code)
	}
	return out["health_status"].(map[string]any)["status"].(string)
}

// events opens the event stream and returns its transitions as they come.
func (p *proc) events(lastID string) (<-chan map[string]any, func()) {
	p.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", p.url+"/v1/events", nil)
	require.NoError(p.t, err)
	req.Header.Set("Authorization", "Bearer "+e2eToken)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(p.t, err)
	require.Equal(p.t, http.StatusOK, resp.StatusCode)
	ch := make(chan map[string]any, 1024)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var ev map[string]any
				if json.Unmarshal([]byte(data), &ev) == nil {
					ch <- ev
				}
			}
		}
	}()
	return ch, cancel
}

func nextEvent(t *testing.T, ch <-chan map[string]any, id, to string) map[string]any {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			require.True(t, ok, "stream ended")
			if ev["instance_id"] == id && ev["to"] == to {
				return ev
			}
		case <-timeout:
			require.FailNow(t, "no transition", "%s to %s within 15s", id, to)
		}
	}
}

// TestEndToEnd runs the real binary: register, transition, resume the event
// stream after a reconnect, SIGKILL and restart with nothing acknowledged
// lost, SIGTERM exits 0.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	var up atomic.Bool
	up.Store(true)
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer target.Close()
	port := target.URL[strings.LastIndex(target.URL, ":")+1:]
	policy := `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"http":{"port":` + port +
		`,"path":"/healthz"},"interval":"1s","timeout":"500ms","start_period":"0s","failure_threshold":1}}`

	dataDir := t.TempDir()
	p := startVigil(t, dataDir)
	code, _ := p.do("GET", "/v1/summary", "")
	require.Equal(t, http.StatusOK, code)
	resp, err := http.Get(p.url + "/v1/summary")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "the token is enforced")

	stream, closeStream := p.events("0")
	code, out := p.do("PUT", "/v1/instances/vm-1", policy)
	require.Equal(t, http.StatusCreated, code, out)
	healthy := nextEvent(t, stream, "vm-1", "healthy")
	up.Store(false)
	unhealthy := nextEvent(t, stream, "vm-1", "unhealthy")
	assert.Greater(t, unhealthy["seq"], healthy["seq"])
	assert.Equal(t, "status_mismatch", unhealthy["reason"])
	closeStream()

	// while nobody listens, the target recovers; a reconnect gets what it missed
	up.Store(true)
	require.Eventually(t, func() bool { return p.status("vm-1") == "healthy" }, 15*time.Second, 50*time.Millisecond)
	stream, closeStream = p.events(strconv.FormatFloat(unhealthy["seq"].(float64), 'f', 0, 64))
	missed := nextEvent(t, stream, "vm-1", "healthy")
	assert.Equal(t, unhealthy["seq"].(float64)+1, missed["seq"])
	closeStream()

	// acknowledged registrations survive SIGKILL
	var wg sync.WaitGroup
	var acked sync.Map
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("vm-burst-%d", i)
			if code, _ := p.do("PUT", "/v1/instances/"+id, policy); code == http.StatusCreated {
				acked.Store(id, true)
			}
		}()
	}
	wg.Wait()
	lastSeq := missed["seq"].(float64)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	<-p.done

	p = startVigil(t, dataDir)
	n := 0
	acked.Range(func(k, _ any) bool {
		code, out := p.do("GET", "/v1/instances/"+k.(string), "")
		assert.Equal(t, http.StatusOK, code, "%s lost: %v", k, out)
		n++
		return true
	})
	assert.Equal(t, 40, n)
	assert.Equal(t, "healthy", p.status("vm-1"), "status resumes from the snapshot")
	stream, closeStream = p.events(strconv.FormatFloat(lastSeq, 'f', 0, 64))
	up.Store(false)
	after := nextEvent(t, stream, "vm-1", "unhealthy")
	assert.Greater(t, after["seq"], lastSeq, "sequence numbers continue after the restart")
	closeStream()

	req, err := http.NewRequest("GET", p.url+"/metrics", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+e2eToken)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
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
	for range stream { //nolint:revive // the stream ends with the process
	}
}
