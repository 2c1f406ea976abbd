package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
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
)

// soakSample is what the soak reads of vigil serve after a start.
type soakSample struct {
	Restart    int     `json:"restart"`
	ReadyS     float64 `json:"ready_s"` // start → /readyz
	RSSMiB     float64 `json:"rss_mib"`
	Goroutines int     `json:"goroutines"`
	FDs        int     `json:"fds"`
}

// TestSoak runs vigil serve for VIGIL_SOAK (e.g. 60m) at VIGIL_SOAK_INSTANCES
// (default 100 000) TCP instances with 5 % of the targets flipping, a SIGKILL
// and restart every VIGIL_SOAK_EVERY (default 5m) and a SIGTERM at the end,
// and checks that every acknowledged spec is there after each start, the
// event sequence has no gaps, RSS after each restart is within 10 % of the
// first, and goroutines and file descriptors do not grow. `make soak`; not
// part of `make test`.
func TestSoak(t *testing.T) {
	total, err := time.ParseDuration(os.Getenv("VIGIL_SOAK"))
	if err != nil || total <= 0 {
		t.Skip("VIGIL_SOAK (a duration) runs the soak: make soak")
	}
	n := envInt(t, "VIGIL_SOAK_INSTANCES", 100000)
	every := 5 * time.Minute
	if v := os.Getenv("VIGIL_SOAK_EVERY"); v != "" {
		every, err = time.ParseDuration(v)
		require.NoError(t, err, "VIGIL_SOAK_EVERY")
	}
	ctx := context.Background()

	// targets: one listener for the steady 95 %, one that flips for the rest
	steady, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go acceptAndClose(steady)
	// the flipping target listens on an address of its own: while it is
	// down, a probe's ephemeral port (bound on 127.0.0.1) may be its port
	const flipIP = "127.0.0.3"
	flipPort := freePortOn(t, flipIP)
	var flipL atomic.Pointer[net.Listener]
	flipUp := func() {
		l, err := net.Listen("tcp", flipIP+":"+strconv.Itoa(flipPort))
		for try := 0; err != nil && try < 50; try++ {
			time.Sleep(100 * time.Millisecond)
			l, err = net.Listen("tcp", flipIP+":"+strconv.Itoa(flipPort))
		}
		if !assert.NoError(t, err, "the flipping target comes back") {
			return
		}
		flipL.Store(&l)
		go acceptAndClose(l)
	}
	flipUp()
	stopFlip := make(chan struct{})
	var flips atomic.Int64
	go func() { // down a minute, up a minute
		for {
			select {
			case <-stopFlip:
				return
			case <-time.After(time.Minute):
			}
			if l := flipL.Swap(nil); l != nil {
				_ = (*l).Close()
			} else {
				flipUp()
			}
			flips.Add(1)
		}
	}()
	defer close(stopFlip)

	dir := t.TempDir()
	listen := "127.0.0.1:" + strconv.Itoa(freePort(t))
	started := time.Now()
	p := startVigilWith(t, dir, "--token", e2eToken, "--listen", listen)
	spec := func(i int) client.InstanceInput {
		ip, port := "127.0.0.1", steady.Addr().(*net.TCPAddr).Port
		if i%20 == 0 {
			ip, port = flipIP, flipPort
		}
		return client.InstanceInput{State: client.LifecycleRunning, Network: &client.Network{Ip: ip},
			HealthCheck: &client.HealthCheck{Tcp: &client.TCPCheck{Port: port}, Interval: ptr("10s"), Timeout: ptr("2s"),
				StartPeriod: ptr("0s")}}
	}

	// register, 32 at a time; acked holds every id whose PUT succeeded
	var acked sync.Map
	var ackedN atomic.Int64
	register := func(c *client.Client, from, to int) {
		var wg sync.WaitGroup
		next := atomic.Int64{}
		next.Store(int64(from))
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1) - 1); i < to; i = int(next.Add(1) - 1) {
					id := fmt.Sprintf("vm-%06d", i)
					if _, _, err := c.Put(ctx, id, spec(i)); err == nil {
						acked.Store(id, true)
						ackedN.Add(1)
					}
				}
			}()
		}
		wg.Wait()
	}
	register(p.c, 0, n)
	require.EqualValues(t, n, ackedN.Load(), "every registration acknowledged")
	t.Logf("registered %d in %s", n, time.Since(started).Round(time.Second))

	// the event stream, followed across every restart by the client's
	// resuming iterator
	c, err := client.New("http://"+listen, client.WithToken(e2eToken), client.WithRetry(100*time.Millisecond))
	require.NoError(t, err)
	sctx, stopStream := context.WithCancel(ctx)
	var seqMu sync.Mutex
	var seqs []int64
	resets := 0
	streamDone := make(chan struct{})
	go func() {
		defer close(streamDone)
		for ev, err := range c.Events(sctx, client.EventsOptions{After: "0"}) {
			if err != nil {
				continue // connection refused while vigil restarts: the iterator retries
			}
			seqMu.Lock()
			switch {
			case ev.Reset != nil:
				resets++
			case ev.Transition != nil:
				seqs = append(seqs, ev.Transition.Seq)
			}
			seqMu.Unlock()
		}
	}()

	// a writer that keeps registering, one a second, while vigil is killed
	// under it
	wctx, stopWriter := context.WithCancel(ctx)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for i := n; wctx.Err() == nil; i++ {
			id := fmt.Sprintf("vm-%06d", i)
			if _, _, err := c.Put(wctx, id, spec(i)); err == nil {
				acked.Store(id, true)
				ackedN.Add(1)
			}
			time.Sleep(time.Second)
		}
	}()

	var samples []soakSample
	sample := func(restart int, ready time.Duration) {
		time.Sleep(time.Minute) // settled: one interval's probes and the first checkpoints
		m := scrape(t, p)
		s := soakSample{Restart: restart, ReadyS: ready.Seconds(), RSSMiB: m["process_resident_memory_bytes"] / (1 << 20),
			Goroutines: int(m["go_goroutines"]), FDs: int(m["process_open_fds"])}
		samples = append(samples, s)
		b, _ := json.Marshal(s)
		t.Logf("sample %s", b)
	}
	checkSpecs := func() {
		// what was acknowledged before the list began: the writer goes on
		// meanwhile, and what it adds after a page has passed is not missing
		var want []string
		acked.Range(func(k, _ any) bool { want = append(want, k.(string)); return true })
		have := map[string]bool{}
		for in, err := range c.All(ctx, client.ListOptions{Limit: 1000}) {
			require.NoError(t, err)
			have[in.Id] = true
		}
		var missing []string
		for _, id := range want {
			if !have[id] {
				missing = append(missing, id)
			}
		}
		assert.Empty(t, missing, "acknowledged specs missing after a start")
	}
	sample(0, time.Since(started))

	for restart := 1; time.Since(started)+every < total; restart++ {
		time.Sleep(every - time.Minute)
		require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
		<-p.done
		began := time.Now()
		p = startVigilWith(t, dir, "--token", e2eToken, "--listen", listen)
		ready := time.Since(began)
		checkSpecs()
		sample(restart, ready)
	}
	stopWriter()
	<-writerDone
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	if err := <-p.done; err != nil {
		for _, l := range p.logs {
			if lv := l["level"]; lv == "warn" || lv == "error" {
				t.Logf("vigil logged %v", l)
			}
		}
		require.NoError(t, err, "a clean stop")
	}
	p = startVigilWith(t, dir, "--token", e2eToken, "--listen", listen)
	checkSpecs()
	time.Sleep(2 * time.Second) // the stream catches up
	stopStream()
	<-streamDone

	seqMu.Lock()
	defer seqMu.Unlock()
	assert.Zero(t, resets, "the stream never lost its place")
	gaps := 0
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			gaps++
			t.Logf("gap: %d then %d", seqs[i-1], seqs[i])
		}
	}
	assert.Zero(t, gaps, "the event sequence has no gaps")
	assert.NotEmpty(t, seqs)
	if len(seqs) > 0 {
		assert.EqualValues(t, 1, seqs[0])
	}
	first := samples[1:]
	if len(first) > 0 {
		base := first[0]
		for _, s := range first[1:] {
			// no growth: a later start may well need less than the first
			// after the registration burst (its write-ahead log replayed
			// into memtables not yet flushed), never 10 % more
			assert.LessOrEqual(t, s.RSSMiB, base.RSSMiB*1.10, "RSS after restart %d within 10 %% of the first", s.Restart)
			assert.LessOrEqual(t, s.Goroutines, base.Goroutines+20, "goroutines after restart %d", s.Restart)
			assert.LessOrEqual(t, s.FDs, base.FDs+20, "file descriptors after restart %d", s.Restart)
		}
	}
	b, _ := json.Marshal(map[string]any{"instances": n, "acked": ackedN.Load(), "events": len(seqs), "gaps": gaps,
		"flips": flips.Load(), "samples": samples, "duration_s": time.Since(started).Seconds()})
	fmt.Println(string(b))
}

// acceptAndClose is a target: every connection is accepted and closed.
func acceptAndClose(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		_ = c.Close()
	}
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, name)
	return n
}

// scrape reads the process's /metrics: each unlabelled sample's value.
func scrape(t *testing.T, p *proc) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, line := range strings.Split(metricsText(t, p), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && !strings.HasPrefix(f[0], "#") && !strings.Contains(f[0], "{") {
			if v, err := strconv.ParseFloat(f[1], 64); err == nil {
				out[f[0]] = v
			}
		}
	}
	return out
}
