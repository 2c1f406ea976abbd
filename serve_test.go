package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/internal/vigilbin"
)

// serveProc is one `vigil serve` run as a subprocess by these tests.
type serveProc struct {
	cmd    *exec.Cmd
	listen string        // the "listen" field of its "serving" line
	exited chan struct{} // closed once stderr is drained and the process waited for
	err    error         // Wait's result, set before exited is closed

	mu    sync.Mutex
	lines []string // every stderr line so far
}

// consoleServing is the console writer's "serving" line.
var consoleServing = regexp.MustCompile(` INF serving .*\blisten=(\S+)`)

// serveEnv is the test process's environment without anything that would
// change how vigil serve runs (VIGIL_*, systemd's variables), plus extra.
func serveEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "VIGIL_"), k == "NOTIFY_SOCKET", k == "WATCHDOG_USEC", k == "WATCHDOG_PID":
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// startServe runs `vigil serve args...` and waits for its "serving" line (in
// the JSON or the console format). The process is killed at cleanup if it
// still runs.
func startServe(t *testing.T, env []string, args ...string) *serveProc {
	t.Helper()
	bin, err := vigilbin.Path()
	require.NoError(t, err)
	cmd := exec.Command(bin, append([]string{"serve"}, args...)...)
	cmd.Env = env
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &serveProc{cmd: cmd, exited: make(chan struct{})}
	serving := make(chan string, 1)
	go func() {
		defer close(p.exited)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.lines = append(p.lines, line)
			p.mu.Unlock()
			var l struct{ Message, Listen string }
			if json.Unmarshal([]byte(line), &l) == nil && l.Message == "serving" {
				serving <- l.Listen
			} else if m := consoleServing.FindStringSubmatch(line); m != nil {
				serving <- m[1]
			}
		}
		p.err = cmd.Wait()
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
	select {
	case p.listen = <-serving:
	case <-p.exited:
		require.FailNow(t, "vigil serve exited before serving", "%v\n%s", p.err, strings.Join(p.stderr(), "\n"))
	case <-time.After(15 * time.Second):
		require.FailNow(t, "vigil serve did not start serving within 15s", strings.Join(p.stderr(), "\n"))
	}
	return p
}

func (p *serveProc) stderr() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// stop sends sig and returns the exit code once the process has exited.
func (p *serveProc) stop(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig))
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		require.FailNow(t, "vigil serve did not exit within 10s", "signal %v", sig)
	}
	return p.cmd.ProcessState.ExitCode()
}

// runServeToExit runs a `vigil serve` that is expected to fail at start and
// returns its exit code and stderr.
func runServeToExit(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	bin, err := vigilbin.Path()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"serve"}, args...)...)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	require.NoError(t, ctx.Err(), "vigil serve was still running after 10s:\n%s", stderr.String())
	var ee *exec.ExitError
	if err != nil {
		require.ErrorAs(t, err, &ee)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// unixClient is an HTTP client whose every connection goes to the socket.
func unixClient(t *testing.T, path string) *http.Client {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// serveCall sends one request and returns the status and the decoded JSON body.
func serveCall(t *testing.T, c *http.Client, method, url, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out map[string]any
	if len(b) > 0 {
		require.NoError(t, json.Unmarshal(b, &out), "%s %s answered %s", method, url, b)
	}
	return resp.StatusCode, out
}

func waitServeReady(t *testing.T, c *http.Client, base string) {
	t.Helper()
	require.Eventually(t, func() bool {
		resp, err := c.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 10*time.Second, 20*time.Millisecond, "GET /readyz answers 200")
}

// tcpTarget is a TCP port that accepts connections (the kernel completes the
// handshake) for the test's whole run.
func tcpTarget(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

func tcpPolicy(port int) string {
	return `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":` + strconv.Itoa(port) + `}}}`
}

// shortTempDir is a temp dir with a path short enough for a Unix socket
// (sun_path holds 108 bytes; t.TempDir's paths can be longer).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "vg")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// TestServeUnixSocket: the API on a Unix socket of mode 0660 without a token;
// a second server on the socket is refused while the first serves; a socket
// left behind by SIGKILL is removed by the next start; SIGTERM removes it.
func TestServeUnixSocket(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	port := tcpTarget(t)
	sock := filepath.Join(shortTempDir(t), "api.sock")
	addr := "unix://" + sock
	dataDir := t.TempDir()
	env := serveEnv()

	first := startServe(t, env, "--listen", addr, "--data-dir", dataDir)
	assert.Equal(t, addr, first.listen, `the "serving" line's listen field`)
	fi, err := os.Stat(sock)
	require.NoError(t, err)
	assert.NotZero(t, fi.Mode()&os.ModeSocket, "a socket: %v", fi.Mode())
	assert.Equal(t, os.FileMode(0o660), fi.Mode().Perm())

	c := unixClient(t, sock)
	const base = "http://vigil"
	waitServeReady(t, c, base)
	code, out := serveCall(t, c, "PUT", base+"/v1/instances/vm-1", tcpPolicy(port))
	require.Equal(t, http.StatusCreated, code, out)
	code, out = serveCall(t, c, "GET", base+"/v1/instances/vm-1", "")
	require.Equal(t, http.StatusOK, code, out)
	assert.Equal(t, "vm-1", out["id"])
	assert.Equal(t, "Running", out["state"])
	assert.Equal(t, map[string]any{"port": float64(port)}, out["health_check"].(map[string]any)["tcp"])

	// a second server on the same socket (its own data) is refused, and the
	// first keeps its socket
	code, stderr := runServeToExit(t, env, "--listen", addr, "--data-dir", t.TempDir())
	assert.Equal(t, 1, code, stderr)
	assert.Contains(t, stderr, "in use")
	code, out = serveCall(t, c, "GET", base+"/v1/instances/vm-1", "")
	assert.Equal(t, http.StatusOK, code, "the first server still answers on its socket: %v", out)

	// SIGKILL leaves the socket file behind; the next start removes it
	assert.Equal(t, -1, first.stop(t, syscall.SIGKILL), "killed by the signal")
	fi, err = os.Lstat(sock)
	require.NoError(t, err, "SIGKILL leaves the socket file")
	require.NotZero(t, fi.Mode()&os.ModeSocket)
	c.Transport.(*http.Transport).CloseIdleConnections()

	again := startServe(t, env, "--listen", addr, "--data-dir", dataDir)
	assert.Equal(t, addr, again.listen)
	fi, err = os.Stat(sock)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o660), fi.Mode().Perm())
	waitServeReady(t, c, base)
	code, out = serveCall(t, c, "GET", base+"/v1/instances/vm-1", "")
	assert.Equal(t, http.StatusOK, code, "the instance acknowledged before SIGKILL: %v", out)
	c.Transport.(*http.Transport).CloseIdleConnections()

	assert.Equal(t, 0, again.stop(t, syscall.SIGTERM), strings.Join(again.stderr(), "\n"))
	_, err = os.Lstat(sock)
	assert.ErrorIs(t, err, os.ErrNotExist, "a clean shutdown removes its socket")
}

// notifySocket is the NOTIFY_SOCKET end of systemd: it reads the
// datagrams vigil sends.
type notifySocket struct {
	t    *testing.T
	conn *net.UnixConn
	path string
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(shortTempDir(t), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return &notifySocket{t: t, conn: conn, path: path}
}

// next returns the next datagram, or "" if none comes within d.
func (n *notifySocket) next(d time.Duration) string {
	n.t.Helper()
	require.NoError(n.t, n.conn.SetReadDeadline(time.Now().Add(d)))
	buf := make([]byte, 4096)
	k, _, err := n.conn.ReadFromUnix(buf)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return ""
	}
	require.NoError(n.t, err)
	return string(buf[:k])
}

// until reads datagrams until want arrives (failing after d) and returns
// the ones before it.
func (n *notifySocket) until(want string, d time.Duration) []string {
	n.t.Helper()
	deadline := time.Now().Add(d)
	var before []string
	for {
		left := time.Until(deadline)
		require.Positive(n.t, left, "no %q within %v; got %q", want, d, before)
		msg := n.next(left)
		if msg == want {
			return before
		}
		if msg != "" {
			before = append(before, msg)
		}
	}
}

// TestServeSystemdNotify: with NOTIFY_SOCKET set, READY=1 once every stored
// instance has its actor, WATCHDOG=1 every WatchdogSec/2, STOPPING=1 on
// SIGTERM and nothing after it; exit 0.
func TestServeSystemdNotify(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	port := tcpTarget(t)
	dataDir := t.TempDir()

	// a stored instance, so that READY=1 has an actor to wait for
	p := startServe(t, serveEnv(), "--listen", "127.0.0.1:0", "--data-dir", dataDir)
	waitServeReady(t, http.DefaultClient, "http://"+p.listen)
	code, out := serveCall(t, http.DefaultClient, "PUT", "http://"+p.listen+"/v1/instances/vm-1", tcpPolicy(port))
	require.Equal(t, http.StatusCreated, code, out)
	require.Equal(t, 0, p.stop(t, syscall.SIGTERM))

	ns := newNotifySocket(t)
	const watchdog = 200 * time.Millisecond
	p = startServe(t, serveEnv("NOTIFY_SOCKET="+ns.path, "WATCHDOG_USEC="+strconv.Itoa(int(watchdog.Microseconds()))),
		"--listen", "127.0.0.1:0", "--data-dir", dataDir)
	base := "http://" + p.listen

	before := ns.until("READY=1", 10*time.Second)
	for _, msg := range before {
		assert.Equal(t, "WATCHDOG=1", msg, "before READY=1")
	}
	code, out = serveCall(t, http.DefaultClient, "GET", base+"/readyz", "")
	assert.Equal(t, http.StatusOK, code, "GET /readyz once READY=1 is sent: %v", out)
	code, out = serveCall(t, http.DefaultClient, "GET", base+"/v1/instances/vm-1", "")
	assert.Equal(t, http.StatusOK, code, "the stored instance has its actor: %v", out)

	// WATCHDOG=1 every 100ms: two within a couple of seconds, and nothing else
	watchdogs := 0
	for _, msg := range before {
		if msg == "WATCHDOG=1" {
			watchdogs++
		}
	}
	for watchdogs < 2 {
		more := ns.until("WATCHDOG=1", 2*time.Second)
		assert.Empty(t, more, "only WATCHDOG=1 after READY=1")
		watchdogs++
	}

	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	for _, msg := range ns.until("STOPPING=1", 10*time.Second) {
		assert.Equal(t, "WATCHDOG=1", msg, "between READY=1 and STOPPING=1")
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		require.FailNow(t, "vigil serve did not exit within 10s of SIGTERM")
	}
	assert.Equal(t, 0, p.cmd.ProcessState.ExitCode(), strings.Join(p.stderr(), "\n"))
	// the process is gone, so whatever it sent is already queued
	assert.Empty(t, ns.next(50*time.Millisecond), "nothing after STOPPING=1")

	var sawReady bool
	for _, line := range p.stderr() {
		sawReady = sawReady || strings.Contains(line, `"message":"systemd_ready"`)
		assert.NotContains(t, line, "systemd_notify_failed")
		assert.NotContains(t, line, "systemd_watchdog")
	}
	assert.True(t, sawReady, "a systemd_ready line")
}

var (
	logTimeRe  = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}(Z|[+-]\d{2}:\d{2})$`)
	logEventRe = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
)

// A boot collects garbage at a target of its own (GOGC's when that is set)
// and puts the steady one back once it is ready, before it gives the heap
// back; the process's metrics say which target holds.
func TestServeBootsAtAGCTargetOfItsOwn(t *testing.T) {
	_, inherited := os.LookupEnv("GOGC")
	for _, c := range []struct {
		env          []string
		boot, steady int
		ownGOGC      bool // GOGC set by the case, not inherited
	}{
		{serveEnv(), bootGCPercent, defaultGCPercent, false},
		{serveEnv("GOGC=80"), 80, 80, true},
	} {
		if inherited && !c.ownGOGC {
			continue // the environment's GOGC holds throughout
		}
		p := startServe(t, c.env, "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--log-level", "info")
		base := "http://" + p.listen
		waitServeReady(t, http.DefaultClient, base)
		var line map[string]any
		require.Eventually(t, func() bool {
			for _, l := range p.stderr() {
				var rec map[string]any
				if json.Unmarshal([]byte(l), &rec) == nil && rec["message"] == "boot_memory_released" {
					line = rec
					return true
				}
			}
			return false
		}, 10*time.Second, 20*time.Millisecond, "a boot_memory_released line")
		assert.Equal(t, float64(c.boot), line["boot_gc_percent"], "%v", line)
		assert.Equal(t, float64(c.steady), line["gc_percent"], "%v", line)
		resp, err := http.Get(base + "/metrics")
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		assert.Contains(t, string(body), fmt.Sprintf("\ngo_gc_gogc_percent %d\n", c.steady))
		require.Equal(t, 0, p.stop(t, syscall.SIGTERM))
	}
}

// TestServeLogs: every stderr line at debug level is one JSON object without
// a duplicate key, with a millisecond timestamp and a snake_case event as
// its message; request lines carry duration_ms and, for a 4xx, error_code
// and field.
// TestServeReleasesTheHeapABurstOfRegistrationsLeft registers 2 000
// instances in two batches; once their number has stayed put for the quiet
// period, vigil returns the free heap to the system, once.
func TestServeReleasesTheHeapABurstOfRegistrationsLeft(t *testing.T) {
	port := tcpTarget(t)
	p := startServe(t, serveEnv(), "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--log-level", "info")
	base := "http://" + p.listen
	waitServeReady(t, http.DefaultClient, base)
	for b := range 2 {
		var body strings.Builder
		body.WriteString(`{"instances":[`)
		for i := range 1000 {
			if i > 0 {
				body.WriteString(",")
			}
			fmt.Fprintf(&body, `{"id":"vm-%d-%d",%s`, b, i, tcpPolicy(port)[1:])
		}
		body.WriteString(`]}`)
		code, out := serveCall(t, http.DefaultClient, "POST", base+"/v1/instances:batch", body.String())
		require.Equal(t, http.StatusOK, code, out)
		require.Equal(t, float64(1000), out["created"], out)
	}
	released := func() []map[string]any {
		var out []map[string]any
		for _, line := range p.stderr() {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["message"] == "memory_released" {
				out = append(out, rec)
			}
		}
		return out
	}
	require.Eventually(t, func() bool { return len(released()) > 0 }, 30*time.Second, 100*time.Millisecond,
		"a memory_released line once the registrations have stopped")
	rec := released()[0]
	assert.Equal(t, float64(2000), rec["registered"], "the burst's instances: %v", rec)
	assert.Positive(t, rec["released_bytes"], "%v", rec)
	assert.IsType(t, float64(0), rec["took_ms"], "%v", rec)
	time.Sleep(2 * time.Second)
	assert.Len(t, released(), 1, "one release for one burst")
	require.Equal(t, 0, p.stop(t, syscall.SIGTERM))
}

func TestServeLogs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	port := tcpTarget(t)
	p := startServe(t, serveEnv(), "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--log-level", "debug")
	base := "http://" + p.listen
	waitServeReady(t, http.DefaultClient, base)
	code, out := serveCall(t, http.DefaultClient, "PUT", base+"/v1/instances/vm-1", tcpPolicy(port))
	require.Equal(t, http.StatusCreated, code, out)
	code, out = serveCall(t, http.DefaultClient, "PUT", base+"/v1/instances/vm-2", `{"STATE":"Running"}`)
	require.Equal(t, http.StatusBadRequest, code, out)
	require.Equal(t, "STATE", out["error"].(map[string]any)["field"])
	code, out = serveCall(t, http.DefaultClient, "GET", base+"/v1/instances/vm-missing", "")
	require.Equal(t, http.StatusNotFound, code, out)
	// once ready, the heap the boot left free goes back to the system
	require.Eventually(t, func() bool { return strings.Contains(strings.Join(p.stderr(), "\n"), `"boot_memory_released"`) },
		10*time.Second, 20*time.Millisecond, "a boot_memory_released line")
	require.Equal(t, 0, p.stop(t, syscall.SIGTERM))

	lines := p.stderr()
	require.NotEmpty(t, lines)
	requests := map[string]map[string]any{} // "METHOD path status" → its line
	events := map[string]int{}
	for i, line := range lines {
		var rec map[string]any
		if !assert.NoError(t, jsonv2.Unmarshal([]byte(line), &rec), "line %d is one JSON object with unique keys: %s", i, line) {
			continue
		}
		ts, _ := rec["time"].(string)
		assert.Regexp(t, logTimeRe, ts, "line %d: time with milliseconds: %s", i, line)
		_, err := time.Parse(logTimeFormat, ts)
		assert.NoError(t, err, "line %d", i)
		msg, _ := rec["message"].(string)
		assert.Regexp(t, logEventRe, msg, "line %d: message is a snake_case event: %s", i, line)
		events[msg]++
		assert.Contains(t, []any{"debug", "info", "warn", "error"}, rec["level"], "line %d: %s", i, line)
		switch msg {
		case "badger_log", "protoactor_log":
			assert.NotEmpty(t, rec["detail"], "line %d: the library's text is the detail: %s", i, line)
		case "scheduler_closed":
			for _, f := range []string{"actors_ms", "probes_ms", "flush_ms", "took_ms"} {
				assert.IsType(t, float64(0), rec[f], "line %d: %s is a number: %s", i, f, line)
			}
		case "scheduler_started":
			for _, f := range []string{"load_ms", "spawn_ms"} {
				assert.IsType(t, float64(0), rec[f], "line %d: %s is a number: %s", i, f, line)
			}
		case "store_closed":
			assert.IsType(t, float64(0), rec["took_ms"], "line %d: %s", i, line)
		case "boot_memory_released":
			assert.IsType(t, float64(0), rec["released_bytes"], "line %d: %s", i, line)
			assert.Positive(t, rec["heap_in_use_bytes"], "line %d: %s", i, line)
			// the boot collected at a target of its own, and the steady
			// one is back once it is ready
			if _, set := os.LookupEnv("GOGC"); !set {
				assert.Equal(t, float64(bootGCPercent), rec["boot_gc_percent"], "line %d: %s", i, line)
				assert.Equal(t, float64(defaultGCPercent), rec["gc_percent"], "line %d: %s", i, line)
			}
		case "request":
			assert.IsType(t, float64(0), rec["duration_ms"], "line %d: duration_ms is a number: %s", i, line)
			assert.IsType(t, float64(0), rec["status"], "line %d: %s", i, line)
			status, _ := rec["status"].(float64)
			if status < 400 {
				assert.NotContains(t, rec, "error_code", "line %d: %s", i, line)
			} else {
				assert.NotEmpty(t, rec["error_code"], "line %d: a %v has error_code: %s", i, status, line)
			}
			requests[rec["method"].(string)+" "+rec["path"].(string)+" "+strconv.Itoa(int(status))] = rec
		}
	}
	for _, ev := range []string{"serving", "request", "badger_log", "protoactor_log", "boot_memory_released", "scheduler_started", "shutting_down", "scheduler_closed", "store_closed"} {
		assert.Positive(t, events[ev], "a %s line", ev)
	}

	if put := requests["PUT /v1/instances/vm-1 201"]; assert.NotNil(t, put, "the good PUT is logged") {
		assert.NotContains(t, put, "field")
	}
	if bad := requests["PUT /v1/instances/vm-2 400"]; assert.NotNil(t, bad, "the 400 is logged") {
		assert.Equal(t, "invalid_request", bad["error_code"])
		assert.Equal(t, "STATE", bad["field"])
	}
	if missing := requests["GET /v1/instances/vm-missing 404"]; assert.NotNil(t, missing, "the 404 is logged") {
		assert.Equal(t, "not_found", missing["error_code"])
		assert.NotContains(t, missing, "field", "no field names the error")
	}
}

// TestServeConsoleLogs: --log-format console on a pipe has no ANSI colour
// codes, and its lines start with the millisecond timestamp.
func TestServeConsoleLogs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	p := startServe(t, serveEnv(), "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--log-format", "console")
	waitServeReady(t, http.DefaultClient, "http://"+p.listen)
	require.Equal(t, 0, p.stop(t, syscall.SIGTERM))
	lines := p.stderr()
	require.NotEmpty(t, lines)
	for i, line := range lines {
		assert.NotContains(t, line, "\x1b[", "line %d has no ANSI escape: %q", i, line)
		ts, _, _ := strings.Cut(line, " ")
		assert.Regexp(t, logTimeRe, ts, "line %d starts with the time: %q", i, line)
	}
}

// --pprof-listen serves Go's profiles on a loopback address for as long as
// vigil serves, and is refused anywhere else.
func TestServeProfilesOnLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:6060", "localhost:6060", "6060"} {
		code, stderr := runServeToExit(t, serveEnv(), "--data-dir", t.TempDir(), "--pprof-listen", addr)
		assert.Equal(t, 2, code, addr)
		assert.Contains(t, stderr, "--pprof-listen must be a loopback address", addr)
	}

	p := startServe(t, serveEnv(), "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--pprof-listen", "127.0.0.1:0")
	var profiles string
	for _, line := range p.stderr() {
		var l struct{ Message, Listen string }
		if json.Unmarshal([]byte(line), &l) == nil && l.Message == "serving_profiles" {
			profiles = l.Listen
		}
	}
	require.NotEmpty(t, profiles, "a serving_profiles line before serving:\n%s", strings.Join(p.stderr(), "\n"))
	resp, err := http.Get("http://" + profiles + "/debug/pprof/goroutine?debug=1")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, string(body), "goroutine profile: total")
	// the API is not served there
	resp, err = http.Get("http://" + profiles + "/v1/instances")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)

	assert.Equal(t, 0, p.stop(t, syscall.SIGTERM))
	_, err = net.DialTimeout("tcp", profiles, time.Second)
	assert.Error(t, err, "the profiles are not served once vigil has stopped")
}

// A stop's budget grows with the instances to stop, and the whole of it
// fits in the systemd unit's TimeoutStopSec, so systemd never kills a stop
// that vigil still gives time to.
func TestStopBudgetFitsTheUnitsTimeout(t *testing.T) {
	assert.Equal(t, actorStopTimeout, actorStopBudget(0))
	assert.Equal(t, actorStopTimeout+4*time.Second, actorStopBudget(100_000))
	assert.Equal(t, 60*time.Second, actorStopBudget(1_000_000))
	assert.Equal(t, actorStopMax, actorStopBudget(10_000_000))
	unit, err := os.ReadFile("deploy/vigil.service")
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^TimeoutStopSec=(\d+)s$`).FindSubmatch(unit)
	require.NotNil(t, m, "TimeoutStopSec in seconds")
	secs, err := strconv.Atoi(string(m[1]))
	require.NoError(t, err)
	assert.LessOrEqual(t, httpStopTimeout+actorStopMax+storeCloseFloor, stopTimeout, "Badger's close has its floor within the whole")
	assert.Less(t, stopTimeout, time.Duration(secs)*time.Second)
}

// Badger's close is waited for until the stop's bound, at least the floor,
// and as long as it takes when no stop bounds it.
func TestCloseByWaitsUntilTheStopsBound(t *testing.T) {
	slow := func(d time.Duration, err error) func() error {
		return func() error { time.Sleep(d); return err }
	}
	boom := errors.New("boom")
	err, done := closeBy(slow(10*time.Millisecond, boom), time.Now().Add(time.Minute), time.Millisecond)
	assert.True(t, done)
	assert.Equal(t, boom, err)
	began := time.Now()
	_, done = closeBy(slow(time.Minute, nil), time.Now().Add(50*time.Millisecond), time.Millisecond)
	assert.False(t, done, "past the bound")
	assert.Less(t, time.Since(began), 5*time.Second)
	began = time.Now()
	_, done = closeBy(slow(time.Minute, nil), time.Now().Add(-time.Hour), 50*time.Millisecond)
	assert.False(t, done, "the bound long past: the floor")
	assert.GreaterOrEqual(t, time.Since(began), 50*time.Millisecond)
	err, done = closeBy(slow(100*time.Millisecond, nil), time.Time{}, time.Millisecond)
	assert.True(t, done, "no bound")
	assert.NoError(t, err)
}
