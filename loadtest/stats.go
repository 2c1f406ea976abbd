package loadtest

import (
	"bufio"
	"math"
	"math/bits"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
)

// hist is a lock-free log-linear histogram of durations: 16 buckets per
// power of two of microseconds, so a quantile is within ≈ 6 %.
type hist struct {
	counts [64 * 16]atomic.Uint64
	max    atomic.Int64
	n      atomic.Uint64
}

func bucketOf(us uint64) int {
	if us < 16 {
		return int(us)
	}
	e := bits.Len64(us) - 5 // us has e+5 bits; keep the top 5 (16..31)
	return (e+1)*16 + int(us>>uint(e)) - 16
}

func bucketLow(b int) uint64 {
	if b < 16 {
		return uint64(b)
	}
	e := b/16 - 1
	return uint64(b%16+16) << uint(e)
}

func (h *hist) add(d time.Duration) {
	if d < 0 {
		d = 0
	}
	us := uint64(d / time.Microsecond)
	h.counts[min(bucketOf(us), len(h.counts)-1)].Add(1)
	h.n.Add(1)
	for {
		m := h.max.Load()
		if int64(d) <= m || h.max.CompareAndSwap(m, int64(d)) {
			return
		}
	}
}

// quantile returns the q-quantile in milliseconds (0 when empty).
func (h *hist) quantile(q float64) float64 {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	return h.rankMS(max(uint64(math.Ceil(q*float64(n))), 1))
}

// rankMS returns the rank-th smallest value (from 1) in milliseconds: the
// low end of its bucket.
func (h *hist) rankMS(rank uint64) float64 {
	var seen uint64
	for b := range h.counts {
		seen += h.counts[b].Load()
		if seen >= rank {
			return float64(bucketLow(b)) / 1000
		}
	}
	return h.maxMS()
}

// minMS is the low end of the lowest bucket in use, in milliseconds.
func (h *hist) minMS() float64 {
	for b := range h.counts {
		if h.counts[b].Load() > 0 {
			return float64(bucketLow(b)) / 1000
		}
	}
	return 0
}

func (h *hist) maxMS() float64 { return float64(h.max.Load()) / float64(time.Millisecond) }

// cpuTime is the process's user + system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rss is the resident set size from /proc/self/status (0 where absent).
func rss() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// listenCounters are the network namespace's counts of handshakes dropped
// because a listening socket's accept queue was full (TcpExt
// ListenOverflows) and of all handshakes its listening sockets dropped
// (ListenDrops, overflows included), each -1 where it cannot be read. They
// count every listener of the namespace, not only the load test's.
func listenCounters() (overflows, drops int64) {
	overflows, drops = -1, -1
	p, err := procfs.Self()
	if err != nil {
		return
	}
	ns, err := p.Netstat()
	if err != nil {
		return
	}
	if ns.ListenOverflows != nil {
		overflows = int64(*ns.ListenOverflows)
	}
	if ns.ListenDrops != nil {
		drops = int64(*ns.ListenDrops)
	}
	return
}

// listenOverflows is the namespace's TcpExt ListenOverflows (-1 where
// unreadable).
func listenOverflows() int64 {
	o, _ := listenCounters()
	return o
}

// overflowsSince is the count of overflows since before (-1 if unknown).
func overflowsSince(before int64) int64 {
	return since(before, listenOverflows())
}

// countersSince is what listenCounters counted since overflows and drops.
func countersSince(overflows, drops int64) (int64, int64) {
	o, d := listenCounters()
	return since(overflows, o), since(drops, d)
}

func since(before, now int64) int64 {
	if before < 0 || now < 0 {
		return -1
	}
	return now - before
}
