package api

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/internal/tcptest"
)

// BenchmarkReadsAt100k measures GET /v1/summary and one page of
// GET /v1/instances?status=unhealthy over real HTTP with 100 000 registered
// instances that keep probing (TCP, 10 s interval: 10 000 probes/s; 1 % of
// targets refuse and are unhealthy). It reports the p50 and p99 of each.
//
//	go test -run '^$' -bench ReadsAt100k -benchtime 2000x ./api
//
// VIGIL_BENCH_INTERVAL sets another probe interval.
func BenchmarkReadsAt100k(b *testing.B) {
	const n, unhealthyEvery = 100_000, 100
	interval := cmp.Or(os.Getenv("VIGIL_BENCH_INTERVAL"), "10s")
	live := tcptest.AcceptAndClose(b)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	deadPort := dead.Addr().(*net.TCPAddr).Port
	require.NoError(b, dead.Close())

	store := actors.NewMemoryStore()
	ctx := context.Background()
	for i := range n {
		port, ft := live, 3
		if i%unhealthyEvery == 0 {
			port, ft = deadPort, 1
		}
		spec := health.InstanceSpec{State: health.Running, Network: &health.Network{IP: "127.0.0.1"},
			HealthCheck: &health.PolicySpec{Interval: interval, Timeout: "1s", StartPeriod: "0s", FailureThreshold: &ft,
				TCP: &health.TCPSpec{Port: port}}}
		in, err := spec.Normalize(fmt.Sprintf("vm-%06d", i))
		require.NoError(b, err)
		require.NoError(b, store.PutInstance(ctx, in))
	}
	s, err := actors.New(ctx, actors.WithStore(store), actors.WithProbeBudget(4096))
	require.NoError(b, err)
	defer func() { require.NoError(b, s.Close(ctx)) }()
	srv := httptest.NewServer(New(s, Options{}))
	defer srv.Close()
	// wait until the first round of probes has settled the statuses
	deadline := time.Now().Add(2 * time.Minute)
	for sum := s.Summary(); sum[health.StatusStarting] > 0 || sum[health.StatusUnhealthy] < n/unhealthyEvery; sum = s.Summary() {
		if time.Now().After(deadline) {
			b.Fatalf("statuses did not settle: %v", sum)
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.Logf("statuses: %v", s.Summary())

	get := func(path string) time.Duration {
		began := time.Now()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("%s: %d", path, resp.StatusCode)
		}
		return time.Since(began)
	}
	var summary, list []time.Duration
	cursor := ""
	for b.Loop() {
		summary = append(summary, get("/v1/summary"))
		list = append(list, get("/v1/instances?status=unhealthy&limit=100&cursor="+cursor))
	}
	pct := func(ds []time.Duration, p float64) float64 {
		slices.Sort(ds)
		return float64(ds[min(len(ds)-1, int(float64(len(ds))*p))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(summary, 0.5), "summary-p50-ms")
	b.ReportMetric(pct(summary, 0.99), "summary-p99-ms")
	b.ReportMetric(pct(list, 0.5), "list-p50-ms")
	b.ReportMetric(pct(list, 0.99), "list-p99-ms")
	b.ReportMetric(float64(s.InFlight()), "in-flight")
}
