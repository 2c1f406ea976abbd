package probes

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/vigilhq/vigil/health"
)

// Bounds of what an HTTP probe reads from its target.
const (
	MaxBodyRead        = 64 << 10
	MaxResponseHeaders = 64 << 10
)

// HTTP sends one request on a fresh connection and succeeds when the status
// code is expected. Redirects are not followed; at most MaxBodyRead bytes of
// body are read.
type HTTP struct {
	client  *http.Client
	url     string
	method  string
	host    string
	headers http.Header
	expect  health.StatusSet
}

// Transports are shared by every HTTP prober: keep-alives are off, so each
// probe opens and closes its own connection and a dead listener is never
// hidden behind a pooled one.
var (
	plainTransport    = newTransport(false)
	insecureTransport = newTransport(true)
)

func newTransport(skipVerify bool) *http.Transport {
	return &http.Transport{
		Proxy:                  nil,
		DialContext:            probeDialer.DialContext,
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: MaxResponseHeaders,
		TLSClientConfig:        &tls.Config{InsecureSkipVerify: skipVerify, MinVersion: tls.VersionTLS12}, //nolint:gosec // opt-in per policy
		ForceAttemptHTTP2:      false,
	}
}

func newHTTP(addr string, p *health.HTTPProbe) *HTTP {
	tr := plainTransport
	if p.TLSSkipVerify {
		tr = insecureTransport
	}
	if p.Host != "" && p.Scheme == "https" {
		// the TLS server name follows the Host override
		tr = tr.Clone()
		tr.TLSClientConfig.ServerName = hostOnly(p.Host)
	}
	h := &HTTP{
		client: &http.Client{
			Transport:     tr,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		url:    p.Scheme + "://" + addr + p.Path,
		method: p.Method,
		host:   p.Host,
		expect: p.ExpectedStatus,
	}
	if len(p.Headers) > 0 {
		h.headers = make(http.Header, len(p.Headers))
		for k, v := range p.Headers {
			h.headers.Set(k, v)
		}
	}
	return h
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// Probe sends the request and reads up to MaxBodyRead bytes of the body.
func (h *HTTP) Probe(ctx context.Context) health.Result {
	req, err := http.NewRequestWithContext(ctx, h.method, h.url, nil)
	if err != nil {
		return health.Result{Outcome: health.Failure, Reason: health.ReasonIOError, Message: err.Error()}
	}
	for k, v := range h.headers {
		req.Header[k] = v
	}
	if h.host != "" {
		req.Host = h.host
	}
	req.Header.Set("User-Agent", "vigil-probe/1")
	req.Close = true
	resp, err := h.client.Do(req)
	if err != nil {
		return Fail(ctx, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBodyRead))
	r := health.Result{HTTPStatus: resp.StatusCode, Output: health.TailUTF8(string(body), health.MaxOutput)}
	if err != nil {
		f := Fail(ctx, fmt.Errorf("reading body after status %d: %w", resp.StatusCode, err))
		f.HTTPStatus, f.Output = r.HTTPStatus, r.Output
		return f
	}
	if !h.expect.Contains(resp.StatusCode) {
		r.Outcome = health.Failure
		r.Reason = health.ReasonStatusMismatch
		r.Message = fmt.Sprintf("HTTP status %d, expected %s", resp.StatusCode, h.expect.String())
		if loc := resp.Header.Get("Location"); loc != "" && resp.StatusCode >= 300 && resp.StatusCode < 400 {
			r.Message += " (redirect to " + health.TruncateUTF8(strings.ToValidUTF8(loc, "?"), 256) + " not followed)"
		}
		return r
	}
	r.Outcome = health.Success
	return r
}
