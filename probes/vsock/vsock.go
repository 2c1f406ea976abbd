// Package vsock connects the host to a guest's agent: over AF_VSOCK (QEMU
// vhost-vsock) with mdlayher/vsock, or over a hybrid-vsock Unix socket
// (Firecracker, Cloud Hypervisor) with the CONNECT handshake. Every read from
// the guest side is bounded in size and time.
//
// Concurrency contract: the functions are safe for concurrent use; each
// returned net.Conn belongs to its caller.
package vsock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	mdvsock "github.com/mdlayher/vsock"

	"github.com/vigilhq/vigil/health"
)

// Limits of the hybrid handshake.
const (
	// MaxReply is the most the handshake reads looking for "OK <n>\n".
	MaxReply = 64
	// HandshakeTimeout bounds the handshake when the context allows longer.
	HandshakeTimeout = 5 * time.Second
	// MaxSocketPath is the longest Unix socket path the kernel takes.
	MaxSocketPath = 107
)

// HostCID is the context id of the host, the only peer the agent accepts
// over AF_VSOCK.
const HostCID = 2

// Errors of the hybrid handshake. Every failure inside the guest (no
// listener on the port, connection limit, guest timeout) shows only as
// ErrNoReply: the VMM closes the socket without answering.
var (
	ErrNoReply  = errors.New("vsock: the VMM closed the socket without a reply (no agent listening on the port?)")
	ErrBadReply = errors.New("vsock: malformed handshake reply")
)

// Dial connects to the guest agent described by v.
func Dial(ctx context.Context, v health.Vsock) (net.Conn, error) {
	if v.Socket != "" {
		return DialHybrid(ctx, v.Socket, v.Port)
	}
	return DialVsock(ctx, v.CID, v.Port)
}

// DialVsock dials (cid, port) over AF_VSOCK.
func DialVsock(ctx context.Context, cid, port uint32) (net.Conn, error) {
	c, err := mdvsock.DialContext(ctx, cid, port, nil)
	if err != nil {
		return nil, fmt.Errorf("vsock dial cid=%d port=%d: %w", cid, port, err)
	}
	return c, nil
}

// DialHybrid connects to a hybrid-vsock Unix socket and asks the VMM for the
// guest port: it writes "CONNECT <port>\n" in one write and expects
// "OK <hostport>\n". Bytes that arrive after the newline in the same read are
// the guest's and are kept.
func DialHybrid(ctx context.Context, socket string, port uint32) (net.Conn, error) {
	if len(socket) > MaxSocketPath {
		return nil, fmt.Errorf("vsock: socket path is %d bytes, over the %d the kernel allows", len(socket), MaxSocketPath)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("vsock connect %s: %w", socket, err)
	}
	deadline := time.Now().Add(HandshakeTimeout)
	ctxBound := false
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline, ctxBound = dl, true
	}
	_ = c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	rest, err := handshake(c, port)
	if err != nil {
		_ = c.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("vsock handshake %s port %d: %w", socket, port, ctx.Err())
		}
		if ctxBound && errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("vsock handshake %s port %d: %w", socket, port, context.DeadlineExceeded)
		}
		return nil, fmt.Errorf("vsock handshake %s port %d: %w", socket, port, err)
	}
	if !stop() {
		_ = c.Close()
		return nil, ctx.Err()
	}
	_ = c.SetDeadline(time.Time{})
	if len(rest) == 0 {
		return c, nil
	}
	return &prefixed{Conn: c, pending: rest}, nil
}

// handshake writes the CONNECT line and reads the reply, at most MaxReply
// bytes; it returns what followed the reply's newline.
func handshake(c net.Conn, port uint32) ([]byte, error) {
	if _, err := c.Write([]byte("CONNECT " + strconv.FormatUint(uint64(port), 10) + "\n")); err != nil {
		return nil, err
	}
	buf := make([]byte, 0, MaxReply)
	for {
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			if err := checkReply(string(buf[:i])); err != nil {
				return nil, err
			}
			return bytes.Clone(buf[i+1:]), nil
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) || isEOF(err) {
				if len(buf) == 0 {
					return nil, ErrNoReply
				}
				return nil, fmt.Errorf("%w: %q then the socket closed", ErrBadReply, buf)
			}
			return nil, err
		}
		if len(buf) == cap(buf) {
			return nil, fmt.Errorf("%w: no newline in the first %d bytes", ErrBadReply, MaxReply)
		}
	}
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}

// checkReply accepts "OK <n>" with n a host port number.
func checkReply(line string) error {
	num, ok := strings.CutPrefix(line, "OK ")
	if !ok {
		return fmt.Errorf("%w: %q", ErrBadReply, line)
	}
	if _, err := strconv.ParseUint(strings.TrimSpace(num), 10, 32); err != nil {
		return fmt.Errorf("%w: %q", ErrBadReply, line)
	}
	return nil
}

// prefixed is a connection whose first bytes were already read.
type prefixed struct {
	net.Conn
	pending []byte
}

func (p *prefixed) Read(b []byte) (int, error) {
	if len(p.pending) > 0 {
		n := copy(b, p.pending)
		p.pending = p.pending[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}
