package main

import (
	"os"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// defaultGCPercent is the garbage collector's target for the scheduler
// process unless GOGC says otherwise. Its live heap is large and long-lived
// (a few KB per instance) while a probe allocates little, so collecting at
// half the live heap instead of all of it costs a little CPU and keeps the
// resident set at about 1.5 times the live heap instead of 2 (as Prometheus
// defaults GOGC to 75 for the same reason).
const defaultGCPercent = 50

func defaultGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(defaultGCPercent)
	}
}

// bootGCPercent is the collector's target while vigil serve loads the store
// and spawns the actors, unless GOGC says otherwise. A boot makes garbage of
// several times the heap it keeps, and at the steady target the collector
// marks the growing heap over and over: a fifth of a boot's CPU at 1 000 000
// instances. At four times the steady target the boot is about a quarter
// shorter and its peak resident set about a fifth higher, for seconds: the
// heap the boot left free goes back to the system once it is ready.
const bootGCPercent = 4 * defaultGCPercent

// bootGC raises the collector's target for a boot, when GOGC does not set
// it, and returns the boot's target; end puts the steady one back (once;
// later calls do nothing).
func bootGC() (boot int, end func()) {
	if _, set := os.LookupEnv("GOGC"); set {
		return gcPercent(), func() {}
	}
	steady := debug.SetGCPercent(bootGCPercent)
	var once sync.Once
	return bootGCPercent, func() { once.Do(func() { debug.SetGCPercent(steady) }) }
}

// gcPercent is the collector's target now, as the runtime reports it.
func gcPercent() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return -1
	}
	return int(s[0].Value.Uint64())
}
