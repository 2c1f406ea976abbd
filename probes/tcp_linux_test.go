package probes

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/internal/tcptest"
)

func TestTCPProbeReusesItsSockets(t *testing.T) {
	up := net.JoinHostPort("127.0.0.1", strconv.Itoa(tcptest.AcceptAndClose(t)))
	down := refusedAddr(t)
	before := countFDs(t)
	for i := range 300 {
		if i%3 == 1 {
			r, _ := probe(t, instance(t, down, `{"tcp":{"port":PORT}}`), time.Second)
			require.Equal(t, health.ReasonConnectionRefused, r.Reason, "probe %d: %s", i, r.Message)
			continue
		}
		r, _ := probe(t, instance(t, up, `{"tcp":{"port":PORT}}`), time.Second)
		require.Equal(t, health.Success, r.Outcome, "probe %d: %s", i, r.Message)
	}
	idle := &idleSockets[0]
	idle.mu.Lock()
	kept := len(idle.fds)
	idle.mu.Unlock()
	assert.Positive(t, kept, "settled connections leave their sockets for the next probe")
	assert.LessOrEqual(t, kept, idleMax)
	assert.Less(t, countFDs(t)-before, 2*idleMax, "sockets are reused or closed, never leaked")

	// a socket whose last connection was reset starts clean: a handshake
	// under way is a timeout, not that reset
	r, _ := probe(t, instance(t, up, `{"tcp":{"port":PORT}}`), time.Second)
	require.Equal(t, health.Success, r.Outcome, r.Message)
	r, _ = probe(t, instance(t, synDroppingAddr(t), `{"tcp":{"port":PORT}}`), 200*time.Millisecond)
	assert.Equal(t, health.ReasonTimeout, r.Reason, r.Message)
}

func TestSocketPoolIsBounded(t *testing.T) {
	var p socketPool
	t.Cleanup(func() {
		for _, fd := range p.fds {
			_ = unix.Close(fd)
		}
	})
	var fds []int
	for range idleMax + 5 {
		fd, err := p.get(unix.AF_INET)
		require.NoError(t, err)
		fds = append(fds, fd)
	}
	for _, fd := range fds {
		p.put(fd) // never connected: dissolving is a no-op, the socket is kept
	}
	assert.Len(t, p.fds, idleMax, "what does not fit is closed")
	fd, err := p.get(unix.AF_INET)
	require.NoError(t, err)
	assert.Equal(t, fds[idleMax-1], fd, "the most recently kept socket comes back first")
	p.put(fd)
}

func TestTCPProbeWithAZoneDialsThroughTheNetPackage(t *testing.T) {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback here:", err)
	}
	tcptest.Serve(t, l)
	port := l.Addr().(*net.TCPAddr).Port
	p := &TCP{Addr: net.JoinHostPort("::1%lo", strconv.Itoa(port))}
	_, rest := p.Start()
	require.NotNil(t, rest, "a zone needs the net package's lookup, on a worker")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r := rest(ctx)
	assert.Equal(t, health.Success, r.Outcome, r.Message)

	require.NoError(t, l.Close())
	r = (&TCP{Addr: net.JoinHostPort("::1%nosuchif0", strconv.Itoa(port))}).Probe(ctx)
	assert.Equal(t, health.Failure, r.Outcome, "an unknown zone fails the probe: %s", r.Message)
}

// A probe's dial to an address binds (DialTCP always does, to the
// unspecified address without a source) but leaves the port to the
// connect: a bind to port 0 would reserve a port per connection, and a
// prober closing thousands a second would exhaust them among its TIME_WAIT
// sockets (10 000 hung HTTP targets stalled probing so).
func TestProbeDialsLeaveThePortToTheConnect(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	ap := l.Addr().(*net.TCPAddr).AddrPort()
	for _, src := range []netip.Addr{{}, netip.MustParseAddr("127.0.0.1")} {
		c, err := dialProbe(context.Background(), dialer(src), ap.String(), ap, src)
		require.NoError(t, err, "source %v", src)
		raw, err := c.(*net.TCPConn).SyscallConn()
		require.NoError(t, err)
		var noPort int
		var gerr error
		require.NoError(t, raw.Control(func(fd uintptr) {
			noPort, gerr = unix.GetsockoptInt(int(fd), unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT)
		}))
		require.NoError(t, gerr)
		assert.Equal(t, 1, noPort, "source %v: IP_BIND_ADDRESS_NO_PORT", src)
		_ = c.Close()
	}
}
