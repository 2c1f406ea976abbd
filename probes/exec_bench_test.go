package probes

import (
	"context"
	"testing"
	"time"

	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/internal/guesttest"
)

// BenchmarkExecTrue runs /bin/true in the guest through the muxer and the
// real agent on one pooled connection; -cpu sets the probes in parallel.
//
//	go test -run '^$' -bench ExecTrue -benchtime 3s ./probes
func BenchmarkExecTrue(b *testing.B) {
	vm := guesttest.Start(b, 64)
	x := NewExec(health.Vsock{Socket: vm.Mux.Path, Port: 2222}, health.ExecProbe{Command: []string{"/bin/true"}})
	defer x.Close()
	b.ReportAllocs()
	b.SetParallelism(4)
	b.ResetTimer()
	began := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if r := x.Probe(ctx); r.Outcome != health.Success {
				b.Error(r.Message)
			}
			cancel()
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(began).Seconds(), "probes/s")
}
