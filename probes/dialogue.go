package probes

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vigilhq/vigil/health"
)

// MaxExpectRead bounds what a TCP dialogue reads from its target.
const MaxExpectRead = 4 << 10

// Dialogue is a TCP probe that talks to its target (tcp.send, tcp.expect):
// it connects, writes what it sends, and reads until what it has read
// matches the expectation, the target closes, MaxExpectRead bytes are read
// or the deadline passes. A match is a success; an answer that does not
// match — the target closed, the bytes filled the buffer, or the last of
// them ended a line when the deadline came — is expect_mismatch; no answer,
// or half a line, at the deadline is a timeout. The connection ends with a
// reset, like the plain probe's.
type Dialogue struct {
	ap     netip.AddrPort
	src    netip.Addr
	send   []byte
	expect *regexp.Regexp
}

func newDialogue(ap netip.AddrPort, src netip.Addr, t *health.TCPProbe) (*Dialogue, error) {
	d := &Dialogue{ap: ap, src: src}
	var err error
	if d.send, err = health.DecodeEscapes(t.Send); err != nil {
		return nil, fmt.Errorf("probes: tcp.send %w", err)
	}
	if t.Expect != "" {
		if d.expect, err = regexp.Compile(t.Expect); err != nil {
			return nil, fmt.Errorf("probes: tcp.expect: %w", err)
		}
	}
	return d, nil
}

// Probe runs the dialogue within ctx's deadline.
func (d *Dialogue) Probe(ctx context.Context) health.Result {
	c, err := dialer(d.src).DialContext(ctx, "tcp", d.ap.String())
	if err != nil {
		return Fail(ctx, err)
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if len(d.send) > 0 {
		if _, err := c.Write(d.send); err != nil {
			return Fail(ctx, fmt.Errorf("sending tcp.send: %w", err))
		}
	}
	if d.expect == nil {
		return health.Result{Outcome: health.Success}
	}
	buf := make([]byte, 0, MaxExpectRead)
	for {
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if d.expect.Match(buf) {
			return health.Result{Outcome: health.Success, Output: answer(buf)}
		}
		switch {
		case len(buf) == cap(buf):
			return mismatch(buf, fmt.Sprintf("the first %d bytes", len(buf)))
		case err == nil:
			continue
		case errors.Is(err, io.EOF) && len(buf) == 0:
			return mismatch(buf, "the target closed the connection without answering")
		case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET) && len(buf) > 0:
			// a target that answers and closes without reading what was
			// sent resets the connection: the answer is still the answer
			return mismatch(buf, "the answer (the target then closed the connection)")
		}
		r := Fail(ctx, err)
		switch {
		case r.Reason != health.ReasonTimeout:
			r.Message = fmt.Sprintf("reading the answer after %d bytes: %s", len(buf), r.Message)
		case len(buf) == 0:
			r.Message = "no answer within the timeout"
		case buf[len(buf)-1] == '\n':
			return mismatch(buf, "the answer")
		default:
			r.Message = "a partial answer within the timeout: " + quoted(buf)
		}
		r.Output = answer(buf)
		return r
	}
}

func mismatch(buf []byte, what string) health.Result {
	msg := what + " does not match tcp.expect"
	if len(buf) > 0 {
		msg += ": " + quoted(buf)
	}
	return health.Result{Outcome: health.Failure, Reason: health.ReasonExpectMismatch, Message: msg, Output: answer(buf)}
}

// answer is what was read as valid UTF-8, for the output.
func answer(buf []byte) string { return strings.ToValidUTF8(string(buf), "\uFFFD") }

// quoted is the start of what was read, escaped, for a message.
func quoted(buf []byte) string {
	const most = 160
	q := strconv.QuoteToGraphic(health.TruncateUTF8(string(buf), most))
	if len(buf) > most {
		q += "…"
	}
	return q
}
