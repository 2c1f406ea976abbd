package probes

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/health"
)

// scriptedTarget answers each connection with answer, after reading the
// request's head; it records the request it read last.
func scriptedTarget(t *testing.T, answer func(c net.Conn)) (addr string, requests <-chan *http.Request) {
	t.Helper()
	reqs := make(chan *http.Request, 16)
	addr = eachConn(t, func(c net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		select {
		case reqs <- req:
		default:
		}
		answer(c)
	})
	return addr, reqs
}

// eachConn is a loopback listener that runs handle on each connection it
// accepts, on a goroutine of its own, and closes the connection after; it
// returns the address.
func eachConn(t *testing.T, handle func(c net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return l.Addr().String()
}

// TestPlainHTTPResponses runs the plain http path against targets that
// answer in the ways a server may, right and wrong, on real loopback
// connections.
func TestPlainHTTPResponses(t *testing.T) {
	bigHeader := "X-Big: " + strings.Repeat("a", MaxResponseHeaders-32) + "\r\n" // with the rest, just past the limit
	for _, tc := range []struct {
		name    string
		policy  string
		answer  string
		outcome health.Outcome
		reason  health.Reason
		status  int
		message string // in the result's message
		output  string // the output ends with it
	}{
		{name: "ok", policy: `{"http":{"port":PORT,"path":"/healthz"}}`,
			answer:  "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
			outcome: health.Success, status: 200, output: "ok"},
		{name: "early hints first", policy: `{"http":{"port":PORT}}`,
			answer:  "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
			outcome: health.Success, status: 200},
		{name: "chunked, past the read limit", policy: `{"http":{"port":PORT,"body_regex":"^start"}}`,
			answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"5\r\nstart\r\n" + strings.Repeat("4000\r\n"+strings.Repeat("x", 0x4000)+"\r\n", 6) + "0\r\n\r\n",
			outcome: health.Success, status: 200, output: "xxxx"},
		{name: "headers past the limit", policy: `{"http":{"port":PORT}}`,
			answer:  "HTTP/1.1 200 OK\r\n" + bigHeader + "Content-Length: 0\r\n\r\n",
			outcome: health.Failure, reason: health.ReasonIOError, message: "headers exceeded"},
		{name: "a body cut short", policy: `{"http":{"port":PORT}}`,
			answer:  "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
			outcome: health.Failure, reason: health.ReasonIOError, status: 200, message: "unexpected EOF"},
		{name: "not HTTP", policy: `{"http":{"port":PORT}}`,
			answer:  "SSH-2.0-OpenSSH_9.2\r\n",
			outcome: health.Failure, reason: health.ReasonIOError, message: "malformed HTTP"},
		{name: "wrong status", policy: `{"http":{"port":PORT}}`,
			answer:  "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
			outcome: health.Failure, reason: health.ReasonStatusMismatch, status: 503, output: "busy"},
		{name: "HEAD: a length and no body", policy: `{"http":{"port":PORT,"method":"HEAD"}}`,
			answer:  "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n",
			outcome: health.Success, status: 200},
		{name: "a condition on a header", policy: `{"http":{"port":PORT,"condition":"headers[\"x-role\"] == \"primary\""}}`,
			answer:  "HTTP/1.1 200 OK\r\nX-Role: replica\r\nContent-Length: 0\r\n\r\n",
			outcome: health.Failure, reason: health.ReasonConditionFailed, status: 200, message: "replica"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, _ := scriptedTarget(t, func(c net.Conn) { _, _ = c.Write([]byte(tc.answer)) })
			r, took := probe(t, instance(t, addr, tc.policy), 2*time.Second)
			assert.Equal(t, tc.outcome, r.Outcome, r.Message)
			assert.Equal(t, tc.reason, r.Reason, r.Message)
			assert.Equal(t, tc.status, r.HTTPStatus)
			assert.Contains(t, r.Message, tc.message)
			assert.True(t, strings.HasSuffix(r.Output, tc.output), "output %q", health.TailUTF8(r.Output, 32))
			assert.Less(t, took, time.Second, "answered at once: nothing waits for the deadline")
			if r.Outcome == health.Success {
				assert.Positive(t, r.Phases.Connect)
				assert.Positive(t, r.Phases.FirstByte)
			}
		})
	}
}

// TestPlainHTTPRequest: what the target receives is the request net/http
// would send, with the policy's method, path, host, headers and body, and
// Connection: close.
func TestPlainHTTPRequest(t *testing.T) {
	addr, reqs := scriptedTarget(t, func(c net.Conn) { _, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) })
	in := instance(t, addr, `{"http":{"port":PORT,"path":"/check?deep=1","method":"POST","body":"{\"q\":1}",`+
		`"content_type":"application/json","host":"svc.internal","headers":{"X-Probe":"yes"}}}`)
	for range 2 { // the rendered request is sent again unchanged
		r, _ := probe(t, in, 2*time.Second)
		require.Equal(t, health.Success, r.Outcome, r.Message)
		req := <-reqs
		assert.Equal(t, "POST", req.Method)
		assert.Equal(t, "/check?deep=1", req.RequestURI)
		assert.Equal(t, "svc.internal", req.Host)
		assert.Equal(t, "application/json", req.Header.Get("Content-Type"))
		assert.Equal(t, "yes", req.Header.Get("X-Probe"))
		assert.Equal(t, "vigil-probe/1", req.Header.Get("User-Agent"))
		assert.True(t, req.Close, "Connection: close")
		assert.Equal(t, int64(7), req.ContentLength)
	}
}

// TestPlainHTTPHungAndCanceled: a target that reads the request and never
// answers times the probe out at its deadline, and a probe canceled while
// it waits ends at once, as canceled.
func TestPlainHTTPHungAndCanceled(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	addr, _ := scriptedTarget(t, func(net.Conn) { <-release })
	in := instance(t, addr, `{"http":{"port":PORT}}`)

	r, took := probe(t, in, 200*time.Millisecond)
	assert.Equal(t, health.ReasonTimeout, r.Reason, r.Message)
	assert.Contains(t, r.Message, `Get "http://`+addr+`/": context deadline exceeded`)
	assert.Less(t, took, time.Second)
	assert.Positive(t, r.Phases.Connect)

	p, err := New(in)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	r = p.Probe(ctx)
	assert.Equal(t, health.ReasonCanceled, r.Reason, r.Message)
	assert.Less(t, time.Since(start), 5*time.Second, "canceling ends the wait for the answer")
}
