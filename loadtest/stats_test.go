package loadtest

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestHistQuantiles(t *testing.T) {
	var h hist
	assert.Zero(t, h.quantile(0.99))
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Millisecond)
	}
	assert.InDelta(t, 500, h.quantile(0.5), 500*0.07)
	assert.InDelta(t, 990, h.quantile(0.99), 990*0.07)
	assert.Equal(t, 1000.0, h.maxMS())
	for us := uint64(0); us < 1<<30; us = us*3/2 + 1 {
		b := bucketOf(us)
		assert.LessOrEqual(t, bucketLow(b), us, "bucket %d of %d", b, us)
		assert.Greater(t, bucketLow(b+1), us, "bucket %d of %d", b, us)
	}
}

func TestRSSAndCPU(t *testing.T) {
	assert.Positive(t, rss())
	began := cpuTime()
	x := 0
	for i := range 50_000_000 {
		x += i
	}
	_ = x
	assert.Greater(t, cpuTime(), began)
}

func mustTCPAddr(t *testing.T, ip string) *net.TCPAddr {
	t.Helper()
	a, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(ip, "80"))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestListenOverflowsCountsFullAcceptQueues(t *testing.T) {
	before := listenOverflows()
	require.GreaterOrEqual(t, before, int64(0), "readable on Linux")
	// a listener with a one-connection queue that never accepts
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, unix.Listen(fd, 0))
	sa, err := unix.Getsockname(fd)
	require.NoError(t, err)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*unix.SockaddrInet4).Port))
	for range 4 {
		c, err := net.DialTimeout("tcp", addr, 50*time.Millisecond)
		if err == nil {
			defer c.Close()
		}
	}
	assert.Positive(t, overflowsSince(before), "the dropped handshakes are counted")
	assert.Equal(t, int64(-1), overflowsSince(-1), "unknown stays unknown")
}
