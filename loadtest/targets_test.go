package loadtest

import (
	"context"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/probes"
)

func TestSignedHistQuantiles(t *testing.T) {
	var h signedHist
	assert.Zero(t, h.quantile(0.5))
	for i := -100; i <= 299; i++ { // -100 ms … 299 ms
		h.add(time.Duration(i) * time.Millisecond)
	}
	assert.InDelta(t, -100, h.minMS(), 100*0.07)
	assert.InDelta(t, -100, h.quantile(0), 100*0.07)
	assert.InDelta(t, -50, h.quantile(0.125), 50*0.07, "a quarter of the negatives")
	assert.InDelta(t, 100, h.quantile(0.5), 100*0.07)
	assert.InDelta(t, 295, h.quantile(0.99), 295*0.07)
	assert.Equal(t, 299.0, h.maxMS())

	var early signedHist
	early.add(-30 * time.Millisecond)
	early.add(-10 * time.Millisecond)
	assert.Less(t, early.maxMS(), 0.0, "all early: the latest is still early")
	assert.InDelta(t, -30, early.minMS(), 2)
}

func TestRecordingAnArrivalAllocatesNothing(t *testing.T) {
	cfg := Config{Instances: 1000, Type: "tcp", Interval: time.Second}
	a := newArrivals(newFleet(cfg), cfg.Interval)
	a.begin()
	i := 0
	allocs := testing.AllocsPerRun(10_000, func() {
		a.arrive(i % 1000)
		i++
	})
	assert.Zero(t, allocs)
	assert.Equal(t, uint64(10_001), a.byClass[classHealthy].Load())
}

// TestArrivalsMakeTheTargetsFigures replays arrivals with known gaps: the
// lag is the gap minus the interval, a gap 50 ms short is early, a gap of
// more than two intervals starves, and so does an instance that never
// arrives.
func TestArrivalsMakeTheTargetsFigures(t *testing.T) {
	cfg := Config{Instances: 4, Type: "http", Interval: time.Second, Hung: 0.25} // instance 2 is hung
	f := newFleet(cfg)
	require.True(t, f.hung[2])
	a := newArrivals(f, cfg.Interval)
	a.begin()
	// each arrival's previous one is put d before it: instance 0 every
	// 1 010 ms, 1 with one early gap, 3 never; the hung one every 1 500 ms
	set := func(i int, t int64) { a.last[i].Store(t) }
	began := a.began.Load()
	set(0, began)
	set(1, began)
	set(2, began)
	gap := func(i int, d time.Duration) {
		a.last[i].Add(-int64(d)) // the previous arrival d ago
		a.arrive(i)
	}
	for range 5 {
		gap(0, 1010*time.Millisecond)
	}
	gap(1, 900*time.Millisecond) // 100 ms early
	gap(1, 1000*time.Millisecond)
	gap(2, 1500*time.Millisecond)
	gap(2, 1500*time.Millisecond)
	r := a.end()
	assert.Equal(t, uint64(7), r.Gaps)
	assert.Equal(t, uint64(1), r.EarlyGaps)
	assert.InDelta(t, 10, r.LagP50MS, 1)
	assert.InDelta(t, -100, r.LagMinMS, 7)
	assert.Equal(t, uint64(7), r.ArrivalsHealthy)
	assert.Equal(t, uint64(2), r.ArrivalsHung)
	assert.InDelta(t, 1500, r.HungGapP50MS, 1500*0.07)
	assert.Equal(t, 3, r.Healthy)
	assert.Equal(t, 1, r.Unprobed, "instance 3")
	assert.Equal(t, 0, r.Starved, "a window shorter than two intervals starves no one")

	a.begin()
	a.last[0].Store(a.began.Load() - int64(2500*time.Millisecond))
	a.arrive(0) // a gap of 2.5 intervals
	r = a.end()
	assert.Equal(t, 1, r.Starved)
}

// TestTargetsAttributeArrivalsByDestination serves a mixed fleet in this
// process and probes some of its instances with vigil's own probers: each
// arrival is counted for the instance whose address it came to — TCP ones
// reset before they are accepted included — and only for it.
func TestTargetsAttributeArrivalsByDestination(t *testing.T) {
	cfg := Config{Instances: 50, Type: "mixed", Interval: time.Second, Timeout: 200 * time.Millisecond,
		StartPeriod: 0, Hung: 0.1, Flip: 0.1}
	tg, err := startTargets(cfg)
	require.NoError(t, err)
	defer tg.close()
	f := tg.f
	// by i % 3: tcp, http, grpc; hung at i % 10 == 5 unless tcp, flipping at 3
	const tcpOK, httpOK, grpcOK, httpHung, tcpFlip, httpFlip = 0, 1, 2, 25, 3, 13
	require.True(t, f.healthy(tcpOK) && f.healthy(httpOK) && f.healthy(grpcOK))
	require.True(t, f.hung[httpHung] && f.types[httpHung] == health.TypeHTTP)
	require.False(t, f.hung[15], "a tcp target cannot hang")
	require.True(t, f.flips[tcpFlip] && f.flips[httpFlip])

	probe := func(i int) health.Result {
		t.Helper()
		in, err := f.spec(i, cfg).Normalize(f.id(i))
		require.NoError(t, err)
		p, err := probes.New(in)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
		defer cancel()
		return p.Probe(ctx)
	}
	tg.begin()
	first := map[int]time.Time{}
	for _, i := range []int{tcpOK, httpOK, grpcOK, tcpFlip, httpFlip} {
		first[i] = time.Now()
		assert.Equal(t, health.Success, probe(i).Outcome, "instance %d", i)
	}
	assert.Equal(t, health.Failure, probe(httpHung).Outcome)
	time.Sleep(cfg.Interval)
	var lags []float64 // as this test saw them
	for _, i := range []int{tcpOK, httpOK, grpcOK} {
		lags = append(lags, ms(time.Since(first[i])-cfg.Interval))
		assert.Equal(t, health.Success, probe(i).Outcome, "instance %d", i)
	}
	require.NoError(t, tg.setDown(true))
	assert.Equal(t, health.Failure, probe(tcpFlip).Outcome, "refused while down")
	assert.Equal(t, health.Failure, probe(httpFlip).Outcome, "503 while down")
	require.NoError(t, tg.setDown(false))
	assert.Equal(t, health.Success, probe(tcpFlip).Outcome, "reopened")

	// a connection to an address of no instance, reset at once, as the
	// TCP prober leaves every connection
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	require.NoError(t, unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1}))
	require.NoError(t, unix.Connect(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: f.ports.TCP}))
	require.NoError(t, unix.Close(fd))

	require.Eventually(t, func() bool { return tg.rec.strangers.Load() == 1 }, 5*time.Second, 5*time.Millisecond)
	r := tg.end()
	for i := range f.n {
		want := map[int]uint32{tcpOK: 2, httpOK: 2, grpcOK: 2, httpHung: 1, tcpFlip: 2, httpFlip: 2}[i]
		assert.Equal(t, want, tg.rec.count[i].Load(), "arrivals of instance %d", i)
	}
	assert.Equal(t, uint64(6), r.ArrivalsHealthy)
	assert.Equal(t, uint64(1), r.ArrivalsHung)
	assert.Equal(t, uint64(4), r.ArrivalsFlip, "the refused probe never arrived")
	assert.Equal(t, uint64(1), r.Strangers)
	assert.Equal(t, uint64(3), r.Gaps, "one gap for each healthy instance probed twice")
	slices.Sort(lags)
	assert.InDelta(t, lags[1], r.LagP50MS, 20, "the gaps minus the interval, as sent: %v", lags)
}

func TestTCPTargetsTellInstancesApartAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("thousands of connections")
	}
	cfg := Config{Instances: 70_000, Type: "tcp", Interval: time.Second}
	tg, err := startTargets(cfg)
	require.NoError(t, err)
	defer tg.close()
	tg.begin()
	// instances across the whole 127.16.0.0/12 block in use
	picks := []int{0, 255, 256, 65_535, 65_536, 69_999}
	for _, i := range picks {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(addrOf(i), strconv.Itoa(tg.f.ports.TCP)), time.Second)
		require.NoError(t, err)
		require.NoError(t, c.Close())
	}
	require.Eventually(t, func() bool { return tg.rec.byClass[classHealthy].Load() == uint64(len(picks)) }, 5*time.Second,
		5*time.Millisecond)
	for _, i := range picks {
		assert.Equal(t, uint32(1), tg.rec.count[i].Load(), "instance %d", i)
	}
}

func TestMetricsGiveTheInsideView(t *testing.T) {
	text := func(lagCounts [4]int, success, skipped int) []byte {
		return []byte(`# HELP vigil_schedule_lag_seconds How late a scheduled probe started.
# TYPE vigil_schedule_lag_seconds histogram
vigil_schedule_lag_seconds_bucket{le="0.001"} ` + strconv.Itoa(lagCounts[0]) + `
vigil_schedule_lag_seconds_bucket{le="0.01"} ` + strconv.Itoa(lagCounts[1]) + `
vigil_schedule_lag_seconds_bucket{le="0.1"} ` + strconv.Itoa(lagCounts[2]) + `
vigil_schedule_lag_seconds_bucket{le="+Inf"} ` + strconv.Itoa(lagCounts[3]) + `
vigil_schedule_lag_seconds_sum 1.5
vigil_schedule_lag_seconds_count ` + strconv.Itoa(lagCounts[3]) + `
vigil_probes_total{outcome="success",reason="",type="tcp"} ` + strconv.Itoa(success) + `
vigil_probes_total{outcome="skipped",reason="budget_full",type="tcp"} ` + strconv.Itoa(skipped) + `
vigil_probes_total{outcome="failure",reason="refused",type="tcp"} 7
`)
	}
	before := parseMetrics(text([4]int{10, 10, 10, 10}, 100, 1))
	after := parseMetrics(text([4]int{60, 109, 110, 110}, 200, 3))
	d := after.since(before)
	assert.Equal(t, 102.0, d.probes, "all outcomes")
	assert.Equal(t, 2.0, d.skipped)
	assert.Zero(t, d.failures)
	assert.InDelta(t, 1.0, d.lagQuantile(0.5), 1e-9, "half of the window's 100 within 1 ms")
	assert.InDelta(t, 10+90*0.5, d.lagQuantile(0.995), 1e-9, "interpolated in (10, 100] ms")
	assert.Equal(t, 100.0, d.lagMax(), "the highest bucket in use")
	assert.Zero(t, metricsSnap{}.lagQuantile(0.99))
	assert.Zero(t, parseMetrics(text([4]int{}, 0, 0)).lagMax())
}
