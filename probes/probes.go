// Package probes runs one health probe against one target: HTTP, TCP and gRPC
// over the network (exec probes through the guest agent are built in
// probes/guest). A Prober is built once per policy and target and is safe for
// concurrent use; Probe honours its context's deadline, never panics on a bad
// target and reports a failing target as a Result, not an error.
package probes

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"

	"github.com/vigilhq/vigil/health"
)

// Prober runs one probe. The caller bounds it with a context deadline and
// fills in the result's start time and duration.
type Prober interface {
	Probe(ctx context.Context) health.Result
}

// Starter is a Prober whose probe can often finish without blocking. Start
// does the part that never blocks; when that settles the probe it returns
// the result and a nil Rest. Otherwise the caller must call the Rest, once,
// where it may block: it finishes the probe within its context's deadline
// (counted by the caller from Start) and releases what Start took.
type Starter interface {
	Prober
	Start() (health.Result, Rest)
}

// Rest finishes a probe that Start began.
type Rest func(ctx context.Context) health.Result

// Func adapts a function to a Prober.
type Func func(ctx context.Context) health.Result

// Probe calls f.
func (f Func) Probe(ctx context.Context) health.Result { return f(ctx) }

// New builds the prober for an instance's policy. It returns an error for a
// policy it cannot run (disabled, or exec without a guest transport); a
// validated instance never yields one for http, tcp or grpc.
func New(in health.Instance) (Prober, error) {
	p := in.HealthCheck
	if !p.Enabled() {
		return nil, errors.New("probes: health checking is disabled")
	}
	if p.Type == health.TypeExec {
		if in.Vsock == nil {
			return nil, errors.New("probes: exec probe needs vsock")
		}
		return NewExec(*in.Vsock, *p.Exec), nil
	}
	if in.Network == nil {
		return nil, fmt.Errorf("probes: %s probe needs network.ip", p.Type)
	}
	ip, err := netip.ParseAddr(in.Network.IP)
	if err != nil {
		return nil, fmt.Errorf("probes: network.ip: %w", err)
	}
	addr := func() string { return net.JoinHostPort(ip.String(), strconv.Itoa(p.Port())) }
	switch p.Type {
	case health.TypeHTTP:
		return newHTTP(addr(), p.HTTP), nil
	case health.TypeTCP:
		return &TCP{ap: netip.AddrPortFrom(ip, uint16(p.Port()))}, nil
	case health.TypeGRPC:
		return &GRPC{Addr: addr(), Service: p.GRPC.Service}, nil
	}
	return nil, fmt.Errorf("probes: unknown probe type %q", p.Type)
}

// probeDialer opens probe connections without TCP keep-alive: a probe's
// connection lives for one request, and enabling keep-alive costs three
// setsockopt calls per probe.
var probeDialer = &net.Dialer{KeepAlive: -1}

// TCP succeeds when a connection to Addr opens.
type TCP struct {
	Addr string         // "ip:port" (an address, not a name), when ap is not set
	ap   netip.AddrPort // set by New, which leaves Addr empty
}

// Probe connects and closes with a reset (linger 0), as the kubelet does:
// a probe every few seconds per instance must not leave a TIME_WAIT socket
// behind each time, which on a busy host exhausts the ephemeral ports.
func (t *TCP) Probe(ctx context.Context) health.Result {
	r, rest := t.Start()
	if rest != nil {
		return rest(ctx)
	}
	return r
}

// Start opens the connection without blocking; a handshake that is done at
// once (loopback, a refusal) settles the probe.
func (t *TCP) Start() (health.Result, Rest) {
	ap := t.ap
	if !ap.IsValid() {
		var err error
		if ap, err = netip.ParseAddrPort(t.Addr); err != nil {
			return health.Result{Outcome: health.Failure, Reason: health.ReasonIOError, Message: err.Error()}, nil
		}
	}
	c, err := beginConnect(ap)
	switch {
	case c != nil:
		return health.Result{}, func(ctx context.Context) health.Result {
			if err := c.finish(ctx); err != nil {
				return Fail(ctx, err)
			}
			return health.Result{Outcome: health.Success}
		}
	case err != nil:
		return Fail(context.Background(), err), nil
	}
	return health.Result{Outcome: health.Success}, nil
}

// dialAndReset is the portable connect-and-reset, through the net package.
func dialAndReset(ctx context.Context, ap netip.AddrPort) error {
	c, err := probeDialer.DialContext(ctx, "tcp", ap.String())
	if err != nil {
		return err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	return c.Close()
}

// Fail classifies err into a failure result with a reason code.
func Fail(ctx context.Context, err error) health.Result {
	reason := Classify(ctx, err)
	msg := err.Error()
	if reason == health.ReasonTimeout {
		msg = "probe timed out: " + msg
	}
	return health.Result{Outcome: health.Failure, Reason: reason, Message: msg}
}

// Classify maps a probe error to a reason code.
func Classify(ctx context.Context, err error) health.Reason {
	var netErr net.Error
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var certInvalid x509.CertificateInvalidError
	var recErr tls.RecordHeaderError
	var alert tls.AlertError
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return health.ReasonTimeout
	case errors.Is(err, context.Canceled):
		return health.ReasonCanceled
	case errors.Is(err, syscall.ECONNREFUSED):
		return health.ReasonConnectionRefused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return health.ReasonUnreachable
	case errors.As(err, &certErr), errors.As(err, &unknownAuth), errors.As(err, &hostErr),
		errors.As(err, &certInvalid), errors.As(err, &recErr), errors.As(err, &alert):
		return health.ReasonTLS
	}
	return health.ReasonIOError
}
