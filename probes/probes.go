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
	neturl "net/url"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/probes/condition"
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

// New builds the prober for an instance's policy with the default Options.
func New(in health.Instance) (Prober, error) { return Options{}.New(in) }

// Options are the host's settings for the probers it builds.
type Options struct {
	// Source is the local address network probes connect from when the
	// instance names none (network.source_ip) and it is of the target's
	// family; the zero Addr lets the kernel choose.
	Source netip.Addr
}

// New builds the prober for an instance's policy. It returns an error for a
// policy it cannot run (disabled, exec without a guest transport, an http
// condition that does not compile); a validated instance (Validate) never
// yields one for http, tcp or grpc.
func (o Options) New(in health.Instance) (Prober, error) {
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
	src, err := o.source(in.Network, ip)
	if err != nil {
		return nil, err
	}
	addr := func() string { return net.JoinHostPort(ip.String(), strconv.Itoa(p.Port())) }
	switch p.Type {
	case health.TypeHTTP:
		return newHTTP(addr(), src, p.HTTP)
	case health.TypeTCP:
		ap := netip.AddrPortFrom(ip, uint16(p.Port()))
		if p.TCP.Dialogue() {
			return newDialogue(ap, src, p.TCP)
		}
		return &TCP{ap: ap, src: src}, nil
	case health.TypeGRPC:
		return newGRPC(addr(), p.GRPC.Service, src)
	}
	return nil, fmt.Errorf("probes: unknown probe type %q", p.Type)
}

// source is the address to connect to ip from: the instance's, else the
// host's when it is of ip's family, else none.
func (o Options) source(n *health.Network, ip netip.Addr) (netip.Addr, error) {
	if n.SourceIP != "" {
		src, err := netip.ParseAddr(n.SourceIP)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("probes: network.source_ip: %w", err)
		}
		return src.Unmap(), nil
	}
	if src := o.Source.Unmap(); src.IsValid() && src.Is4() == ip.Unmap().Is4() {
		return src, nil
	}
	return netip.Addr{}, nil
}

// Validate checks what health's rules cannot, for the scheduler to refuse
// at registration: an http condition must compile and type-check as CEL.
// Its error is a *health.FieldError naming the field, with CEL's message.
func Validate(in health.Instance) error {
	p := in.HealthCheck
	if p == nil || p.HTTP == nil || p.HTTP.Condition == "" {
		return nil
	}
	if _, err := condition.Compile(p.HTTP.Condition); err != nil {
		return &health.FieldError{Field: "health_check.http.condition", Message: "is not a valid CEL condition: " + err.Error()}
	}
	return nil
}

// dialer is a probe's dialer from src (none when src is the zero Addr).
func dialer(src netip.Addr) *net.Dialer {
	if !src.IsValid() {
		return probeDialer
	}
	return &net.Dialer{KeepAlive: -1, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Control: bindNoPort}
}

// dialProbe opens a probe's connection with d, to ap when it is set (an IP
// address and port: no resolver, and from src, or from any address when
// src is not set), else to addr. The bind a dial to an address makes takes
// the address alone and leaves the port to the connect (bindNoPort): a
// bind to port 0 reserves a port for every destination, where the
// connect's own choice shares one among destinations, and a prober closing
// thousands of connections a second would have the kernel search for a
// free port through its TIME_WAIT sockets on every dial, until none is
// left.
func dialProbe(ctx context.Context, d *net.Dialer, addr string, ap netip.AddrPort, src netip.Addr) (net.Conn, error) {
	if !ap.IsValid() {
		return d.DialContext(ctx, "tcp", addr)
	}
	if !src.IsValid() {
		d = anySourceDialer
	}
	return d.DialTCP(ctx, "tcp", netip.AddrPortFrom(src, 0), ap)
}

// bindToContext makes ctx's deadline conn's, and ctx's end (the actor
// aborting the probe) end conn's reads and writes at once; stop releases
// the watch.
func bindToContext(ctx context.Context, conn net.Conn) (stop func() bool) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	return context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
}

// connFailure is the failure of a request (op and url, as http.Client's
// errors name them) on a connection bound to ctx: a deadline the
// connection hit is the probe's timeout, as the client says it (the
// connection's deadline is the context's, and may come first).
func connFailure(ctx context.Context, op, url string, err error) health.Result {
	if ce := ctx.Err(); ce != nil {
		err = ce
	} else if dl, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(dl) {
		err = context.DeadlineExceeded
	}
	return Fail(ctx, &neturl.Error{Op: op, URL: url, Err: err})
}

// anySourceDialer dials from any local address: DialTCP always binds, to
// the unspecified address when there is no source, so it must not take a
// port there (bindNoPort). Through the net package, this costs less than
// a dial that resolves its address, even a literal one.
var anySourceDialer = &net.Dialer{KeepAlive: -1, Control: bindNoPort}

// probeDialer opens probe connections without TCP keep-alive: a probe's
// connection lives for one request, and enabling keep-alive costs three
// setsockopt calls per probe.
var probeDialer = &net.Dialer{KeepAlive: -1}

// TCP succeeds when a connection to Addr opens.
type TCP struct {
	Addr string         // "ip:port" (an address, not a name), when ap is not set
	ap   netip.AddrPort // set by New, which leaves Addr empty
	src  netip.Addr     // the local address to connect from, if any
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
	c, err := beginConnect(ap, t.src)
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
func dialAndReset(ctx context.Context, ap netip.AddrPort, src netip.Addr) error {
	c, err := dialer(src).DialContext(ctx, "tcp", ap.String())
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
