package loadtest

import (
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
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/probes/vsock/vsocktest"
)

// targets is the fleet's targets, served in the target process (`vigil
// loadtest-targets`), apart from the process under test: one listener per
// port on 0.0.0.0 that tells instances apart by the destination address a
// connection came to (each instance has its own 127.x.y.z), and records
// each arrival in the instance's slot.
type targets struct {
	f    *fleet
	rec  *arrivals
	down atomic.Bool // flipping targets answer unhealthy

	flipMu  sync.Mutex
	tcpFlip *tcpTarget // nil while down

	dir       string
	mux       *vsocktest.Muxer
	receivers []string // URLs of the live notifier receivers
	notified  deliveries
	stopFuncs []func()
}

func (t *targets) close() {
	for i := len(t.stopFuncs) - 1; i >= 0; i-- {
		t.stopFuncs[i]()
	}
}

// startTargets serves the targets of cfg's fleet and, when cfg.Notifiers
// is above 1, that many live notifier receivers less one.
func startTargets(cfg Config) (_ *targets, err error) {
	t := &targets{f: newFleet(cfg)}
	t.rec = newArrivals(t.f, cfg.Interval)
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	need := map[health.Type]bool{}
	for _, k := range t.f.kinds(cfg.Type) {
		need[k] = true
	}
	p := &t.f.ports
	if need[health.TypeTCP] {
		main, err := serveTCP(t.rec, t.f.n, 0)
		if err != nil {
			return nil, err
		}
		t.stopFuncs = append(t.stopFuncs, main.close)
		if t.tcpFlip, err = serveTCP(t.rec, t.f.n, 0); err != nil {
			return nil, err
		}
		p.TCP, p.TCPFlip = main.port, t.tcpFlip.port
		t.stopFuncs = append(t.stopFuncs, func() {
			t.flipMu.Lock()
			defer t.flipMu.Unlock()
			if t.tcpFlip != nil {
				t.tcpFlip.close()
			}
		})
	}
	if need[health.TypeHTTP] {
		if p.HTTP, err = t.serveHTTP(); err != nil {
			return nil, err
		}
	}
	if need[health.TypeGRPC] {
		if p.GRPC, err = t.serveGRPC(); err != nil {
			return nil, err
		}
	}
	if need[health.TypeExec] {
		if err = t.startAgent(cfg); err != nil {
			return nil, err
		}
	}
	for range cfg.Notifiers - 1 {
		u, err := t.serveReceiver()
		if err != nil {
			return nil, err
		}
		t.receivers = append(t.receivers, u)
	}
	return t, nil
}

func (t *targets) begin() {
	t.notified.counting.Store(true)
	t.rec.begin()
}

func (t *targets) end() TargetReport {
	t.notified.counting.Store(false)
	r := t.rec.end()
	r.NotifierArrivals = t.notified.n.Load()
	r.NotifierP50MS, r.NotifierP99MS, r.NotifierMaxMS = t.notified.lag.quantile(0.5), t.notified.lag.quantile(0.99), t.notified.lag.maxMS()
	return r
}

// acceptShards is how many SO_REUSEPORT listeners share a TCP target port:
// the kernel spreads connections over their accept queues (4096 each), so
// a burst of probes (up to the budget, 1024, at once) never overflows one
// (an overflow drops the SYN and the probe waits a 1 s retransmit).
const acceptShards = 4

// tcpTarget is one TCP port on 0.0.0.0 that accepts and closes, served by
// acceptShards listening sockets made with raw system calls. Each is on the
// runtime's poller and drained by its own goroutine as soon as a
// connection is queued, so that an arrival is recorded when it happens:
// accept4, getsockname (the destination address says which instance) and
// close, all non-blocking raw calls, into a buffer the goroutine owns —
// nothing allocated per connection.
type tcpTarget struct {
	rec   *arrivals
	n     int
	port  int
	files []*os.File
	wg    sync.WaitGroup
}

// sockname is a shard's buffer for getsockname.
type sockname struct {
	sa  unix.RawSockaddrInet4
	len uint32
}

// serveTCP opens a TCP target on port (0: a free one).
func serveTCP(rec *arrivals, n, port int) (_ *tcpTarget, err error) {
	t := &tcpTarget{rec: rec, n: n, port: port}
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	for range acceptShards {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, os.NewSyscallError("socket", err)
		}
		file := os.NewFile(uintptr(fd), "tcp-target") // non-blocking: on the poller
		t.files = append(t.files, file)
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
		rc, err := file.SyscallConn()
		if err != nil {
			return nil, err
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			buf := &sockname{}
			// Read calls drain each time the socket turns readable, until
			// the file is closed
			_ = rc.Read(func(fd uintptr) bool {
				t.drain(int(fd), buf)
				return false
			})
		}()
	}
	return t, nil
}

// close stops serving t and closes its listening sockets (connections still
// queued are reset).
func (t *tcpTarget) close() {
	for _, f := range t.files {
		_ = f.Close()
	}
	t.wg.Wait()
}

// drain accepts, attributes and closes what is queued on the listening
// socket fd, until it is empty. Neither call blocks (the socket is
// non-blocking; the accepted connection was reset by the prober, or closing
// it sends one).
func (t *tcpTarget) drain(fd int, b *sockname) {
	for {
		nfd, _, errno := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), 0, 0, unix.SOCK_CLOEXEC, 0, 0)
		switch errno {
		case 0:
			b.len = unix.SizeofSockaddrInet4
			_, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, nfd, uintptr(unsafe.Pointer(&b.sa)), uintptr(unsafe.Pointer(&b.len)))
			_, _, _ = unix.RawSyscall(unix.SYS_CLOSE, nfd, 0, 0)
			i := -1
			if e == 0 && b.sa.Family == unix.AF_INET {
				i = indexOf4(b.sa.Addr, t.n)
			}
			t.rec.arrive(i)
		case unix.EINTR, unix.ECONNABORTED:
		default: // EAGAIN: drained
			return
		}
	}
}

// setDown flips the flipping targets: TCP's closes its port (refusals) and
// reopens it, HTTP's and gRPC's answer unhealthy, exec's command fails.
func (t *targets) setDown(down bool) error {
	t.down.Store(down)
	if p := t.f.ports.DownFile; p != "" {
		if down {
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				return err
			}
		} else if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	if t.f.ports.TCPFlip == 0 {
		return nil
	}
	t.flipMu.Lock()
	defer t.flipMu.Unlock()
	if down {
		if t.tcpFlip != nil {
			t.tcpFlip.close()
			t.tcpFlip = nil
		}
		return nil
	}
	if t.tcpFlip != nil {
		return nil
	}
	ls, err := serveTCP(t.rec, t.f.n, t.f.ports.TCPFlip)
	if err != nil {
		return fmt.Errorf("reopen the flipping tcp target: %w", err)
	}
	t.tcpFlip = ls
	return nil
}

// The HTTP target's answers: the probe reads the status and an empty body.
var (
	http200 = []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	http503 = []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	http404 = []byte("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	endOfHd = []byte("\r\n\r\n")
)

// requestBufs hold a request's head while it is read.
var requestBufs = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

// serveHTTP serves the HTTP targets: a bare HTTP/1.1 responder, not
// net/http, so that the target process costs as little as a connection
// does (net/http spends ≈ 60 µs a request here on what a probe never
// reads). A request arrives when its head is read.
func (t *targets) serveHTTP() (int, error) {
	l, err := listen("0.0.0.0:0")
	if err != nil {
		return 0, err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				time.Sleep(5 * time.Millisecond) // out of descriptors: let some close
				continue
			}
			go t.answerHTTP(c)
		}
	}()
	t.stopFuncs = append(t.stopFuncs, func() { _ = l.Close(); wg.Wait() })
	return l.Addr().(*net.TCPAddr).Port, nil
}

// hungFor bounds how long a hung target holds a connection the prober
// never closes.
const hungFor = 10 * time.Minute

func (t *targets) answerHTTP(c net.Conn) {
	defer c.Close()
	i := indexOf(c.LocalAddr(), t.f.n)
	bp := requestBufs.Get().(*[]byte)
	defer requestBufs.Put(bp)
	buf := *bp
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for n := 0; ; {
		m, err := c.Read(buf[n:])
		from := max(n-len(endOfHd)+1, 0)
		n += m
		if bytes.Contains(buf[from:n], endOfHd) {
			break
		}
		if err != nil || n == len(buf) {
			return // closed, or a head no prober sends
		}
	}
	t.rec.arrive(i)
	switch {
	case i < 0:
		_, _ = c.Write(http404)
	case t.f.hung[i]:
		// accept, never answer: hold the connection until the prober gives up
		_ = c.SetReadDeadline(time.Now().Add(hungFor))
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	case t.f.flips[i] && t.down.Load():
		_, _ = c.Write(http503)
	default:
		_, _ = c.Write(http200)
	}
}

// healthTarget answers grpc.health.v1 per destination address.
type healthTarget struct {
	healthpb.UnimplementedHealthServer
	t *targets
}

func (h healthTarget) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	p, ok := peer.FromContext(ctx)
	i := -1
	if ok {
		i = indexOf(p.LocalAddr, h.t.f.n)
	}
	h.t.rec.arrive(i)
	switch {
	case i < 0:
		return nil, status.Error(codes.NotFound, "unknown instance")
	case h.t.f.hung[i]:
		<-ctx.Done()
		return nil, ctx.Err()
	case h.t.f.flips[i] && h.t.down.Load():
		return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_NOT_SERVING}, nil
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (t *targets) serveGRPC() (int, error) {
	l, err := listen("0.0.0.0:0")
	if err != nil {
		return 0, err
	}
	g := grpc.NewServer()
	healthpb.RegisterHealthServer(g, healthTarget{t: t})
	go func() { _ = g.Serve(l) }()
	t.stopFuncs = append(t.stopFuncs, g.Stop)
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startAgent runs the real guest agent (the vigil binary's `agent` command)
// behind the hybrid-vsock test muxer. Exec probes are not attributed to
// instances: every instance's socket is the muxer's.
func (t *targets) startAgent(cfg Config) error {
	bin, err := cfg.binary()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "vigil-lt")
	if err != nil {
		return err
	}
	t.dir = dir
	t.stopFuncs = append(t.stopFuncs, func() { _ = os.RemoveAll(dir) })
	t.f.ports.DownFile = filepath.Join(dir, "down")
	sock, ready := filepath.Join(dir, "agent.sock"), filepath.Join(dir, "ready")
	cmd := exec.Command(bin, "agent", "--listen", "unix://"+sock, "--ready-file", ready,
		"--max-concurrent", "1024", "--log-level", "warn")
	cmd.Stderr = os.Stderr
	done, err := launch(cmd)
	if err != nil {
		return fmt.Errorf("start the agent %s: %w", bin, err)
	}
	t.stopFuncs = append(t.stopFuncs, func() { _ = cmd.Process.Kill(); <-done })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the agent %s did not get ready within 10s", bin)
		}
	}
	if t.mux, err = vsocktest.Start(dir, sock); err != nil {
		return err
	}
	t.f.ports.Vsock = t.mux.Path
	t.stopFuncs = append(t.stopFuncs, t.mux.Close)
	return nil
}

// deliveries is what the live notifier receivers saw in the window: each
// event's lag from its transition to its arrival.
type deliveries struct {
	lag      hist
	n        atomic.Uint64
	counting atomic.Bool
}

// serveReceiver serves one live notifier receiver on 127.0.0.1 and returns
// its URL.
func (t *targets) serveReceiver() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	d := &t.notified
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		var ce struct {
			Data struct {
				At time.Time `json:"at"`
			} `json:"data"`
		}
		if json.Unmarshal(body, &ce) == nil && !ce.Data.At.IsZero() && d.counting.Load() {
			d.lag.add(time.Since(ce.Data.At))
			d.n.Add(1)
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	go func() { _ = srv.Serve(l) }()
	t.stopFuncs = append(t.stopFuncs, func() { _ = srv.Close() })
	return "http://" + l.Addr().String() + "/", nil
}

// listen opens a listener of the HTTP or gRPC target; accepted connections
// get no TCP keep-alive (it costs syscalls the probe does not need).
func listen(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(context.Background(), "tcp", addr)
}
