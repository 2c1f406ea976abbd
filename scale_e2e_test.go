package main

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/client"
	"github.com/vigilhq/vigil/internal/vigilbin"
)

// TestScaleRegisterAndRestart measures what a VM manager with a large
// fleet sees of one vigil serve (VIGIL_SCALE=100000 sets the fleet;
// skipped without it): N instances with random ids (UUIDs) registered
// through the Go client in batches of 1000 from 4 clients at once (TCP
// probes every 60 s against a loopback target that accepts and closes),
// then a SIGTERM and a restart: the time from the start to /readyz, the
// latency of summary and list pages (by id from a random place; the first
// page of a status filter that matches 1 % of the fleet), and the serve
// process's RSS.
//
//	VIGIL_SCALE=100000 go test -run TestScaleRegisterAndRestart -v -timeout 30m .
func TestScaleRegisterAndRestart(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("VIGIL_SCALE"))
	if n <= 0 {
		t.Skip("VIGIL_SCALE=<instances> runs it")
	}
	ctx := context.Background()
	live := closingTarget(t)
	refused := freePortOn(t, "127.0.0.1") // nothing listens: those instances turn unhealthy
	dir := t.TempDir()
	p := startQuiet(t, dir)
	c, err := client.New(p.url)
	require.NoError(t, err)

	ids := make(chan []client.BatchItem, 8)
	go func() {
		defer close(ids)
		for start := 0; start < n; start += client.MaxBatch {
			items := make([]client.BatchItem, min(client.MaxBatch, n-start))
			for i := range items {
				port := live
				if (start+i)%100 == 0 {
					port = refused
				}
				items[i] = client.BatchItem{ID: uuid(), Instance: client.InstanceInput{State: client.LifecycleRunning,
					Network: &client.Network{Ip: "127.0.0.1"}, HealthCheck: &client.HealthCheck{Tcp: &client.TCPCheck{Port: port},
						Interval: ptr("60s"), Timeout: ptr("1s"), StartPeriod: ptr("0s"), FailureThreshold: ptr(1)}}}
			}
			ids <- items
		}
	}()
	cpu0 := p.cpu(t)
	began := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var slowest time.Duration
	var failed error
	for range 4 {
		wg.Go(func() {
			for items := range ids { // drained to the end, so that a failure does not leave the producer blocked
				t0 := time.Now()
				results, err := c.PutBatchWhenAvailable(ctx, items, time.Minute)
				for _, r := range results {
					err = cmp.Or(err, r.Err)
				}
				mu.Lock()
				slowest = max(slowest, time.Since(t0))
				failed = cmp.Or(failed, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	require.NoError(t, failed)
	took := time.Since(began)
	t.Logf("registered %d in %v: %.0f registrations/s, slowest batch %v, serve CPU %.0f µs a registration, RSS %s",
		n, took.Round(time.Millisecond), float64(n)/took.Seconds(), slowest.Round(time.Millisecond),
		float64((p.cpu(t)-cpu0).Microseconds())/float64(n), p.rss(t))
	require.Eventually(t, func() bool {
		sum, err := c.Summary(ctx)
		return err == nil && sum.Starting == 0 && sum.Unhealthy >= n/100
	}, 5*time.Minute, time.Second, "every instance probed once")
	t.Logf("probed: RSS %s", p.rss(t))

	stopped := time.Now()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, <-p.done)
	t.Logf("stopped in %v: %s", time.Since(stopped).Round(time.Millisecond), strings.Join(p.phases, " "))
	p = startQuiet(t, dir)
	t.Logf("restarted: ready in %v (serving after %v), RSS %s", p.ready.Round(time.Millisecond), p.serving.Round(time.Millisecond), p.rss(t))

	get := func(path string) time.Duration {
		t0 := time.Now()
		resp, err := http.Get(p.url + path)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		return time.Since(t0)
	}
	pct := func(ds []time.Duration) string {
		slices.Sort(ds)
		return fmt.Sprintf("p50 %v p99 %v", ds[len(ds)/2].Round(10*time.Microsecond), ds[len(ds)*99/100].Round(10*time.Microsecond))
	}
	var summary, byID, unhealthy []time.Duration
	for range 200 {
		summary = append(summary, get("/v1/summary"))
		byID = append(byID, get("/v1/instances?limit=100&cursor="+cursorAt(uuid())))
		unhealthy = append(unhealthy, get("/v1/instances?status=unhealthy&limit=100"))
	}
	t.Logf("after the restart: summary %s; a page by id %s; a page of status=unhealthy %s; RSS %s (peak %s)",
		pct(summary), pct(byID), pct(unhealthy), p.rss(t), p.peak(t))
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, <-p.done)
	t.Logf("the restart's phases: %s", strings.Join(p.phases, " "))
}

// cursorAt is the list cursor that starts a page just after id (the
// server's encoding: opaque to clients, known to this test).
func cursorAt(id string) string { return base64.RawURLEncoding.EncodeToString([]byte("v1:" + id)) }

func uuid() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// closingTarget is a loopback TCP target that closes what it accepts.
func closingTarget(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	go acceptAndClose(l)
	go acceptAndClose(l)
	return l.Addr().(*net.TCPAddr).Port
}

// quiet is a vigil serve whose log goes to a file (a fleet's transitions
// are millions of lines).
type quiet struct {
	cmd            *exec.Cmd
	url            string
	done           chan error
	serving, ready time.Duration // from the start
	phases         []string      // a start's and a stop's phases as serve logged them; read after done
}

func startQuiet(t *testing.T, dir string) *quiet {
	t.Helper()
	bin, err := vigilbin.Path()
	require.NoError(t, err)
	port := freePortOn(t, "127.0.0.1")
	logf, err := os.OpenFile(filepath.Join(dir, "..", "serve.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	require.NoError(t, err)
	t.Cleanup(func() { _ = logf.Close() })
	q := &quiet{url: fmt.Sprintf("http://127.0.0.1:%d", port), done: make(chan error, 1)}
	q.cmd = exec.Command(bin, "serve", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--data-dir", dir, "--log-level", "info")
	stderr, err := q.cmd.StderrPipe()
	require.NoError(t, err)
	began := time.Now()
	require.NoError(t, q.cmd.Start())
	serving := make(chan time.Duration, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			switch {
			case strings.Contains(string(line), `"message":"serving"`):
				serving <- time.Since(began)
			case strings.Contains(string(line), `"message":"scheduler_started"`), strings.Contains(string(line), `"message":"scheduler_closed"`),
				strings.Contains(string(line), `"message":"store_closed"`):
				q.phases = append(q.phases, string(line))
			}
			_, _ = logf.Write(append(line, '\n'))
		}
		q.done <- q.cmd.Wait()
	}()
	t.Cleanup(func() {
		if q.cmd.ProcessState == nil {
			_ = q.cmd.Process.Kill()
		}
	})
	for {
		resp, err := http.Get(q.url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				q.ready = time.Since(began)
				break
			}
		}
		require.Less(t, time.Since(began), 5*time.Minute, "ready within 5 minutes")
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case q.serving = <-serving:
	case <-time.After(5 * time.Second):
	}
	return q
}

func (q *quiet) status(t *testing.T, field string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", q.cmd.Process.Pid))
	require.NoError(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return fmt.Sprintf("%d MiB", kb>>10)
		}
	}
	return "?"
}

func (q *quiet) rss(t *testing.T) string  { return q.status(t, "VmRSS") }
func (q *quiet) peak(t *testing.T) string { return q.status(t, "VmHWM") }

// cpu is the CPU time the serve process has used.
func (q *quiet) cpu(t *testing.T) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", q.cmd.Process.Pid))
	require.NoError(t, err)
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ 100
}
