package probes

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/internal/tcptest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// the scheduler tests: protoactor's dead-letter throttle goroutine
		// ends by itself one throttle interval after the first dead letter
		goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"),
	)
}

// instance builds a validated instance probing host:port with policy js.
func instance(t *testing.T, addr string, policy string) health.Instance {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	policy = strings.ReplaceAll(policy, "PORT", port)
	var spec health.PolicySpec
	require.NoError(t, jsonUnmarshal(policy, &spec))
	in, err := health.InstanceSpec{State: health.Running, Network: &health.Network{IP: host}, HealthCheck: &spec}.Normalize("t")
	require.NoError(t, err)
	return in
}

func probe(t *testing.T, in health.Instance, timeout time.Duration) (health.Result, time.Duration) {
	t.Helper()
	p, err := New(in)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	r := p.Probe(ctx)
	return r, time.Since(start)
}

// refusedAddr is a loopback address with nothing listening.
func refusedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// hungListener accepts connections and never answers.
func hungListener(t *testing.T, network, addr string) string {
	t.Helper()
	l, err := net.Listen(network, addr)
	require.NoError(t, err)
	done := make(chan struct{})
	var conns []net.Conn
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-done
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return l.Addr().String()
}

func TestHTTPProbe(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, "close", r.Header.Get("Connection"), "a fresh connection per probe")
		assert.Equal(t, "yes", r.Header.Get("X-Probe"))
		_, _ = w.Write([]byte("all good"))
	})
	mux.HandleFunc("/host", func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "app.internal" {
			w.WriteHeader(http.StatusMisdirectedRequest)
		}
	})
	mux.HandleFunc("/503", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	mux.HandleFunc("/204", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ok", http.StatusFound) })
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		chunk := strings.Repeat("x", 32<<10)
		for i := 0; i < 64; i++ { // 2 MiB, far past the read cap
			if _, err := w.Write([]byte(chunk)); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/slowbody", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	addr := srv.Listener.Addr().String()

	for _, tc := range []struct {
		name, policy string
		outcome      health.Outcome
		reason       health.Reason
		code         int
	}{
		{"healthy", `{"http":{"port":PORT,"path":"/ok","headers":{"X-Probe":"yes"}}}`, health.Success, "", 200},
		{"HEAD", `{"http":{"port":PORT,"path":"/ok","method":"HEAD","headers":{"X-Probe":"yes"}}}`, health.Success, "", 200},
		{"host override", `{"http":{"port":PORT,"path":"/host","host":"app.internal"}}`, health.Success, "", 200},
		{"wrong status", `{"http":{"port":PORT,"path":"/503"}}`, health.Failure, health.ReasonStatusMismatch, 503},
		{"status range", `{"http":{"port":PORT,"path":"/204","expected_status":"200-299,304"}}`, health.Success, "", 204},
		{"redirect not followed", `{"http":{"port":PORT,"path":"/redirect"}}`, health.Failure, health.ReasonStatusMismatch, 302},
		{"redirect expected", `{"http":{"port":PORT,"path":"/redirect","expected_status":302}}`, health.Success, "", 302},
		{"big body is capped", `{"http":{"port":PORT,"path":"/big"}}`, health.Success, "", 200},
		{"slow body times out", `{"http":{"port":PORT,"path":"/slowbody"}}`, health.Failure, health.ReasonTimeout, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, took := probe(t, instance(t, addr, tc.policy), 300*time.Millisecond)
			assert.Equal(t, tc.outcome, r.Outcome, r.Message)
			assert.Equal(t, tc.reason, r.Reason, r.Message)
			assert.Equal(t, tc.code, r.HTTPStatus)
			assert.LessOrEqual(t, len(r.Output), health.MaxOutput)
			assert.Less(t, took, 1300*time.Millisecond, "the timeout ends it")
		})
	}
	r, _ := probe(t, instance(t, addr, `{"http":{"port":PORT,"path":"/redirect"}}`), time.Second)
	assert.Contains(t, r.Message, "redirect to /ok not followed")
}

func TestHTTPProbeRefusedAndHung(t *testing.T) {
	r, _ := probe(t, instance(t, refusedAddr(t), `{"http":{"port":PORT}}`), time.Second)
	assert.Equal(t, health.ReasonConnectionRefused, r.Reason, r.Message)

	hung := hungListener(t, "tcp", "127.0.0.1:0")
	r, took := probe(t, instance(t, hung, `{"http":{"port":PORT}}`), 200*time.Millisecond)
	assert.Equal(t, health.ReasonTimeout, r.Reason, r.Message)
	assert.InDelta(t, 200*time.Millisecond, took, float64(50*time.Millisecond), "the timeout is honoured within 50 ms")
}

func TestHTTPSProbe(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	r, _ := probe(t, instance(t, addr, `{"http":{"port":PORT,"scheme":"https"}}`), time.Second)
	assert.Equal(t, health.Failure, r.Outcome)
	assert.Equal(t, health.ReasonTLS, r.Reason, r.Message)
	r, _ = probe(t, instance(t, addr, `{"http":{"port":PORT,"scheme":"https","tls_skip_verify":true}}`), time.Second)
	assert.Equal(t, health.Success, r.Outcome, r.Message)
}

func TestProbesOverIPv6(t *testing.T) {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback here:", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()
	addr := l.Addr().String()
	r, _ := probe(t, instance(t, addr, `{"http":{"port":PORT}}`), time.Second)
	assert.Equal(t, health.Success, r.Outcome, r.Message)
	r, _ = probe(t, instance(t, addr, `{"tcp":{"port":PORT}}`), time.Second)
	assert.Equal(t, health.Success, r.Outcome, r.Message)
}

func TestTCPProbe(t *testing.T) {
	hung := hungListener(t, "tcp", "127.0.0.1:0")
	r, _ := probe(t, instance(t, hung, `{"tcp":{"port":PORT}}`), time.Second)
	assert.Equal(t, health.Success, r.Outcome, "accepting is enough for tcp")
	r, _ = probe(t, instance(t, refusedAddr(t), `{"tcp":{"port":PORT}}`), time.Second)
	assert.Equal(t, health.ReasonConnectionRefused, r.Reason, r.Message)
}

func TestGRPCProbe(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	hs := grpchealth.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	hs.SetServingStatus("db", healthpb.HealthCheckResponse_NOT_SERVING)
	go func() { _ = srv.Serve(l) }()
	defer srv.Stop()
	addr := l.Addr().String()

	r, _ := probe(t, instance(t, addr, `{"grpc":{"port":PORT}}`), time.Second)
	assert.Equal(t, health.Success, r.Outcome, r.Message)
	r, _ = probe(t, instance(t, addr, `{"grpc":{"port":PORT,"service":"db"}}`), time.Second)
	assert.Equal(t, health.ReasonNotServing, r.Reason, r.Message)
	r, _ = probe(t, instance(t, addr, `{"grpc":{"port":PORT,"service":"nope"}}`), time.Second)
	assert.Equal(t, health.ReasonNotServing, r.Reason, r.Message)
	r, _ = probe(t, instance(t, refusedAddr(t), `{"grpc":{"port":PORT}}`), time.Second)
	assert.Equal(t, health.ReasonConnectionRefused, r.Reason, r.Message)

	hung := hungListener(t, "tcp", "127.0.0.1:0")
	r, took := probe(t, instance(t, hung, `{"grpc":{"port":PORT}}`), 200*time.Millisecond)
	assert.Equal(t, health.ReasonTimeout, r.Reason, r.Message)
	assert.Less(t, took, 2*time.Second, "the timeout ends it, not the target (a loaded machine may be slow to wake)")
}

func TestNewRejectsWhatItCannotRun(t *testing.T) {
	_, err := New(health.Instance{})
	assert.Error(t, err)
	in, err := health.InstanceSpec{State: health.Running, Vsock: &health.VsockSpec{CID: 3},
		HealthCheck: &health.PolicySpec{Exec: &health.ExecSpec{Command: []string{"true"}}}}.Normalize("x")
	require.NoError(t, err)
	p, err := New(in)
	require.NoError(t, err, "exec with a vsock target has a prober")
	assert.IsType(t, &Exec{}, p)
	in.Vsock = nil
	_, err = New(in)
	assert.ErrorContains(t, err, "vsock")
}

func TestClassify(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.Equal(t, health.ReasonCanceled, Classify(context.Background(), ctx.Err()))
	_, err := net.Dial("tcp", refusedAddr(t))
	assert.Equal(t, health.ReasonConnectionRefused, Classify(context.Background(), err))
}

// synDroppingAddr is a loopback listener whose accept queue is full: the
// kernel drops further SYNs, so a connect neither completes nor fails.
func synDroppingAddr(t *testing.T) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { _ = unix.Close(fd) })
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, unix.Listen(fd, 0)) // one connection fits, never accepted
	sa, err := unix.Getsockname(fd)
	require.NoError(t, err)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*unix.SockaddrInet4).Port))
	c, err := net.DialTimeout("tcp", addr, time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return addr
}

func TestTCPProbeTimesOutAndCancels(t *testing.T) {
	addr := synDroppingAddr(t)
	r, took := probe(t, instance(t, addr, `{"tcp":{"port":PORT}}`), 200*time.Millisecond)
	assert.Equal(t, health.ReasonTimeout, r.Reason, r.Message)
	assert.Contains(t, r.Message, "dial tcp "+addr)
	assert.Less(t, took, time.Second)

	p, err := New(instance(t, addr, `{"tcp":{"port":PORT}}`))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	r = p.Probe(ctx)
	assert.Equal(t, health.ReasonCanceled, r.Reason, r.Message)
	assert.Less(t, time.Since(start), 5*time.Second, "canceling ends the connect")
}

func TestTCPStartSettlesLoopbackAtOnce(t *testing.T) {
	hung := hungListener(t, "tcp", "127.0.0.1:0")
	p, err := New(instance(t, hung, `{"tcp":{"port":PORT}}`))
	require.NoError(t, err)
	st, ok := p.(Starter)
	require.True(t, ok, "a TCP prober starts without blocking")
	settled := 0
	for range 20 {
		r, rest := st.Start()
		if rest == nil {
			settled++
			assert.Equal(t, health.Success, r.Outcome, r.Message)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		assert.Equal(t, health.Success, rest(ctx).Outcome)
		cancel()
	}
	assert.Positive(t, settled, "a loopback handshake is done when connect returns")

	refused, err := New(instance(t, refusedAddr(t), `{"tcp":{"port":PORT}}`))
	require.NoError(t, err)
	r, rest := refused.(Starter).Start()
	if rest != nil {
		r = rest(context.Background())
	}
	assert.Equal(t, health.ReasonConnectionRefused, r.Reason, r.Message)

	// a handshake under way continues in its Rest, within the Rest's context
	dropping, err := New(instance(t, synDroppingAddr(t), `{"tcp":{"port":PORT}}`))
	require.NoError(t, err)
	_, rest = dropping.(Starter).Start()
	require.NotNil(t, rest, "no SYN-ACK: the connect is under way")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	assert.Equal(t, health.ReasonTimeout, rest(ctx).Reason)
}

func TestTCPProbeLeavesNoTimeWait(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	got := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			_, err = c.Read(make([]byte, 1)) // the probe's close arrives as a reset
			_ = c.Close()
		}
		got <- err
	}()
	r, _ := probe(t, instance(t, l.Addr().String(), `{"tcp":{"port":PORT}}`), time.Second)
	require.Equal(t, health.Success, r.Outcome, r.Message)
	assert.ErrorIs(t, <-got, syscall.ECONNRESET, "closed with a reset, not a FIN")
}

func TestTCPProbeIPv6(t *testing.T) {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback here:", err)
	}
	addr := l.Addr().String()
	tcptest.Serve(t, l)
	r, _ := probe(t, instance(t, addr, `{"tcp":{"port":PORT}}`), time.Second)
	assert.Equal(t, health.Success, r.Outcome, r.Message)
	require.NoError(t, l.Close())
	r, _ = probe(t, instance(t, addr, `{"tcp":{"port":PORT}}`), time.Second)
	assert.Equal(t, health.ReasonConnectionRefused, r.Reason, r.Message)
	assert.Contains(t, r.Message, "dial tcp "+addr)
}
