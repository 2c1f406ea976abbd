package clock

import (
	"cmp"
	"slices"
	"testing"
	"time"
)

// BenchmarkSharedNow is the cost of reading the shared clock's time.
func BenchmarkSharedNow(b *testing.B) {
	s := NewShared()
	defer s.Close()
	b.ReportAllocs()
	for b.Loop() {
		_ = s.Now()
	}
}

// BenchmarkSharedReset is what an actor pays per probe: resetting its one
// timer to the next due time, with a fleet of other timers pending in the
// wheel.
func BenchmarkSharedReset(b *testing.B) {
	s := NewShared()
	defer s.Close()
	nop := funcWaker(func() {})
	timers := make([]Timer, 100_000)
	for i := range timers {
		timers[i] = s.AfterWake(10*time.Second+time.Duration(i)*100*time.Microsecond, nop)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		timers[i%len(timers)].Reset(5*time.Second + time.Duration(i%1000)*10*time.Millisecond)
		i++
	}
	b.StopTimer()
	for _, t := range timers {
		t.Stop()
	}
}

// BenchmarkSharedFire is the firing path, driven by hand: a batch of
// timers set due at once, taken from the wheel and called in due order.
func BenchmarkSharedFire(b *testing.B) {
	s := newShared(wheelSlots)
	const batch = 1000
	n := 0
	timers := make([]Timer, batch)
	for i := range timers {
		timers[i] = s.AfterFunc(time.Hour, func() { n++ })
	}
	var due []*sharedTimer
	b.ReportAllocs()
	for b.Loop() {
		for _, t := range timers {
			t.Reset(0)
		}
		due, _ = s.take((s.fired+1)*int64(Slack), due[:0])
		slices.SortFunc(due, func(a, b *sharedTimer) int { return cmp.Compare(a.at, b.at) })
		for i, t := range due {
			t.w.Wake()
			due[i] = nil
		}
	}
	if n != b.N*batch {
		b.Fatalf("%d timers fired, want %d", n, b.N*batch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/timer")
}
