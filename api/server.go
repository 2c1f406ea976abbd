package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Limits of the HTTP server.
const (
	ReadHeaderTimeout = 10 * time.Second
	IdleTimeout       = 2 * time.Minute
	// MaxHeaderBytes bounds a request's headers; more is a 431.
	MaxHeaderBytes = 64 << 10
)

// NewServer returns the http.Server that serves h as vigil does: a deadline
// for the headers and for idle connections, bounded headers. Bodies and
// responses have deadlines of their own per request (New sets them), so
// that the event stream can run for hours. Serve it on JSONErrors(l) so that
// even the errors net/http answers by itself are JSON.
func NewServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: ReadHeaderTimeout, IdleTimeout: IdleTimeout,
		MaxHeaderBytes: MaxHeaderBytes}
}

// JSONErrors wraps a listener so that the errors net/http writes by itself
// before a request reaches any handler — 431 for headers that are too
// large, 400 for a request it cannot parse, 501 for an unknown transfer
// encoding — are JSON bodies in the API's error shape like every other.
func JSONErrors(l net.Listener) net.Listener { return jsonErrorListener{l} }

type jsonErrorListener struct{ net.Listener }

func (l jsonErrorListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &jsonErrorConn{Conn: c}, nil
}

type jsonErrorConn struct{ net.Conn }

// cannedError is the exact shape of the replies net/http writes straight to
// the connection in one write: a status line, a plain-text type, a close
// and the status text as the body. A response from a handler never has it
// in one write (its headers and body go through a buffer, and vigil's
// bodies are JSON, which cannot hold a raw CR or LF).
var cannedError = regexp.MustCompile("^HTTP/1\\.1 ([1-5][0-9][0-9]) ([^\r\n]*)\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n([^\r\n]*)$")

func (c *jsonErrorConn) Write(p []byte) (int, error) {
	if !bytes.HasPrefix(p, []byte("HTTP/1.1 ")) {
		return c.Conn.Write(p)
	}
	m := cannedError.FindSubmatch(p)
	if m == nil {
		return c.Conn.Write(p)
	}
	status, _ := strconv.Atoi(string(m[1]))
	code := "invalid_request"
	switch status {
	case http.StatusRequestHeaderFieldsTooLarge:
		code = "headers_too_large"
	case http.StatusNotImplemented:
		code = "not_implemented"
	}
	body, _ := json.Marshal(ErrorBody{Error: ErrorDetail{Code: code, Message: strings.ToLower(string(m[3]))}})
	reply := fmt.Sprintf("HTTP/1.1 %s %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		m[1], m[2], len(body), body)
	if _, err := c.Conn.Write([]byte(reply)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// UnixPrefix marks a --listen address that is a Unix socket.
const UnixPrefix = "unix://"

// UnixSocketMode is the mode of the API's Unix socket: its owner and group
// (the VM manager's) may connect, nobody else.
const UnixSocketMode = 0o660

// ErrSocketInUse is returned when another process serves the Unix socket.
var ErrSocketInUse = errors.New("api: socket is in use by another process")

// Listen opens the API's listener: "host:port" for TCP, or
// "unix:///path/api.sock" for a Unix socket. A Unix socket is made with mode
// 0660 and guarded by a lock file beside it (path.lock, held while the
// listener is open): a second vigil on the same path is refused, and a
// stale socket (its vigil gone) is removed first.
func Listen(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, UnixPrefix)
	if !ok {
		return net.Listen("tcp", addr)
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("--listen %s: the socket path must be absolute (unix:///run/vigil/api.sock)", addr)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("--listen %s: %w", addr, err)
	}
	lock, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--listen %s: %w", addr, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("--listen %s: %w (is another vigil running?)", addr, ErrSocketInUse)
		}
		return nil, fmt.Errorf("--listen %s: locking %s.lock: %w", addr, path, err)
	}
	fail := func(err error) (net.Listener, error) {
		_ = lock.Close()
		return nil, fmt.Errorf("--listen %s: %w", addr, err)
	}
	// holding the lock, whatever is at the path is left over from a vigil
	// that is gone
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return fail(fmt.Errorf("%s exists and is not a socket", path))
		}
		if err := os.Remove(path); err != nil {
			return fail(fmt.Errorf("removing the stale socket: %w", err))
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return fail(err)
	}
	// a daemon's umask (022) already denies others the write permission
	// that connecting needs; the mode then admits the group
	if err := os.Chmod(path, UnixSocketMode); err != nil {
		_ = l.Close()
		return fail(err)
	}
	return &lockedListener{Listener: l, lock: lock}, nil
}

// lockedListener releases the socket's lock file when it closes.
type lockedListener struct {
	net.Listener
	lock *os.File
}

func (l *lockedListener) Close() error {
	err := l.Listener.Close()
	_ = l.lock.Close()
	return err
}
