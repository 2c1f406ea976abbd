package probes

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// beginConnect starts a TCP connection to ap that closes with a reset. It is
// the net package's dial cut to what a probe needs: a non-blocking socket
// with linger 0, connect, and the peer (SO_ERROR when there is none). It
// skips what a probe never uses (TCP_NODELAY, the local address, the address
// parsing) and, when the handshake is done at once (loopback, a refusal),
// the runtime's poller and the socket's lifetime: the connection is
// dissolved with a reset and the socket kept for the next probe (see
// idleSockets) — three system calls and no allocation. It returns a nil
// connecting when the connection is settled (err says how); otherwise the
// connection is under way and connecting.finish must be called. Errors read
// like the net package's. With a source address (src valid) the socket is a
// new one bound to it before the connect, closed once the probe is settled:
// a pooled socket would keep its source.
func beginConnect(ap netip.AddrPort, src netip.Addr) (*connecting, error) {
	var (
		family = unix.AF_INET
		sa4    unix.RawSockaddrInet4
		sa6    unix.RawSockaddrInet6
		sa     unsafe.Pointer
		salen  uintptr
	)
	// raw addresses on the stack: unix.Connect's Sockaddr would escape
	if a := ap.Addr(); a.Is4() || a.Is4In6() {
		sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.Unmap().As4()}
		putPort(&sa4.Port, ap.Port())
		sa, salen = unsafe.Pointer(&sa4), unsafe.Sizeof(sa4)
	} else {
		if a.Zone() != "" {
			return &connecting{ap: ap, src: src, fd: -1}, nil // zone names need the net package's lookup
		}
		family = unix.AF_INET6
		sa6 = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
		putPort(&sa6.Port, ap.Port())
		sa, salen = unsafe.Pointer(&sa6), unsafe.Sizeof(sa6)
	}
	var (
		pool *socketPool // nil: a bound socket, closed when settled
		fd   int
		err  error
	)
	switch {
	case src.IsValid():
		fd, err = boundSocket(family, src)
	case family == unix.AF_INET6:
		pool = &idleSockets[1]
	default:
		pool = &idleSockets[0]
	}
	if pool != nil {
		fd, err = pool.get(family)
	}
	if err != nil {
		return nil, dialErr(ap, err)
	}
	// the socket does not block: a raw call spares the runtime's syscall
	// bookkeeping, and its monitor the thread hand-offs it makes when it
	// catches a goroutine in a call (a loopback handshake takes ≈ 15 µs)
	_, _, errno := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(sa), salen)
	switch errno {
	case unix.EINPROGRESS, unix.EALREADY, unix.EINTR: // interrupted: it goes on regardless
	case 0:
		pool.put(fd)
		return nil, nil
	default:
		_ = unix.Close(fd)
		return nil, dialErr(ap, os.NewSyscallError("connect", errno))
	}
	// on loopback the handshake is done by the time connect returns
	if done, err := connected(fd); done {
		pool.put(fd)
		if err != nil {
			return nil, dialErr(ap, err)
		}
		return nil, nil
	}
	return &connecting{ap: ap, src: src, fd: fd}, nil
}

// idleSockets keeps, per family (IPv4, IPv6), sockets whose connection was
// settled and dissolved (connect(2) to AF_UNSPEC: a reset to an established
// peer, then the socket is as new, its port released), with linger 0
// already set. Reusing one saves a probe the socket's creation, its linger
// option and its close — two system calls and the kernel's allocation and
// release of a socket and a file, about a third of a loopback probe.
var idleSockets [2]socketPool

// idleMax bounds each pool: settled probes run one at a time on the
// goroutines that start them, so a few sockets serve a whole fleet.
const idleMax = 64

// socketPool is a bounded stack of idle sockets; safe for concurrent use.
type socketPool struct {
	mu  sync.Mutex
	fds []int
}

// get returns an idle socket, or a new one with linger 0 (closing it sends a
// reset: no TIME_WAIT socket is left behind).
func (p *socketPool) get(family int) (int, error) {
	p.mu.Lock()
	if n := len(p.fds); n > 0 {
		fd := p.fds[n-1]
		p.fds = p.fds[:n-1]
		p.mu.Unlock()
		return fd, nil
	}
	p.mu.Unlock()
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &lingerReset); err != nil {
		_ = unix.Close(fd)
		return -1, os.NewSyscallError("setsockopt", err)
	}
	return fd, nil
}

// put dissolves fd's settled connection (a reset if it was established)
// and keeps the socket, or closes it when that fails or the pool is full.
// A nil pool closes it (a reset, by its linger).
func (p *socketPool) put(fd int) {
	if p == nil {
		_ = unix.Close(fd)
		return
	}
	unspec := unix.RawSockaddr{Family: unix.AF_UNSPEC}
	_, _, errno := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&unspec)), unsafe.Sizeof(unspec))
	if errno == 0 {
		p.mu.Lock()
		if len(p.fds) < idleMax {
			p.fds = append(p.fds, fd)
			fd = -1
		}
		p.mu.Unlock()
	}
	if fd >= 0 {
		_ = unix.Close(fd)
	}
}

// boundSocket is a new socket with linger 0 bound to src, its port left to
// the connect (IP_BIND_ADDRESS_NO_PORT: a bind alone would reserve a port
// for every destination, and a busy prober would run out of them).
func boundSocket(family int, src netip.Addr) (int, error) {
	if src.Is4() != (family == unix.AF_INET) {
		return -1, fmt.Errorf("source address %s is not of the target's family", src)
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &lingerReset); err != nil {
		_ = unix.Close(fd)
		return -1, os.NewSyscallError("setsockopt", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1) // an optimization only
	var (
		sa4   unix.RawSockaddrInet4
		sa6   unix.RawSockaddrInet6
		sa    unsafe.Pointer
		salen uintptr
	)
	if family == unix.AF_INET {
		sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: src.As4()}
		sa, salen = unsafe.Pointer(&sa4), unsafe.Sizeof(sa4)
	} else {
		sa6 = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: src.As16()}
		sa, salen = unsafe.Pointer(&sa6), unsafe.Sizeof(sa6)
	}
	if _, _, errno := unix.RawSyscall(unix.SYS_BIND, uintptr(fd), uintptr(sa), salen); errno != 0 {
		_ = unix.Close(fd)
		return -1, os.NewSyscallError("bind "+src.String(), errno)
	}
	return fd, nil
}

// bindNoPort is a Dialer's Control for a source address: the bind before
// the connect takes the address alone, and the connect chooses the port
// (IP_BIND_ADDRESS_NO_PORT, as boundSocket does). An optimization only: its
// failure is not the dial's.
func bindNoPort(_, _ string, c syscall.RawConn) error {
	return c.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
}

// lingerReset is linger on, for 0 seconds: close sends a reset. Read only.
var lingerReset = unix.Linger{Onoff: 1}

// putPort stores port in network byte order.
func putPort(p *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	b[0], b[1] = byte(port>>8), byte(port)
}

// connecting is a connection whose handshake is under way.
type connecting struct {
	ap  netip.AddrPort
	src netip.Addr
	fd  int // -1: not begun; finish dials through the net package
}

// finish waits for the handshake on the runtime's poller until ctx ends,
// and closes the connection.
func (c *connecting) finish(ctx context.Context) error {
	if c.fd < 0 {
		return dialAndReset(ctx, c.ap, c.src)
	}
	ap := c.ap
	// the file owns fd from here and registers it with the poller
	f := os.NewFile(uintptr(c.fd), "tcp-probe")
	defer f.Close()
	if ctx.Err() != nil {
		return dialErr(ap, ctx.Err())
	}
	if dl, ok := ctx.Deadline(); ok {
		if err := f.SetWriteDeadline(dl); err != nil {
			return dialErr(ap, err)
		}
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	rc, err := f.SyscallConn()
	if err != nil {
		return dialErr(ap, err)
	}
	var connErr error
	werr := rc.Write(func(fd uintptr) bool {
		var done bool
		done, connErr = connected(int(fd))
		return done
	})
	switch {
	case ctx.Err() != nil:
		return dialErr(ap, ctx.Err())
	case werr != nil:
		return dialErr(ap, werr)
	case connErr != nil:
		return dialErr(ap, connErr)
	}
	return nil
}

// connected reports whether a non-blocking connect on fd has finished, and
// how: a socket with a peer is connected (one system call when it is, as on
// loopback); one without has failed if SO_ERROR says so, and is still under
// way if not.
func connected(fd int) (bool, error) {
	switch err := getpeername(fd); err {
	case nil:
		return true, nil
	case unix.ENOTCONN:
	default:
		return true, os.NewSyscallError("getpeername", err)
	}
	n, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	switch {
	case err != nil:
		return true, os.NewSyscallError("getsockopt", err)
	case n == 0, n == int(unix.EINPROGRESS), n == int(unix.EALREADY), n == int(unix.EINTR):
		return false, nil
	}
	return true, os.NewSyscallError("connect", unix.Errno(n))
}

// getpeername asks only whether fd has a peer: unlike unix.Getpeername it
// decodes no address and allocates nothing.
func getpeername(fd int) error {
	var rsa unix.RawSockaddrAny
	n := uint32(unsafe.Sizeof(rsa))
	_, _, e := unix.RawSyscall(unix.SYS_GETPEERNAME, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n)))
	if e != 0 {
		return e
	}
	return nil
}

func dialErr(ap netip.AddrPort, err error) error { return fmt.Errorf("dial tcp %s: %w", ap, err) }
