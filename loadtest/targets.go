package loadtest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/probes/vsock/vsocktest"
)

// MaxInstances is how many 127.x.y.z addresses the fleet hands out.
const MaxInstances = 1 << 20

// addrOf is instance i's own loopback address: 127.(16+i>>16).(i>>8).(i).
func addrOf(i int) string {
	return netip.AddrFrom4([4]byte{127, byte(16 + i>>16), byte(i >> 8), byte(i)}).String()
}

// indexOf maps a destination address back to its instance (-1 if none).
func indexOf(a net.Addr, n int) int {
	var ip netip.Addr
	switch v := a.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(v.IP)
	default:
		return -1
	}
	b := ip.Unmap().As4()
	if b[0] != 127 || b[1] < 16 {
		return -1
	}
	i := int(b[1]-16)<<16 | int(b[2])<<8 | int(b[3])
	if i >= n {
		return -1
	}
	return i
}

// fleet is the synthetic targets: one listener per port on 0.0.0.0 that
// tells instances apart by destination address.
type fleet struct {
	n     int
	ids   string // every instance's id, end to end (fleet.id)
	types []health.Type
	hung  []bool
	flips []bool
	down  atomic.Bool // flipping targets answer unhealthy

	tcpPort, tcpFlipPort, httpPort, grpcPort int
	acceptor                                 *acceptor
	tcpFlip                                  *target
	flipMu                                   sync.Mutex

	dir       string
	agent     *exec.Cmd
	mux       *vsocktest.Muxer
	downFile  string
	stopFuncs []func()
}

func (f *fleet) close() {
	for i := len(f.stopFuncs) - 1; i >= 0; i-- {
		f.stopFuncs[i]()
	}
}

func startFleet(cfg Config) (_ *fleet, err error) {
	f := &fleet{n: cfg.Instances, ids: makeIDs(cfg.Instances), types: make([]health.Type, cfg.Instances),
		hung: make([]bool, cfg.Instances), flips: make([]bool, cfg.Instances)}
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	kinds := []health.Type{health.Type(cfg.Type)}
	if cfg.Type == "mixed" {
		kinds = []health.Type{health.TypeTCP, health.TypeHTTP, health.TypeGRPC}
	}
	need := map[health.Type]bool{}
	hungEvery, flipEvery := every(cfg.Hung), every(cfg.Flip)
	for i := range f.n {
		f.types[i] = kinds[i%len(kinds)]
		need[f.types[i]] = true
		// spread the hung and flipping instances evenly; never both
		f.hung[i] = hungEvery > 0 && i%hungEvery == hungEvery/2
		f.flips[i] = !f.hung[i] && flipEvery > 0 && i%flipEvery == flipEvery/3
	}
	if need[health.TypeTCP] {
		if err = f.startTCP(); err != nil {
			return nil, err
		}
	}
	if need[health.TypeHTTP] {
		if f.httpPort, err = f.serveHTTP(); err != nil {
			return nil, err
		}
	}
	if need[health.TypeGRPC] {
		if f.grpcPort, err = f.serveGRPC(); err != nil {
			return nil, err
		}
	}
	if need[health.TypeExec] {
		if err = f.startAgent(cfg); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// every turns a fraction into "one instance in k" (0 when none).
func every(frac float64) int {
	if frac <= 0 {
		return 0
	}
	return max(1, int(1/frac+0.5))
}

// startTCP opens the healthy TCP target and the flipping one, which closes
// while the fleet is down so its instances see refusals. One loop drains
// both.
func (f *fleet) startTCP() error {
	f.acceptor = startAcceptor()
	f.stopFuncs = append(f.stopFuncs, f.acceptor.close)
	main, err := f.acceptor.serve(0)
	if err != nil {
		return err
	}
	f.stopFuncs = append(f.stopFuncs, main.close)
	flip, err := f.acceptor.serve(0)
	if err != nil {
		return err
	}
	f.tcpPort, f.tcpFlipPort, f.tcpFlip = main.port, flip.port, flip
	f.stopFuncs = append(f.stopFuncs, func() {
		f.flipMu.Lock()
		defer f.flipMu.Unlock()
		if f.tcpFlip != nil {
			f.tcpFlip.close()
		}
	})
	return nil
}

// acceptShards is how many SO_REUSEPORT listeners share a target port: the
// kernel spreads connections over their accept queues (4096 each), so a
// burst of probes (up to the budget, 1024, at once) never overflows one
// while the loop gathers a batch (an overflow drops the SYN and the probe
// waits a 1 s retransmit).
const acceptShards = 4

// acceptBatch is how often the accept loop drains the sockets: at 10 000
// connections a second, about 125 a batch per shard (at the raw loop's
// 74 000 a second, ≈ 925 of 4096), and 20 wake-ups a second instead of ten
// thousand.
const acceptBatch = 50 * time.Millisecond

// acceptor serves a fleet's TCP targets: listening sockets made and served
// with raw system calls. A target in the same process as the scheduler must
// cost that process no more than the kernel's side of a connection, as a
// target in a guest would: no garbage (a net.Conn and two addresses per
// connection), and no wake-up per connection — the sockets are not on the
// runtime's poller (its epoll would wake an idle thread for every
// handshake, and make every scheduling round poll); one goroutine drains
// them all on a ticker (each wake-up of an idle process costs the runtime a
// thread's wake and sleep).
type acceptor struct {
	mu      sync.Mutex
	targets map[*target]struct{}
	stop    chan struct{}
	done    chan struct{}
}

// target is one port on 0.0.0.0 served by acceptShards SO_REUSEPORT
// listening sockets.
type target struct {
	a    *acceptor
	fds  []int
	port int
}

func startAcceptor() *acceptor {
	a := &acceptor{targets: map[*target]struct{}{}, stop: make(chan struct{}), done: make(chan struct{})}
	go a.run()
	return a
}

// serve opens a TCP target on port (0: a free one) that accepts and closes.
func (a *acceptor) serve(port int) (_ *target, err error) {
	t := &target{a: a, port: port}
	defer func() {
		if err != nil {
			closeAll(t.fds)
		}
	}()
	for range acceptShards {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, os.NewSyscallError("socket", err)
		}
		t.fds = append(t.fds, fd)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return nil, os.NewSyscallError("setsockopt", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: t.port}); err != nil {
			return nil, os.NewSyscallError("bind", err)
		}
		if err := unix.Listen(fd, 4096); err != nil {
			return nil, os.NewSyscallError("listen", err)
		}
		if t.port == 0 {
			sa, err := unix.Getsockname(fd)
			if err != nil {
				return nil, os.NewSyscallError("getsockname", err)
			}
			t.port = sa.(*unix.SockaddrInet4).Port
		}
	}
	a.mu.Lock()
	a.targets[t] = struct{}{}
	a.mu.Unlock()
	return t, nil
}

// close stops serving t and closes its listening sockets (connections still
// queued are reset).
func (t *target) close() {
	a := t.a
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.targets[t]; ok {
		delete(a.targets, t)
		closeAll(t.fds)
	}
}

// close stops the loop; the targets still open are closed by their own
// close.
func (a *acceptor) close() {
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	<-a.done
}

func (a *acceptor) run() {
	defer close(a.done)
	tick := time.NewTicker(acceptBatch)
	defer tick.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-tick.C:
		}
		a.mu.Lock()
		for t := range a.targets {
			for _, fd := range t.fds {
				drainAccepts(fd)
			}
		}
		a.mu.Unlock()
	}
}

func closeAll(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// drainAccepts accepts and closes what is queued on the listening socket fd.
// Neither call blocks (the socket is non-blocking; the accepted connection
// was reset by the prober, or closing it sends one): raw calls keep the
// runtime's monitor from handing the thread's processor off meanwhile.
func drainAccepts(fd int) {
	for {
		nfd, _, errno := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), 0, 0, unix.SOCK_CLOEXEC, 0, 0)
		switch errno {
		case 0:
			_, _, _ = unix.RawSyscall(unix.SYS_CLOSE, nfd, 0, 0)
		case unix.EINTR, unix.ECONNABORTED:
		default: // EAGAIN: drained
			return
		}
	}
}

// setDown flips the flipping targets.
func (f *fleet) setDown(down bool) error {
	f.down.Store(down)
	if f.downFile != "" {
		if down {
			if err := os.WriteFile(f.downFile, nil, 0o644); err != nil {
				return err
			}
		} else if err := os.Remove(f.downFile); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	if f.tcpFlipPort == 0 {
		return nil
	}
	f.flipMu.Lock()
	defer f.flipMu.Unlock()
	if down {
		if f.tcpFlip != nil {
			f.tcpFlip.close()
			f.tcpFlip = nil
		}
		return nil
	}
	ls, err := f.acceptor.serve(f.tcpFlipPort)
	if err != nil {
		return fmt.Errorf("reopen the flipping tcp target: %w", err)
	}
	f.tcpFlip = ls
	return nil
}

// unhealthyNow reports whether instance i's target answers unhealthy.
func (f *fleet) unhealthyNow(i int) bool { return f.flips[i] && f.down.Load() }

func (f *fleet) serveHTTP() (int, error) {
	l, err := listen("0.0.0.0:0")
	if err != nil {
		return 0, err
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		la, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		i := indexOf(la, f.n)
		switch {
		case i < 0:
			w.WriteHeader(http.StatusNotFound)
		case f.hung[i]:
			<-r.Context().Done() // accept, never answer
		case f.unhealthyNow(i):
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})}
	srv.SetKeepAlivesEnabled(false)
	go func() { _ = srv.Serve(l) }()
	f.stopFuncs = append(f.stopFuncs, func() { _ = srv.Close() })
	return l.Addr().(*net.TCPAddr).Port, nil
}

// healthTarget answers grpc.health.v1 per destination address.
type healthTarget struct {
	healthpb.UnimplementedHealthServer
	f *fleet
}

func (h healthTarget) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	p, ok := peer.FromContext(ctx)
	i := -1
	if ok {
		i = indexOf(p.LocalAddr, h.f.n)
	}
	switch {
	case i < 0:
		return nil, status.Error(codes.NotFound, "unknown instance")
	case h.f.hung[i]:
		<-ctx.Done()
		return nil, ctx.Err()
	case h.f.unhealthyNow(i):
		return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_NOT_SERVING}, nil
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (f *fleet) serveGRPC() (int, error) {
	l, err := listen("0.0.0.0:0")
	if err != nil {
		return 0, err
	}
	g := grpc.NewServer()
	healthpb.RegisterHealthServer(g, healthTarget{f: f})
	go func() { _ = g.Serve(l) }()
	f.stopFuncs = append(f.stopFuncs, g.Stop)
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startAgent runs the real guest agent (this binary's `agent` command, or
// cfg.AgentBinary) behind the hybrid-vsock test muxer.
func (f *fleet) startAgent(cfg Config) error {
	bin := cfg.AgentBinary
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		bin = exe
	}
	dir, err := os.MkdirTemp("", "vigil-lt")
	if err != nil {
		return err
	}
	f.dir = dir
	f.stopFuncs = append(f.stopFuncs, func() { _ = os.RemoveAll(dir) })
	f.downFile = filepath.Join(dir, "down")
	sock, ready := filepath.Join(dir, "agent.sock"), filepath.Join(dir, "ready")
	cmd := exec.Command(bin, "agent", "--listen", "unix://"+sock, "--ready-file", ready,
		"--max-concurrent", "1024", "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the agent %s: %w", bin, err)
	}
	f.agent = cmd
	f.stopFuncs = append(f.stopFuncs, func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the agent %s did not get ready within 10s", bin)
		}
	}
	if f.mux, err = vsocktest.Start(dir, sock); err != nil {
		return err
	}
	f.stopFuncs = append(f.stopFuncs, f.mux.Close)
	return nil
}

// spec is instance i's registration.
func (f *fleet) spec(i int, cfg Config) health.InstanceSpec {
	p := &health.PolicySpec{Interval: cfg.Interval.String(), Timeout: cfg.Timeout.String()}
	if cfg.StartPeriod >= 0 {
		p.StartPeriod = cfg.StartPeriod.String()
	}
	s := health.InstanceSpec{State: health.Running, HealthCheck: p}
	switch f.types[i] {
	case health.TypeTCP:
		port := f.tcpPort
		if f.flips[i] {
			port = f.tcpFlipPort
		}
		p.TCP = &health.TCPSpec{Port: port}
	case health.TypeHTTP:
		p.HTTP = &health.HTTPSpec{Port: f.httpPort, Path: "/healthz", Condition: cfg.Condition}
	case health.TypeGRPC:
		p.GRPC = &health.GRPCSpec{Port: f.grpcPort}
	case health.TypeExec:
		cmd := []string{"/bin/true"}
		switch {
		case f.hung[i]:
			cmd = []string{"/bin/sleep", "3600"}
		case f.flips[i]:
			cmd = []string{"/bin/sh", "-c", "test ! -e " + f.downFile}
		}
		p.Exec = &health.ExecSpec{Command: cmd}
		s.Vsock = &health.VsockSpec{Socket: f.mux.Path}
		return s
	}
	s.Network = &health.Network{IP: addrOf(i)}
	return s
}

// listen opens a listener of the HTTP or gRPC target; accepted connections
// get no TCP keep-alive (it costs syscalls the probe does not need).
func listen(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(context.Background(), "tcp", addr)
}
