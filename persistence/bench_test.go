package persistence

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/clock"
	"github.com/vigilhq/vigil/health"
)

// BenchmarkSnapshotCommit measures one writer batch of 5 000 distinct
// snapshots: 250 ms worth at 20 000 updates/s. A batch that commits in under
// 250 ms keeps staleness within the flush interval at that rate.
func BenchmarkSnapshotCommit(b *testing.B) {
	const batch = 5000
	s := open(b, b.TempDir())
	defer s.Close()
	ctx := context.Background()
	snaps := make([]*actors.Snapshot, batch)
	for i := range snaps {
		in := inst(b, "vm-"+strconv.Itoa(i))
		require.NoError(b, s.PutInstance(ctx, in))
		snaps[i] = snapOf(in, health.StatusHealthy, i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	n := 0
	for b.Loop() {
		for _, snap := range snaps {
			c := *snap
			s.SaveSnapshot(&c)
		}
		require.NoError(b, s.Flush(ctx))
		n++
	}
	b.ReportMetric(float64(n*batch)/time.Since(start).Seconds(), "snapshots/s")
}

// BenchmarkTransitionDurability measures the time from AppendTransition to
// publication (durable first) with 64 concurrent instances.
func BenchmarkTransitionDurability(b *testing.B) {
	s := open(b, b.TempDir())
	defer s.Close()
	ctx := context.Background()
	for i := 0; i < 64; i++ {
		require.NoError(b, s.PutInstance(ctx, inst(b, "vm-"+strconv.Itoa(i))))
	}
	var mu sync.Mutex
	var lat []time.Duration
	b.SetParallelism(32) // 64 goroutines on 2 cores
	var id sync.Map
	var next int64
	var nmu sync.Mutex
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		nmu.Lock()
		me := "vm-" + strconv.FormatInt(next%64, 10)
		next++
		nmu.Unlock()
		id.Store(me, true)
		in := inst(b, me)
		done := make(chan struct{}, 1)
		for pb.Next() {
			t := time.Now()
			s.AppendTransition(snapOf(in, health.StatusHealthy, 1), actors.Event{InstanceID: me}, func(actors.Event) { done <- struct{}{} })
			<-done
			d := time.Since(t)
			mu.Lock()
			lat = append(lat, d)
			mu.Unlock()
		}
	})
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50_ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99_ms")
	}
}

func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkRestart100k stores 100 000 instances with snapshots, then measures
// opening the store and booting the scheduler until every actor is ready.
// Run with -benchtime=1x.
func BenchmarkRestart100k(b *testing.B) {
	const n = 100_000
	dir := b.TempDir()
	s := open(b, dir)
	ctx := context.Background()
	var wg sync.WaitGroup
	ids := make(chan int, 1024)
	for w := 0; w < 256; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ids {
				in := inst(b, fmt.Sprintf("vm-%06d", i))
				if err := s.PutInstance(ctx, in); err != nil {
					b.Error(err)
					return
				}
				s.SaveSnapshot(snapOf(in, health.StatusHealthy, 3))
			}
		}()
	}
	for i := 0; i < n; i++ {
		ids <- i
	}
	close(ids)
	wg.Wait()
	require.NoError(b, s.Close())
	runtime.GC()
	for b.Loop() {
		start := time.Now()
		st, err := Open(dir, Options{})
		require.NoError(b, err)
		sched, err := actors.New(ctx, actors.WithStore(st), actors.WithClock(clock.NewFake(time.Now())))
		require.NoError(b, err)
		for !sched.Ready() {
			time.Sleep(time.Millisecond)
		}
		took := time.Since(start)
		require.Equal(b, n, sched.Len())
		require.Equal(b, n, sched.Summary()[health.StatusHealthy])
		runtime.GC()
		b.ReportMetric(took.Seconds(), "ready_s")
		b.ReportMetric(float64(rssBytes())/(1<<20), "rss_MiB")
		require.NoError(b, sched.Close(ctx))
		require.NoError(b, st.Close())
	}
}

// fullSnapshot is a snapshot as a steady instance writes it: its history
// full of plain TCP results.
func fullSnapshot(tb testing.TB, in health.Instance) *actors.Snapshot {
	snap := snapOf(in, health.StatusHealthy, 12)
	snap.Version = SchemaVersion
	for i := range health.HistorySize {
		at := t0.Add(time.Duration(i)*5*time.Second + 1234567)
		snap.State.History.Add(health.Result{Outcome: health.Success, Start: at, Duration: health.Duration(312 * time.Microsecond)})
		snap.State.LastCheckedAt, snap.State.LastSuccessAt = at, at
	}
	snap.State.WindowStart = t0
	return snap
}

// BenchmarkDecodeRecords decodes an instance record and its snapshot as a
// start does, for every stored instance: the store's snapshot, one of an
// earlier build (JSON), and both records through encoding/json.
func BenchmarkDecodeRecords(b *testing.B) {
	in := inst(b, "0b7c6f0e-1d2a-4c8e-9f31-5a6b7c8d9e0f")
	rec, err := encode(instanceRecord{V: SchemaVersion, Instance: in, Spec: in.Written})
	require.NoError(b, err)
	snap := fullSnapshot(b, in)
	bin, err := encodeSnapshot(snap)
	require.NoError(b, err)
	js, err := encode(snap)
	require.NoError(b, err)
	b.Logf("snapshot: %d bytes, %d as JSON", len(bin), len(js))
	load := func(snap []byte) func(b *testing.B) {
		return func(b *testing.B) {
			b.ReportAllocs()
			var memo policyMemo
			for b.Loop() {
				in, err := decodeInstance(in.ID, rec)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := decodeSnapshotUnder(snap, in.HealthCheck, &memo); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.Run("store", load(bin))
	b.Run("store-json-snapshot", load(js))
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var r instanceRecord
			var s actors.Snapshot
			if err := json.Unmarshal(rec, &r); err != nil {
				b.Fatal(err)
			}
			if err := json.Unmarshal(js, &s); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkEncodeSnapshot encodes a snapshot as the store's writer does, for
// every checkpoint of every instance, and as JSON beside it.
func BenchmarkEncodeSnapshot(b *testing.B) {
	snap := fullSnapshot(b, inst(b, "0b7c6f0e-1d2a-4c8e-9f31-5a6b7c8d9e0f"))
	for _, c := range []struct {
		name   string
		encode func(*actors.Snapshot) ([]byte, error)
	}{{"store", encodeSnapshot}, {"json", func(s *actors.Snapshot) ([]byte, error) { return encode(s) }}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.encode(snap); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
