package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vigilhq/vigil/client"
	"github.com/vigilhq/vigil/health"
)

// NodesConfig is the fleet-of-nodes benchmark: Nodes `vigil serve`
// processes on one etcd, PerNode TCP instances registered with each over the
// API, and one standalone `vigil serve` with the same load beside them to
// compare each node's cost with.
type NodesConfig struct {
	Nodes     int
	PerNode   int
	Interval  time.Duration
	Timeout   time.Duration
	Unhealthy float64       // fraction of instances whose targets refuse
	Window    time.Duration // the quiet window CPU and RSS are measured over
	Queries   int           // fleet summaries and fleet pages, each
	Moves     int
	Kills     int
	Binary    string // the vigil binary (its loadtest-targets command serves the targets)
	Etcd      string // the etcd binary
	Progress  io.Writer
}

// NodesReport is what the fleet-of-nodes benchmark measured; times in ms.
type NodesReport struct {
	Nodes         int     `json:"nodes"`
	PerNode       int     `json:"instances_per_node"`
	IntervalMS    float64 `json:"interval_ms"`
	RegistrationS float64 `json:"registration_s"`
	SummaryP50MS  float64 `json:"fleet_summary_p50_ms"`
	SummaryP99MS  float64 `json:"fleet_summary_p99_ms"`
	PageP50MS     float64 `json:"fleet_unhealthy_page_p50_ms"`
	PageP99MS     float64 `json:"fleet_unhealthy_page_p99_ms"`
	PageItems     int     `json:"fleet_unhealthy_page_items"`
	MoveP50MS     float64 `json:"move_p50_ms"`
	MoveP99MS     float64 `json:"move_p99_ms"`
	// from the kill -9 until every other node counts the node's instances
	// unknown: the lease (3 s, renewed every second) expiring, then the
	// watch
	NodeDownP50MS     float64 `json:"node_down_unknown_everywhere_p50_ms"`
	NodeDownP99MS     float64 `json:"node_down_unknown_everywhere_p99_ms"`
	NodeCPUPercent    float64 `json:"node_cpu_percent_median"` // of one core, over the window
	NodeCPUMaxPercent float64 `json:"node_cpu_percent_max"`
	AloneCPUPercent   float64 `json:"standalone_cpu_percent"`
	CPURatio          float64 `json:"node_cpu_ratio"` // median node / standalone
	NodeRSSBytes      int64   `json:"node_rss_bytes_median"`
	AloneRSSBytes     int64   `json:"standalone_rss_bytes"`
	RSSRatio          float64 `json:"node_rss_ratio"`
	EtcdCPUPercent    float64 `json:"etcd_cpu_percent"`
}

// benchProc is one `vigil serve` process of a benchmark.
type benchProc struct {
	name, ip, dir, api string
	peerPort           int
	args               []string
	// quiet runs it at --log-level warn, its lines copied to this stderr,
	// on a port chosen here (at info it logs every transition)
	quiet   bool
	clients int // connections the client keeps open (0: 32)
	cmd     *exec.Cmd
	done    <-chan struct{}
	c       *client.Client
}

func freePort(ip string) (int, error) {
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start runs the process and waits until it serves and is ready. It dies
// with the load test (launch).
func (p *benchProc) start(ctx context.Context, bin string) error {
	listen := p.ip + ":0"
	if p.api != "" {
		listen = p.api
	}
	level := "info"
	if p.quiet {
		level = "warn"
		if p.api == "" {
			port, err := freePort(p.ip)
			if err != nil {
				return err
			}
			listen = net.JoinHostPort(p.ip, strconv.Itoa(port))
		}
	}
	args := append([]string{"serve", "--listen", listen, "--data-dir", p.dir, "--log-level", level}, p.args...)
	p.cmd = exec.Command(bin, args...)
	addr := make(chan string, 1)
	prefix := []byte(p.name + ": ")
	p.cmd.Stderr = &lineWriter{fn: func(line []byte) {
		if p.quiet {
			_, _ = os.Stderr.Write(append(append(append([]byte(nil), prefix...), line...), '\n'))
			return
		}
		if !bytes.Contains(line, []byte(`"serving"`)) {
			return
		}
		var l struct{ Listen string }
		if json.Unmarshal(line, &l) == nil {
			select {
			case addr <- l.Listen:
			default:
			}
		}
	}}
	done, err := launch(p.cmd)
	if err != nil {
		return err
	}
	p.done = done
	if p.quiet {
		p.api = listen
	} else {
		select {
		case p.api = <-addr:
		case <-p.done:
			return fmt.Errorf("%s exited before serving", p.name)
		case <-time.After(2 * time.Minute):
			return fmt.Errorf("%s did not serve within 2 minutes", p.name)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// one kept-alive connection per registering worker: closing the surplus
	// after each request would leave a TIME_WAIT port behind every one
	conns := p.clients
	if conns <= 0 {
		conns = 32
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, IdleConnTimeout: time.Minute}}
	var err2 error
	if p.c, err2 = client.New(p.api, client.WithHTTP(hc)); err2 != nil {
		return err2
	}
	for giveUp := time.Now().Add(2 * time.Minute); ctx.Err() == nil; {
		if p.c.Ready(ctx) == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready", p.name)
		default:
		}
		if time.Now().After(giveUp) {
			return fmt.Errorf("%s was not ready within 2 minutes", p.name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return ctx.Err()
}

func (p *benchProc) kill() {
	if p.cmd != nil && p.done != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}

// term stops the process with SIGTERM and waits for it, killing it after
// grace.
func (p *benchProc) term(grace time.Duration) error {
	if p.cmd == nil || p.done == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
		p.kill()
		return fmt.Errorf("%s did not stop within %s of SIGTERM", p.name, grace)
	}
}

// cpuTicks is the process's user and system time so far.
func cpuTicks(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	if len(f) < 13 {
		return 0, errors.New("loadtest: short /proc stat")
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond, nil // USER_HZ 100
}

func rssOf(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func quantile(samples []time.Duration, q float64) float64 {
	if len(samples) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), samples...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(q*float64(len(s))+0.5) - 1
	return ms(s[min(max(i, 0), len(s)-1)])
}

// RunNodes runs the fleet-of-nodes benchmark.
func RunNodes(ctx context.Context, cfg NodesConfig) (*NodesReport, error) {
	progress := func(format string, args ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, format+"\n", args...)
		}
	}
	if cfg.Nodes < 2 || cfg.Nodes > 200 {
		return nil, fmt.Errorf("--fleet-nodes must be between 2 and 200 (got %d)", cfg.Nodes)
	}
	etcdBin := cfg.Etcd
	if etcdBin == "" {
		etcdBin = "etcd"
	}
	if _, err := exec.LookPath(etcdBin); err != nil {
		return nil, fmt.Errorf("the fleet benchmark needs etcd (Debian's etcd-server): %w", err)
	}
	total := (cfg.Nodes + 1) * cfg.PerNode
	lt := Config{Instances: total, Type: "tcp", Interval: cfg.Interval, Timeout: cfg.Timeout, StartPeriod: 0,
		Flip: cfg.Unhealthy, Duration: time.Second, Store: "memory"}
	if err := lt.Validate(); err != nil {
		return nil, err
	}
	lt.Binary = cfg.Binary
	tp, first, err := startProc(lt, childOf(roleTargets, lt))
	if err != nil {
		return nil, err
	}
	defer tp.close()
	f := newFleet(lt)
	f.ports = *first.Ports
	if _, err := tp.call(request{Cmd: "down", Down: true}); err != nil { // the flipping targets refuse throughout
		return nil, err
	}
	root, err := os.MkdirTemp("", "vigil-fleet-bench")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)

	// etcd
	cport, err := freePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	pport, err := freePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", cport)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", pport)
	etcd := exec.Command(etcdBin, "--data-dir", filepath.Join(root, "etcd"), "--listen-client-urls", etcdURL,
		"--advertise-client-urls", etcdURL, "--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL, "--quota-backend-bytes", strconv.Itoa(4<<30))
	etcdDone, err := launch(etcd)
	if err != nil {
		return nil, err
	}
	defer func() { _ = etcd.Process.Kill(); <-etcdDone }()
	for i := 0; ; i++ {
		resp, err := http.Get(etcdURL + "/health")
		if err == nil {
			resp.Body.Close()
			break
		}
		if i > 200 {
			return nil, errors.New("etcd did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// the nodes and the standalone one
	nodes := make([]*benchProc, cfg.Nodes)
	for i := range nodes {
		ip := fmt.Sprintf("127.0.1.%d", i+1)
		port, err := freePort(ip)
		if err != nil {
			return nil, err
		}
		nodes[i] = &benchProc{name: fmt.Sprintf("bench-%d", i+1), ip: ip, dir: filepath.Join(root, fmt.Sprintf("n%d", i+1)), peerPort: port}
		nodes[i].args = []string{"--etcd", etcdURL, "--node", nodes[i].name, "--peer-listen", fmt.Sprintf("%s:%d", ip, port)}
	}
	alone := &benchProc{name: "standalone", ip: "127.0.2.1", dir: filepath.Join(root, "alone")}
	all := append(append([]*benchProc(nil), nodes...), alone)
	defer func() {
		for _, p := range all {
			p.kill()
		}
	}()
	for _, p := range all {
		if err := p.start(ctx, cfg.Binary); err != nil {
			return nil, err
		}
	}
	progress("started etcd, %d nodes and a standalone node", cfg.Nodes)

	// registration over the API, each node its own instances
	began := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, len(all))
	for k, p := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- registerRange(ctx, p.c, f, lt, k*cfg.PerNode, (k+1)*cfg.PerNode, 32)
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			return nil, err
		}
	}
	rep := &NodesReport{Nodes: cfg.Nodes, PerNode: cfg.PerNode, IntervalMS: ms(cfg.Interval), RegistrationS: time.Since(began).Seconds()}
	progress("registered %d instances in %.1f s", total, rep.RegistrationS)
	settled := func() bool {
		sum, err := nodes[0].c.FleetSummary(ctx)
		if err != nil || sum.Total != cfg.Nodes*cfg.PerNode || sum.Starting != 0 {
			return false
		}
		s, err := alone.c.Summary(ctx)
		return err == nil && s.Total == cfg.PerNode && s.Starting == 0
	}
	for !settled() {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(cfg.Interval) // one whole interval of steady probing before the window

	// the quiet window: each process's CPU and RSS under the same load
	pids := make([]int, len(all))
	for i, p := range all {
		pids[i] = p.cmd.Process.Pid
	}
	pids = append(pids, etcd.Process.Pid)
	start := make([]time.Duration, len(pids))
	for i, pid := range pids {
		start[i], _ = cpuTicks(pid)
	}
	t0 := time.Now()
	// the resident set of each process, sampled every second of the window:
	// its median, not one reading a collection happened to precede
	rssSamples := make([][]int64, len(all))
	tick := time.NewTicker(time.Second)
sampling:
	for {
		select {
		case <-ctx.Done():
			tick.Stop()
			return nil, ctx.Err()
		case <-tick.C:
			for i := range all {
				rssSamples[i] = append(rssSamples[i], rssOf(pids[i]))
			}
			if time.Since(t0) >= cfg.Window {
				break sampling
			}
		}
	}
	tick.Stop()
	wall := time.Since(t0)
	cpu := make([]float64, len(pids))
	for i, pid := range pids {
		end, _ := cpuTicks(pid)
		cpu[i] = 100 * float64(end-start[i]) / float64(wall)
	}
	nodeCPU := append([]float64(nil), cpu[:cfg.Nodes]...)
	sort.Float64s(nodeCPU)
	rep.NodeCPUPercent, rep.NodeCPUMaxPercent = nodeCPU[len(nodeCPU)/2], nodeCPU[len(nodeCPU)-1]
	rep.AloneCPUPercent, rep.EtcdCPUPercent = cpu[cfg.Nodes], cpu[cfg.Nodes+1]
	if rep.AloneCPUPercent > 0 {
		rep.CPURatio = rep.NodeCPUPercent / rep.AloneCPUPercent
	}
	median := func(v []int64) int64 {
		v = append([]int64(nil), v...)
		sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
		return v[len(v)/2]
	}
	rss := make([]int64, cfg.Nodes)
	for i := range nodes {
		rss[i] = median(rssSamples[i])
	}
	rep.NodeRSSBytes, rep.AloneRSSBytes = median(rss), median(rssSamples[cfg.Nodes])
	if rep.AloneRSSBytes > 0 {
		rep.RSSRatio = float64(rep.NodeRSSBytes) / float64(rep.AloneRSSBytes)
	}
	progress("window %.0f s: node CPU %.1f%% (max %.1f%%), standalone %.1f%%, etcd %.1f%%", wall.Seconds(),
		rep.NodeCPUPercent, rep.NodeCPUMaxPercent, rep.AloneCPUPercent, rep.EtcdCPUPercent)

	// fleet reads, each of a node chosen at random
	var summaries, pages []time.Duration
	for range cfg.Queries {
		c := nodes[rand.IntN(len(nodes))].c
		t := time.Now()
		if _, err := c.FleetSummary(ctx); err != nil {
			return nil, err
		}
		summaries = append(summaries, time.Since(t))
		t = time.Now()
		page, err := c.List(ctx, client.ListOptions{Fleet: true, Status: []client.Status{"unhealthy"}, Limit: 100})
		if err != nil {
			return nil, err
		}
		pages = append(pages, time.Since(t))
		rep.PageItems = len(page.Instances)
	}
	rep.SummaryP50MS, rep.SummaryP99MS = quantile(summaries, .5), quantile(summaries, .99)
	rep.PageP50MS, rep.PageP99MS = quantile(pages, .5), quantile(pages, .99)
	progress("fleet summary p99 %.1f ms, unhealthy page p99 %.1f ms", rep.SummaryP99MS, rep.PageP99MS)

	// moves of instances chosen at random, each asked of a node at random
	var moves []time.Duration
	owner := make([]int, cfg.Nodes*cfg.PerNode)
	for i := range owner {
		owner[i] = i / cfg.PerNode
	}
	for range cfg.Moves {
		i := rand.IntN(len(owner))
		to := (owner[i] + 1 + rand.IntN(cfg.Nodes-1)) % cfg.Nodes
		t := time.Now()
		if _, err := nodes[rand.IntN(len(nodes))].c.Move(ctx, f.id(i), nodes[to].name); err != nil {
			return nil, fmt.Errorf("move %s to %s: %w", f.id(i), nodes[to].name, err)
		}
		moves = append(moves, time.Since(t))
		owner[i] = to
	}
	rep.MoveP50MS, rep.MoveP99MS = quantile(moves, .5), quantile(moves, .99)
	progress("move p99 %.1f ms", rep.MoveP99MS)

	// node deaths: until every other node counts the dead node's instances
	// as unknown
	var downs []time.Duration
	for k := range cfg.Kills {
		victim := nodes[1+k%(cfg.Nodes-1)]
		vi := 1 + k%(cfg.Nodes-1)
		sum, err := nodes[0].c.FleetSummary(ctx)
		if err != nil {
			return nil, err
		}
		want := (*sum.Nodes)[victim.name]["total"]
		killed := time.Now()
		victim.kill()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var last time.Time
		for j, p := range nodes {
			if j == vi {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					sum, err := p.c.FleetSummary(ctx)
					if err == nil && (*sum.Nodes)[victim.name]["unknown"] == want {
						mu.Lock()
						if now := time.Now(); now.After(last) {
							last = now
						}
						mu.Unlock()
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
			}()
		}
		wg.Wait()
		took := last.Sub(killed)
		downs = append(downs, took)
		progress("kill %d of %s: unknown on every other node %.2f s after the kill", k+1, victim.name, took.Seconds())
		if err := victim.start(ctx, cfg.Binary); err != nil {
			return nil, err
		}
	}
	rep.NodeDownP50MS, rep.NodeDownP99MS = quantile(downs, .5), quantile(downs, .99)
	return rep, nil
}

// registerRange registers instances [from, to) with one node in batches of
// 500, workers requests at a time.
func registerRange(ctx context.Context, c *client.Client, f *fleet, cfg Config, from, to, workers int) error {
	const batch = 500 // items a request: a VM manager's batch registration
	starts := make(chan int)
	var wg sync.WaitGroup
	var first error
	var once sync.Once
	fail := func(err error) { once.Do(func() { first = err }) }
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			items := make([]client.BatchItem, 0, batch)
			for start := range starts {
				items = items[:0]
				for i := start; i < min(start+batch, to); i++ {
					in, err := clientSpec(f.spec(i, cfg))
					if err != nil {
						fail(fmt.Errorf("register %s: %w", f.id(i), err))
						return
					}
					items = append(items, client.BatchItem{ID: f.id(i), Instance: in})
				}
				results, err := putBatch(ctx, c, items)
				if err != nil {
					fail(fmt.Errorf("register %s…: %w", items[0].ID, err))
					continue
				}
				for _, r := range results {
					if r.Err != nil {
						fail(fmt.Errorf("register %s: %w", r.ID, r.Err))
					}
				}
			}
		}()
	}
	for i := from; i < to && ctx.Err() == nil; i += batch {
		starts <- i
	}
	close(starts)
	wg.Wait()
	return first
}

// putBatch registers one batch as a VM manager would: a 503 is tried again
// after the Retry-After it sent, for up to a minute.
func putBatch(ctx context.Context, c *client.Client, items []client.BatchItem) ([]client.BatchResult, error) {
	return c.PutBatchWhenAvailable(ctx, items, time.Minute)
}

// clientSpec is a registration in the client's types (the same JSON).
func clientSpec(s health.InstanceSpec) (client.InstanceInput, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return client.InstanceInput{}, err
	}
	var in client.InstanceInput
	err = json.Unmarshal(b, &in)
	return in, err
}
