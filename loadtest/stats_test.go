package loadtest

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
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
