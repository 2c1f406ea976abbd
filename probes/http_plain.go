package probes

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/vigilhq/vigil/health"
)

// plainHTTP sends an http (not https) probe's request on a connection of
// its own without net/http's Transport, which for a connection used once
// costs most of a probe: two goroutines per connection, their channels,
// 4 KiB buffers each way and the request built anew. The request is
// rendered once, by net/http (Request.Write, as the Transport would send
// it); each probe dials, writes those bytes, and reads the response with
// net/http's own parser (ReadResponse) from a pooled buffer, reading at
// most MaxResponseHeaders of headers and MaxBodyRead of body, all within
// the probe's deadline. Nothing of a connection outlives its probe.
type plainHTTP struct {
	dial *net.Dialer
	addr string
	// addr parsed, when it is an IP address and port, as it is for an
	// instance's network.ip: dialed without the resolver; and the source
	raddr netip.AddrPort
	src   netip.Addr
	wire  []byte        // the request as sent
	req   *http.Request // for ReadResponse (its method: a HEAD has no body); no body
	op    string        // how errors name the request: Get "http://…" as http.Client's do
	url   string
}

func newPlainHTTP(addr string, src netip.Addr, h *HTTP) (*plainHTTP, error) {
	req, err := h.request(context.Background())
	if err != nil {
		return nil, fmt.Errorf("probes: http request: %w", err)
	}
	var wire bytes.Buffer
	if err := req.Write(&wire); err != nil {
		return nil, fmt.Errorf("probes: http request: %w", err)
	}
	op := h.method
	if op == "" {
		op = http.MethodGet
	}
	p := &plainHTTP{dial: dialer(src), addr: addr, wire: wire.Bytes(), req: methodOnly(req.Method),
		op: op[:1] + strings.ToLower(op[1:]), url: h.url}
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		p.raddr, p.src = ap, src
	}
	return p, nil
}

// methodOnly is a request with the method m and nothing else, one per
// method, read only: what ReadResponse needs of the request it answers,
// without an instance's headers and URL kept for it.
func methodOnly(m string) *http.Request {
	if r, ok := methodRequests.Load(m); ok {
		return r.(*http.Request)
	}
	r, _ := methodRequests.LoadOrStore(m, &http.Request{Method: m})
	return r.(*http.Request)
}

var methodRequests sync.Map // method → *http.Request

// errHeadersTooLarge ends a response whose headers run past
// MaxResponseHeaders.
var errHeadersTooLarge = fmt.Errorf("server response headers exceeded %d bytes; aborted", MaxResponseHeaders)

// maxBodyWire bounds what a body may take on the wire: MaxBodyRead of it
// is read, and chunked framing around it takes at most five bytes more per
// byte of data.
const maxBodyWire = 8 * MaxBodyRead

// responseReader reads one response from a connection within a budget of
// bytes, and notes when its first byte came. Pooled with its buffer.
type responseReader struct {
	conn    net.Conn
	left    int
	over    error // what Read returns once left is spent
	first   time.Time
	br      *bufio.Reader
	body    []byte
	started bool
}

func (r *responseReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, r.over
	}
	n, err := r.conn.Read(p[:min(len(p), r.left)])
	if n > 0 && !r.started {
		r.started, r.first = true, time.Now()
	}
	r.left -= n
	return n, err
}

var responseReaders = sync.Pool{New: func() any {
	r := &responseReader{body: make([]byte, 0, 4<<10)}
	r.br = bufio.NewReaderSize(r, 4<<10)
	return r
}}

// probe runs one request for h, whose check judges the response.
func (p *plainHTTP) probe(ctx context.Context, h *HTTP) health.Result {
	began := time.Now()
	var phases health.Phases
	fail := func(err error) health.Result {
		f := connFailure(ctx, p.op, p.url, err)
		f.Phases = phases
		return f
	}
	conn, err := dialProbe(ctx, p.dial, p.addr, p.raddr, p.src)
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	phases.Connect = since(began)
	defer bindToContext(ctx, conn)()
	if _, err := conn.Write(p.wire); err != nil {
		return fail(err)
	}
	wrote := time.Now()

	rr := responseReaders.Get().(*responseReader)
	defer func() {
		rr.conn, rr.started = nil, false
		rr.br.Reset(rr)
		if cap(rr.body) <= 16<<10 { // a large body's buffer goes with it
			responseReaders.Put(rr)
		}
	}()
	rr.conn, rr.left, rr.over = conn, MaxResponseHeaders, errHeadersTooLarge
	var resp *http.Response
	for informational := 0; ; informational++ {
		resp, err = http.ReadResponse(rr.br, p.req)
		if rr.started {
			phases.FirstByte = max(rr.first.Sub(wrote).Truncate(time.Microsecond), time.Microsecond)
		}
		if err != nil && rr.left <= 0 {
			err = errHeadersTooLarge // whatever the parser made of the cut
		}
		if err != nil {
			return fail(err)
		}
		// 1xx answers (103 Early Hints) come before the response, as the
		// Transport skips them
		if resp.StatusCode < 100 || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols || informational == 5 {
			break
		}
	}
	rr.left, rr.over = maxBodyWire, io.ErrUnexpectedEOF
	body, err := readUpTo(resp.Body, rr.body[:0], MaxBodyRead)
	rr.body = body[:0]
	return h.check(ctx, resp, string(body), err, phases, began)
}

// readUpTo appends what r has to b, up to limit bytes in all; the end of r
// is no error.
func readUpTo(r io.Reader, b []byte, limit int) ([]byte, error) {
	for len(b) < limit {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):min(cap(b), limit)])
		b = b[:len(b)+n]
		if errors.Is(err, io.EOF) {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
	return b, nil
}
