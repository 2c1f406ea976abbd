package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/client"
	"github.com/vigilhq/vigil/internal/vigilbin"
)

// etcdServer is a real etcd (Debian's etcd-server) on loopback.
type etcdServer struct {
	t                *testing.T
	dir, url         string
	clientPort, peer int
	cmd              *exec.Cmd
}

func freePortOn(t *testing.T, ip string) int {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startEtcd runs etcd in a temp dir; tests that need one skip, saying so,
// where the machine has none (CI installs it).
func startEtcd(t *testing.T) *etcdServer {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Skip("etcd is not installed (Debian's etcd-server package): the fleet tests need a real etcd")
	}
	e := &etcdServer{t: t, dir: t.TempDir(), clientPort: freePortOn(t, "127.0.0.1"), peer: freePortOn(t, "127.0.0.1")}
	e.url = fmt.Sprintf("http://127.0.0.1:%d", e.clientPort)
	e.start()
	t.Cleanup(e.kill)
	return e
}

func (e *etcdServer) start() {
	e.t.Helper()
	peer := fmt.Sprintf("http://127.0.0.1:%d", e.peer)
	e.cmd = exec.Command("etcd", "--name", "e1", "--data-dir", filepath.Join(e.dir, "data"),
		"--listen-client-urls", e.url, "--advertise-client-urls", e.url,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "e1="+peer)
	logf, err := os.Create(filepath.Join(e.dir, "etcd.log"))
	require.NoError(e.t, err)
	e.cmd.Stdout, e.cmd.Stderr = logf, logf
	require.NoError(e.t, e.cmd.Start())
	require.Eventually(e.t, func() bool {
		resp, err := http.Get(e.url + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 20*time.Second, 50*time.Millisecond, "etcd serves")
}

func (e *etcdServer) kill() {
	if e.cmd != nil && e.cmd.ProcessState == nil {
		_ = e.cmd.Process.Kill()
		_ = e.cmd.Wait()
	}
}

// fleetNode is one `vigil serve` of the fleet.
type fleetNode struct {
	t                  *testing.T
	name, ip, dir, api string
	peerPort           int
	etcd               string
	cmd                *exec.Cmd
	c                  *client.Client
	done               chan error
}

const peerToken = "fleet-test-secret"

func startNode(t *testing.T, name, ip, etcd string) *fleetNode {
	t.Helper()
	n := &fleetNode{t: t, name: name, ip: ip, dir: t.TempDir(), peerPort: freePortOn(t, ip), etcd: etcd}
	n.start()
	t.Cleanup(n.kill)
	return n
}

func (n *fleetNode) start() {
	n.t.Helper()
	bin, err := vigilbin.Path()
	require.NoError(n.t, err)
	listen := n.ip + ":0"
	if n.api != "" {
		listen = n.api // a restart keeps its address
	}
	n.cmd = exec.Command(bin, "serve", "--listen", listen, "--data-dir", n.dir, "--etcd", n.etcd, "--node", n.name,
		"--peer-listen", fmt.Sprintf("%s:%d", n.ip, n.peerPort), "--peer-token", peerToken, "--log-level", "info")
	stderr, err := n.cmd.StderrPipe()
	require.NoError(n.t, err)
	logf, err := os.Create(filepath.Join(logDir(n.t), fmt.Sprintf("%s-%d.log", n.name, time.Now().UnixNano())))
	require.NoError(n.t, err)
	require.NoError(n.t, n.cmd.Start())
	n.done = make(chan error, 1)
	listening := make(chan string, 1)
	cmd := n.cmd
	go func() {
		defer logf.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			_, _ = logf.Write(append(sc.Bytes(), '\n'))
			var line struct{ Message, Listen string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Message == "serving" {
				listening <- line.Listen
			}
		}
		n.done <- cmd.Wait()
	}()
	select {
	case addr := <-listening:
		n.api = addr
	case err := <-n.done:
		require.FailNow(n.t, "vigil exited before serving", "%s: %v", n.name, err)
	case <-time.After(30 * time.Second):
		require.FailNow(n.t, "vigil did not serve within 30s", n.name)
	}
	n.c, err = client.New(n.api, client.WithRetry(50*time.Millisecond))
	require.NoError(n.t, err)
	require.Eventually(n.t, func() bool { return n.c.Ready(context.Background()) == nil }, 30*time.Second, 20*time.Millisecond,
		"%s ready", n.name)
}

func (n *fleetNode) kill() {
	if n.cmd != nil && n.cmd.ProcessState == nil {
		_ = n.cmd.Process.Signal(syscall.SIGKILL)
		<-n.done
	}
}

// arrivals is an HTTP target that records when each instance's probes
// arrive (the path names the instance) and answers 200.
type arrivals struct {
	mu   sync.Mutex
	at   map[string][]time.Time
	port int
}

func newArrivals(t *testing.T) *arrivals {
	t.Helper()
	a := &arrivals{at: map[string][]time.Time{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	a.port = l.Addr().(*net.TCPAddr).Port
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.at[strings.TrimPrefix(r.URL.Path, "/")] = append(a.at[strings.TrimPrefix(r.URL.Path, "/")], time.Now())
		a.mu.Unlock()
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return a
}

func (a *arrivals) of(id string) []time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]time.Time(nil), a.at[id]...)
}

func (a *arrivals) instance(id string, interval string) client.InstanceInput {
	return client.InstanceInput{State: client.LifecycleRunning, Network: &client.Network{Ip: "127.0.0.1"},
		HealthCheck: &client.HealthCheck{Http: &client.HTTPCheck{Port: a.port, Path: ptr("/" + id)}, Interval: ptr(interval),
			Timeout: ptr("500ms"), StartPeriod: ptr("0s")}}
}

func statusOf(t *testing.T, c *client.Client, id string) (string, string, string) {
	t.Helper()
	in, err := c.Get(context.Background(), id)
	if err != nil {
		return err.Error(), "", ""
	}
	hs := in.HealthStatus
	return string(hs.Status), deref(hs.Reason), string(deref(hs.LastKnownStatus))
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// TestFleet runs a real etcd and three real `vigil serve` on 127.0.0.1,
// 127.0.0.2 and 127.0.0.3: every route served by the owner wherever it
// arrives, a conflict, 100 moves while probing with no double probe and no
// spurious transition, a node killed (its instances unknown/node_down on the
// others) and back, and etcd stopped for 10 s.
func TestFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("runs etcd and three vigil processes")
	}
	ctx := context.Background()
	e := startEtcd(t)
	nodes := []*fleetNode{startNode(t, "n1", "127.0.0.1", e.url), startNode(t, "n2", "127.0.0.2", e.url), startNode(t, "n3", "127.0.0.3", e.url)}
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	require.Eventually(t, func() bool {
		list, err := n1.c.Nodes(ctx)
		return err == nil && len(list) == 3 && list[0].Up && list[1].Up && list[2].Up
	}, 10*time.Second, 20*time.Millisecond, "three nodes up")
	target := newArrivals(t)

	// events of the whole fleet, from the start
	var evMu sync.Mutex
	var events []client.StreamEvent
	sctx, stopStream := context.WithCancel(ctx)
	defer stopStream()
	go func() {
		for ev, err := range n2.c.Events(sctx, client.EventsOptions{Fleet: true}) {
			if err == nil {
				evMu.Lock()
				events = append(events, ev)
				evMu.Unlock()
			}
		}
	}()
	time.Sleep(300 * time.Millisecond) // the stream is open

	t.Run("every route on every node", func(t *testing.T) {
		_, created, err := n1.c.Put(ctx, "vm-a", target.instance("vm-a", "1s"))
		require.NoError(t, err)
		require.True(t, created)
		for _, n := range nodes {
			in, err := n.c.Get(ctx, "vm-a")
			require.NoError(t, err, n.name)
			assert.Equal(t, "n1", deref(in.Node), "%s answers for n1's instance", n.name)
		}
		pr, err := n3.c.Probe(ctx, "vm-a")
		require.NoError(t, err)
		assert.Equal(t, client.ResultOutcome("success"), pr.Result.Outcome)
		assert.Equal(t, client.Status("healthy"), pr.HealthStatus.Status)
		hs, err := n2.c.Health(ctx, "vm-a")
		require.NoError(t, err)
		assert.NotEmpty(t, deref(hs.History))
		in, err := n3.c.Patch(ctx, "vm-a", map[string]any{"name": "web-a"})
		require.NoError(t, err)
		assert.Equal(t, "web-a", deref(in.Name))
		in, err = n1.c.Get(ctx, "vm-a")
		require.NoError(t, err)
		assert.Equal(t, "web-a", deref(in.Name), "the patch reached the owner")

		_, _, err = n2.c.Put(ctx, "vm-b", target.instance("vm-b", "1s"))
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			sum, err := n3.c.FleetSummary(ctx)
			return err == nil && sum.Total == 2 && sum.Healthy == 2
		}, 10*time.Second, 20*time.Millisecond, "fleet summary on a third node")
		sum, err := n3.c.FleetSummary(ctx)
		require.NoError(t, err)
		assert.Equal(t, 1, (*sum.Nodes)["n1"]["healthy"])
		assert.Equal(t, 1, (*sum.Nodes)["n2"]["healthy"])
		local, err := n3.c.Summary(ctx)
		require.NoError(t, err)
		assert.Equal(t, 0, local.Total, "without scope=fleet the summary is the node's own")
		var ids []string
		for in, err := range n3.c.All(ctx, client.ListOptions{Fleet: true, Limit: 1}) {
			require.NoError(t, err)
			ids = append(ids, in.Id+"@"+deref(in.Node))
		}
		assert.Equal(t, []string{"vm-a@n1", "vm-b@n2"}, ids)

		require.NoError(t, n3.c.Delete(ctx, "vm-b"))
		_, err = n1.c.Get(ctx, "vm-b")
		assert.True(t, client.IsNotFound(err), "deleted through n3 on its owner n2: %v", err)
		_, err = n2.c.Get(ctx, "vm-b")
		assert.True(t, client.IsNotFound(err))
	})

	t.Run("a PUT for another node's instance is a conflict", func(t *testing.T) {
		_, _, err := n2.c.Put(ctx, "vm-a", target.instance("vm-a", "1s"))
		var ae *client.Error
		require.ErrorAs(t, err, &ae)
		assert.Equal(t, http.StatusConflict, ae.Status)
		assert.Equal(t, "conflict", ae.Code)
		assert.Contains(t, ae.Message, "n1")
	})

	t.Run("100 moves while probing", func(t *testing.T) {
		const interval = 2 * time.Second
		ids := make([]string, 10)
		for i := range ids {
			ids[i] = fmt.Sprintf("vm-m%d", i)
			_, _, err := nodes[i%3].c.Put(ctx, ids[i], target.instance(ids[i], "2s"))
			require.NoError(t, err)
		}
		require.Eventually(t, func() bool {
			for _, id := range ids {
				if st, _, _ := statusOf(t, n1.c, id); st != "healthy" {
					return false
				}
			}
			return true
		}, 10*time.Second, 50*time.Millisecond, "all healthy")
		time.Sleep(2 * interval) // past the first steady pause, which spreads instances over the interval
		evMu.Lock()
		before := len(events)
		evMu.Unlock()
		began := time.Now()
		for i := range 100 {
			id := ids[i%len(ids)]
			via := nodes[(i/len(ids))%3]         // asked of any node
			to := nodes[(i/len(ids)+i+1)%3].name // somewhere else, mostly
			in, err := via.c.Move(ctx, id, to)
			require.NoError(t, err, "move %d of %s to %s via %s", i, id, to, via.name)
			assert.Equal(t, to, deref(in.Node))
			time.Sleep(100 * time.Millisecond)
		}
		took := time.Since(began)
		time.Sleep(interval + 500*time.Millisecond)
		shortest := time.Hour
		for _, id := range ids {
			at := target.of(id)
			var within []time.Time
			for _, a := range at {
				if a.After(began.Add(-interval)) {
					within = append(within, a)
				}
			}
			require.NotEmpty(t, within, id)
			// a double probe is two arrivals at once; a late probe's
			// successor comes up to half an interval sooner (SPEC §5), so
			// gaps of half an interval, less the arrivals' own jitter, are
			// the cadence kept on a busy host
			for j := 1; j < len(within); j++ {
				gap := within[j].Sub(within[j-1])
				shortest = min(shortest, gap)
				assert.GreaterOrEqual(t, gap, interval/2-150*time.Millisecond, "%s probed twice within half an interval (%s) at %s", id, gap, within[j].Format(time.StampMilli))
			}
			// probed all along: no gap longer than the interval and a bit
			for j := 1; j < len(within); j++ {
				assert.Less(t, within[j].Sub(within[j-1]), interval+time.Second, "%s went unprobed", id)
			}
			st, _, _ := statusOf(t, n2.c, id)
			assert.Equal(t, "healthy", st, id)
		}
		evMu.Lock()
		for _, ev := range events[before:] {
			if ev.Transition != nil && strings.HasPrefix(deref(ev.Transition.InstanceId), "vm-m") {
				t.Errorf("a move emitted a transition: %+v", *ev.Transition)
			}
		}
		evMu.Unlock()
		t.Logf("100 moves in %s; the shortest gap between two probes of an instance %s", took, shortest)
	})

	t.Run("a node killed reads unknown, node_down, on the others", func(t *testing.T) {
		owned := []string{}
		for _, id := range []string{"vm-m0", "vm-m1", "vm-m2", "vm-m3", "vm-m4"} {
			_, err := n1.c.Move(ctx, id, "n3")
			require.NoError(t, err)
			owned = append(owned, id)
		}
		before, err := n1.c.FleetSummary(ctx)
		require.NoError(t, err)
		onN3 := (*before.Nodes)["n3"]["total"]
		require.GreaterOrEqual(t, onN3, len(owned))
		killed := time.Now()
		n3.kill()
		for _, n := range []*fleetNode{n1, n2} {
			require.Eventually(t, func() bool {
				for _, id := range owned {
					st, reason, last := statusOf(t, n.c, id)
					if st != "unknown" || reason != "node_down" || last != "healthy" {
						return false
					}
				}
				return true
			}, 10*time.Second, 50*time.Millisecond, "%s answers for n3's instances", n.name)
		}
		t.Logf("node_down on both others %s after the kill (lease 3 s)", time.Since(killed).Round(time.Millisecond))
		assert.Less(t, time.Since(killed), 3*time.Second+5*time.Second, "within 5 s of the lease expiring")
		sum, err := n1.c.FleetSummary(ctx)
		require.NoError(t, err)
		assert.Equal(t, onN3, (*sum.Nodes)["n3"]["unknown"], "all of n3's instances read unknown")
		assert.Zero(t, sum.Unhealthy, "a dead host does not look like sick VMs")
		list, err := n2.c.Nodes(ctx)
		require.NoError(t, err)
		for _, m := range list {
			assert.Equal(t, m.Name != "n3", m.Up, m.Name)
		}

		n3.start()
		for _, id := range owned {
			require.Eventually(t, func() bool {
				st, _, _ := statusOf(t, n1.c, id)
				return st == "healthy"
			}, 15*time.Second, 50*time.Millisecond, "%s back after the restart", id)
		}
		evMu.Lock()
		var kinds []string
		for _, ev := range events {
			if ev.Node != nil && ev.Node.Node == "n3" {
				kinds = append(kinds, ev.Type)
			}
		}
		evMu.Unlock()
		require.GreaterOrEqual(t, len(kinds), 2, "the fleet stream told of n3 going and coming: %v", kinds)
		assert.Equal(t, []string{"node_down", "node_up"}, kinds[len(kinds)-2:], "the fleet stream told of n3 going and coming")
	})

	t.Run("etcd stopped for 10 s", func(t *testing.T) {
		ids := []string{"vm-m5", "vm-m6", "vm-m7"}
		e.kill()
		stopped := time.Now()
		time.Sleep(10 * time.Second)
		e.start()
		for _, id := range ids {
			var during []time.Time
			for _, a := range target.of(id) {
				if a.After(stopped) {
					during = append(during, a)
				}
			}
			assert.GreaterOrEqual(t, len(during), 4, "%s was probed while etcd was away", id)
		}
		require.Eventually(t, func() bool {
			for _, n := range nodes {
				list, err := n.c.Nodes(ctx)
				if err != nil || len(list) != 3 {
					return false
				}
				for _, m := range list {
					if !m.Up {
						return false
					}
				}
			}
			return true
		}, 20*time.Second, 100*time.Millisecond, "every node back in the fleet")
		_, _, err := n2.c.Put(ctx, "vm-after", target.instance("vm-after", "1s"))
		require.NoError(t, err, "registration works again")
		in, err := n3.c.Get(ctx, "vm-after")
		require.NoError(t, err)
		assert.Equal(t, "n2", deref(in.Node))
	})

	t.Run("the fleet stream resumes from its cursor on any node", func(t *testing.T) {
		evMu.Lock()
		var last client.StreamEvent
		for _, ev := range events {
			if ev.Transition != nil {
				last = ev
			}
		}
		evMu.Unlock()
		require.NotEmpty(t, last.ID)
		_, _, err := n3.c.Put(ctx, "vm-resume", target.instance("vm-resume", "1s"))
		require.NoError(t, err)
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var got []client.Event
		for ev, err := range n1.c.Events(rctx, client.EventsOptions{Fleet: true, After: last.ID}) {
			if err != nil || ev.Transition == nil {
				continue
			}
			got = append(got, *ev.Transition)
			if deref(ev.Transition.InstanceId) == "vm-resume" && ev.Transition.To == "healthy" {
				break
			}
		}
		require.NotEmpty(t, got)
		for _, ev := range got {
			if deref(ev.Node) == deref(last.Transition.Node) {
				assert.Greater(t, ev.Seq, last.Transition.Seq, "resumed after the cursor, not before: %+v", ev)
			}
		}
		assert.Equal(t, "vm-resume", deref(got[len(got)-1].InstanceId))
		assert.Equal(t, "n3", deref(got[len(got)-1].Node))
	})

	t.Run("metrics", func(t *testing.T) {
		m, err := n1.c.Metrics(ctx)
		require.NoError(t, err)
		for _, name := range []string{`vigil_fleet_nodes{state="up"} 3`, `vigil_fleet_nodes{state="down"} 0`,
			`vigil_fleet_forwarded_seconds_bucket{op="get",outcome="ok"`, `vigil_fleet_moves_total{result="moved"}`,
			`vigil_fleet_etcd_seconds_bucket{op="claim"`} {
			assert.Contains(t, string(m), name)
		}
	})

	t.Run("a node without the fleet's secret is refused", func(t *testing.T) {
		bin, err := vigilbin.Path()
		require.NoError(t, err)
		dir := t.TempDir()
		peer := freePortOn(t, "127.0.0.4")
		cmd := exec.Command(bin, "serve", "--listen", "127.0.0.4:0", "--data-dir", dir, "--etcd", e.url, "--node", "n4",
			"--peer-listen", fmt.Sprintf("127.0.0.4:%d", peer), "--peer-token", "not-the-secret")
		out, err := cmd.StderrPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		sc := bufio.NewScanner(out)
		api := ""
		for api == "" && sc.Scan() {
			var line struct{ Message, Listen string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Message == "serving" {
				api = line.Listen
			}
		}
		go func() {
			for sc.Scan() { //nolint:revive // drain its log
			}
		}()
		c4, err := client.New(api)
		require.NoError(t, err)
		require.Eventually(t, func() bool { return c4.Ready(ctx) == nil }, 10*time.Second, 20*time.Millisecond)
		_, err = c4.Probe(ctx, "vm-a")
		var ae *client.Error
		require.ErrorAs(t, err, &ae, "n1 refuses n4's request")
		assert.Equal(t, http.StatusServiceUnavailable, ae.Status)
		_, _, err = c4.Put(ctx, "vm-n4", target.instance("vm-n4", "1s"))
		require.NoError(t, err)
		_, err = n1.c.Probe(ctx, "vm-n4")
		require.ErrorAs(t, err, &ae, "n4 refuses n1's request")
		assert.Equal(t, http.StatusServiceUnavailable, ae.Status)
	})

	stopStream()
	evMu.Lock()
	seqs := map[string][]int64{}
	for _, ev := range events {
		if ev.Transition != nil {
			seqs[deref(ev.Transition.Node)] = append(seqs[deref(ev.Transition.Node)], ev.Transition.Seq)
		}
	}
	evMu.Unlock()
	for node, s := range seqs {
		assert.True(t, sort.SliceIsSorted(s, func(i, j int) bool { return s[i] < s[j] }), "%s's events in order: %v", node, s)
	}
}

// logDir keeps the nodes' logs: in VIGIL_TEST_LOGS when it is set (to read
// them after a failure), else in the test's temp dir.
func logDir(t *testing.T) string {
	if d := os.Getenv("VIGIL_TEST_LOGS"); d != "" {
		require.NoError(t, os.MkdirAll(d, 0o755))
		return d
	}
	return t.TempDir()
}
