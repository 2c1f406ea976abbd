package probes

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/probes/condition"
)

// Bounds of what an HTTP probe reads from its target.
const (
	MaxBodyRead        = 64 << 10
	MaxResponseHeaders = 64 << 10
)

// HTTP sends one request on a fresh connection and succeeds when the status
// code is expected and, in this order, the certificate chain is valid long
// enough (tls.min_days_valid), the body matches body_regex and the
// condition holds. Redirects are not followed; at most MaxBodyRead bytes of
// body are read.
type HTTP struct {
	client      *http.Client
	plain       *plainHTTP // http without TLS: the request sent on a connection of its own
	url         string
	method      string
	host        string
	headers     http.Header
	expect      health.StatusSet
	body        string
	contentType string
	bodyRe      *regexp.Regexp
	cond        *condition.Condition
	minDays     int
}

// Transports are shared by every HTTP prober with the same TLS settings and
// source address: keep-alives are off, so each probe opens and closes its
// own connection and a dead listener is never hidden behind a pooled one.
var transports = struct {
	sync.Mutex
	m map[transportKey]*http.Transport
}{m: map[transportKey]*http.Transport{}}

// transportKey is what makes two probers' transports differ.
type transportKey struct {
	skipVerify bool
	serverName string
	caPEM      string
	src        netip.Addr
}

// maxTransports bounds the cache: beyond it the cache starts over (a
// transport keeps no connections, so one dropped costs nothing but its
// rebuilding).
const maxTransports = 1024

func transportFor(k transportKey) (*http.Transport, error) {
	transports.Lock()
	defer transports.Unlock()
	if tr := transports.m[k]; tr != nil {
		return tr, nil
	}
	cfg := &tls.Config{InsecureSkipVerify: k.skipVerify, MinVersion: tls.VersionTLS12, ServerName: k.serverName} //nolint:gosec // opt-in per policy
	if k.caPEM != "" {
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM([]byte(k.caPEM)) {
			return nil, fmt.Errorf("probes: http.tls.ca_pem holds no certificate")
		}
	}
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer(k.src).DialContext,
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: MaxResponseHeaders,
		TLSClientConfig:        cfg,
		ForceAttemptHTTP2:      false,
	}
	if len(transports.m) >= maxTransports {
		clear(transports.m)
	}
	transports.m[k] = tr
	return tr, nil
}

// noRedirects makes the client return a redirect as the response.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

func newHTTP(addr string, src netip.Addr, p *health.HTTPProbe) (*HTTP, error) {
	k := transportKey{skipVerify: p.TLSSkipVerify, src: src}
	if p.Scheme == "https" {
		if p.Host != "" {
			k.serverName = hostOnly(p.Host) // the TLS server name follows the Host override
		}
		if t := p.TLS; t != nil {
			if t.ServerName != "" {
				k.serverName = t.ServerName
			}
			k.caPEM = t.CAPEM
		}
	}
	tr, err := transportFor(k)
	if err != nil {
		return nil, err
	}
	h := &HTTP{
		client:      &http.Client{Transport: tr, CheckRedirect: noRedirects},
		url:         p.Scheme + "://" + addr + p.Path,
		method:      p.Method,
		host:        p.Host,
		expect:      p.ExpectedStatus,
		body:        p.Body,
		contentType: p.ContentType,
	}
	if p.TLS != nil {
		h.minDays = p.TLS.MinDaysValid
	}
	if len(p.Headers) > 0 {
		h.headers = make(http.Header, len(p.Headers))
		for k, v := range p.Headers {
			h.headers.Set(k, v)
		}
	}
	if p.Scheme == "http" {
		if h.plain, err = newPlainHTTP(addr, src, h); err != nil {
			return nil, err
		}
	}
	if p.BodyRegex != "" {
		if h.bodyRe, err = regexp.Compile(p.BodyRegex); err != nil {
			return nil, fmt.Errorf("probes: http.body_regex: %w", err)
		}
	}
	if p.Condition != "" {
		if h.cond, err = condition.Compile(p.Condition); err != nil {
			return nil, fmt.Errorf("probes: http.condition: %w", err)
		}
	}
	return h, nil
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// phaseTimer records the phases of one request from its trace. The trace's
// callbacks run on the transport's goroutines (a dial abandoned at the
// deadline may report after the probe is over), hence the mutex.
type phaseTimer struct {
	mu                            sync.Mutex
	connectStart, tlsStart, wrote time.Time
	phases                        health.Phases
}

func (pt *phaseTimer) mark(at *time.Time) {
	now := time.Now()
	pt.mu.Lock()
	*at = now
	pt.mu.Unlock()
}

func (pt *phaseTimer) end(from *time.Time, phase *time.Duration) {
	pt.mu.Lock()
	if !from.IsZero() {
		*phase = since(*from)
	}
	pt.mu.Unlock()
}

// result is the phases measured so far.
func (pt *phaseTimer) result() health.Phases {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return pt.phases
}

func (pt *phaseTimer) trace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{
		ConnectStart: func(string, string) { pt.mark(&pt.connectStart) },
		ConnectDone: func(_, _ string, err error) {
			if err == nil {
				pt.end(&pt.connectStart, &pt.phases.Connect)
			}
		},
		TLSHandshakeStart:    func() { pt.mark(&pt.tlsStart) },
		TLSHandshakeDone:     func(tls.ConnectionState, error) { pt.end(&pt.tlsStart, &pt.phases.TLS) },
		WroteRequest:         func(httptrace.WroteRequestInfo) { pt.mark(&pt.wrote) },
		GotFirstResponseByte: func() { pt.end(&pt.wrote, &pt.phases.FirstByte) },
	}
}

// since is the time since t in whole microseconds (at least one): phases
// are shown in milliseconds, and finer figures are noise.
func since(t time.Time) time.Duration {
	return max(time.Since(t).Truncate(time.Microsecond), time.Microsecond)
}

// Probe sends the request and reads up to MaxBodyRead bytes of the body.
func (h *HTTP) Probe(ctx context.Context) health.Result {
	if h.plain != nil {
		return h.plain.probe(ctx, h)
	}
	began := time.Now()
	var pt phaseTimer
	req, err := h.request(httptrace.WithClientTrace(ctx, pt.trace()))
	if err != nil {
		return health.Result{Outcome: health.Failure, Reason: health.ReasonIOError, Message: err.Error()}
	}
	resp, err := h.client.Do(req)
	if err != nil {
		f := Fail(ctx, err)
		f.Phases = pt.result()
		return f
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxBodyRead))
	return h.check(ctx, resp, string(b), err, pt.result(), began)
}

// request is the probe's request, with the context ctx.
func (h *HTTP) request(ctx context.Context) (*http.Request, error) {
	var body io.Reader
	if h.body != "" {
		body = strings.NewReader(h.body)
	}
	req, err := http.NewRequestWithContext(ctx, h.method, h.url, body)
	if err != nil {
		return nil, err
	}
	for k, v := range h.headers {
		req.Header[k] = v
	}
	if h.contentType != "" {
		req.Header.Set("Content-Type", h.contentType)
	}
	if h.host != "" {
		req.Host = h.host
	}
	req.Header.Set("User-Agent", "vigil-probe/1")
	req.Close = true
	return req, nil
}

// check judges the response resp with its body text (read up to
// MaxBodyRead; err is the error that ended the read early, if any): the
// status, the chain's expiry, body_regex, then the condition.
func (h *HTTP) check(ctx context.Context, resp *http.Response, text string, err error, phases health.Phases, began time.Time) health.Result {
	r := health.Result{HTTPStatus: resp.StatusCode, Output: health.TailUTF8(text, health.MaxOutput), Phases: phases}
	var daysLeft float64
	if resp.TLS != nil {
		r.CertNotAfter = chainNotAfter(resp.TLS)
		daysLeft = time.Until(r.CertNotAfter).Hours() / 24
	}
	fail := func(reason health.Reason, msg string) health.Result {
		r.Outcome, r.Reason, r.Message = health.Failure, reason, msg
		return r
	}
	if err != nil {
		f := Fail(ctx, fmt.Errorf("reading body after status %d: %w", resp.StatusCode, err))
		return fail(f.Reason, f.Message)
	}
	if !h.expect.Contains(resp.StatusCode) {
		msg := fmt.Sprintf("HTTP status %d, expected %s", resp.StatusCode, h.expect.String())
		if loc := resp.Header.Get("Location"); loc != "" && resp.StatusCode >= 300 && resp.StatusCode < 400 {
			msg += " (redirect to " + health.TruncateUTF8(strings.ToValidUTF8(loc, "?"), 256) + " not followed)"
		}
		return fail(health.ReasonStatusMismatch, msg)
	}
	if h.minDays > 0 && resp.TLS != nil && daysLeft < float64(h.minDays) {
		return fail(health.ReasonCertExpiring, fmt.Sprintf("certificate chain expires %s (in %.1f days), sooner than tls.min_days_valid %d",
			r.CertNotAfter.Format(time.RFC3339), daysLeft, h.minDays))
	}
	if h.bodyRe != nil && !h.bodyRe.MatchString(text) {
		return fail(health.ReasonBodyMismatch, "body does not match body_regex "+health.TruncateUTF8(h.bodyRe.String(), 128))
	}
	if h.cond != nil {
		cr := &condition.Response{Status: resp.StatusCode, Header: resp.Header, Body: text, Duration: time.Since(began),
			TLS: resp.TLS != nil, DaysLeft: daysLeft}
		ok, err := h.cond.Eval(ctx, cr)
		switch {
		case err != nil && ctx.Err() != nil:
			return fail(Classify(ctx, ctx.Err()), "probe timed out evaluating the condition: "+err.Error())
		case err != nil:
			return fail(health.ReasonConditionError, "condition could not be evaluated: "+err.Error())
		case !ok:
			return fail(health.ReasonConditionFailed, "condition is false: "+h.cond.Explain(cr))
		}
	}
	r.Outcome = health.Success
	return r
}

// chainNotAfter is when the first certificate of the chain expires: the
// verified chain's when there is one, else the certificates the server sent.
func chainNotAfter(cs *tls.ConnectionState) time.Time {
	chain := cs.PeerCertificates
	if len(cs.VerifiedChains) > 0 {
		chain = cs.VerifiedChains[0]
	}
	var first time.Time
	for _, c := range chain {
		if first.IsZero() || c.NotAfter.Before(first) {
			first = c.NotAfter
		}
	}
	return first.UTC()
}
