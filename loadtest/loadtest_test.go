package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/internal/vigilbin"
)

func TestAddressesMapBackToInstances(t *testing.T) {
	for _, i := range []int{0, 1, 255, 256, 65535, 65536, 99_999, MaxInstances - 1} {
		a := addrOf(i)
		ip := mustTCPAddr(t, a)
		assert.Equal(t, i, indexOf(ip, MaxInstances), a)
		assert.Equal(t, i, indexOf4(addr4(i), MaxInstances), a)
	}
	assert.Equal(t, -1, indexOf4([4]byte{127, 16 + MaxInstances>>16, 0, 0}, MaxInstances), "beyond 127.31.255.255")
	assert.Equal(t, -1, indexOf(mustTCPAddr(t, "127.0.0.1"), 10))
	assert.Equal(t, -1, indexOf(mustTCPAddr(t, addrOf(10)), 10), "beyond the fleet")
}

func TestIDsMapBackToInstances(t *testing.T) {
	f := &fleet{n: 1000, ids: makeIDs(1000)}
	for _, i := range []int{0, 1, 9, 10, 999} {
		id := f.id(i)
		assert.Equal(t, fmt.Sprintf("lt-%07d", i), id)
		assert.Equal(t, i, f.index(id), "by where it points")
		assert.Equal(t, i, f.index(strings.Clone(id)), "a copy, by what it says")
	}
	for _, id := range []string{"lt-0001000", "lt-x", "vm-0000001", "", f.ids[1 : 1+int(idWidth)], f.ids[:2*int(idWidth)]} {
		assert.Equal(t, -1, f.index(id), id)
	}
}

func TestConfigErrorsNameTheFlag(t *testing.T) {
	base := Config{Instances: 10, Type: "http", Interval: time.Second, Timeout: time.Second, Duration: time.Second, Store: "memory"}
	require.NoError(t, base.Validate())
	for flag, change := range map[string]func(*Config){
		"--instances": func(c *Config) { c.Instances = 0 },
		"--type":      func(c *Config) { c.Type = "udp" },
		"--interval":  func(c *Config) { c.Interval = time.Millisecond },
		"--timeout":   func(c *Config) { c.Timeout = 2 * time.Second },
		"--hung":      func(c *Config) { c.Hung = 2 },
		"--flip":      func(c *Config) { c.Flip = -1 },
		"--duration":  func(c *Config) { c.Duration = 0 },
		"--store":     func(c *Config) { c.Store = "disk" },
	} {
		c := base
		change(&c)
		assert.ErrorContains(t, c.Validate(), flag)
	}
	c := base
	c.Type, c.Hung = "tcp", 0.1
	assert.ErrorContains(t, c.Validate(), "--hung")
}

// TestRunMeasuresEveryScenarioType drives a small fleet of each type with
// hung and flipping targets through the embedded scheduler and checks the
// report is measured, not made up: the inside view and the targets' agree
// on the rate, the hung targets' gaps are their timeout plus the interval,
// and nothing is starved or alarmed.
func TestRunMeasuresEveryScenarioType(t *testing.T) {
	if testing.Short() {
		t.Skip("drives fleets for seconds")
	}
	for _, typ := range []string{"tcp", "mixed", "exec"} { // mixed is tcp, http and grpc
		t.Run(typ, func(t *testing.T) {
			cfg := Config{Instances: 60, Type: typ, Interval: time.Second, Timeout: 500 * time.Millisecond, StartPeriod: 0,
				Flip: 0.1, Hung: 0.1, Duration: 12 * time.Second, Store: "badger", RawFor: 500 * time.Millisecond,
				Binary: vigilBinary(t)}
			if typ == "tcp" {
				cfg.Hung = 0
			}
			if typ == "exec" {
				cfg.Instances = 20
			}
			rep, err := Run(context.Background(), cfg)
			require.NoError(t, err)
			f := newFleet(cfg)
			assert.Equal(t, "embedded", rep.Mode)
			assert.Equal(t, cfg.Instances, rep.Instances)
			assert.Positive(t, rep.Probes)
			assert.InDelta(t, float64(cfg.Instances), rep.ProbesPerSecond, float64(cfg.Instances)*0.5, "one probe a second each")
			assert.Zero(t, rep.Starved)
			assert.Positive(t, rep.Failures, "flipped and hung targets fail")
			// the flipping instances turn unhealthy and back: two detections each
			// (each phase lasts 4 s: 3 failures a second apart, with room for -race)
			flips := f.count(func(i int) bool { return f.flips[i] })
			assert.Equal(t, uint64(2*flips), rep.Detections)
			assert.Less(t, rep.DetectionP99MS, 3*1000+500+1000.0, "failure_threshold × interval + timeout + slack")
			assert.Positive(t, rep.ReadinessP99MS)
			assert.Zero(t, rep.FalseAlarms)
			assert.Equal(t, f.count(func(i int) bool { return f.hung[i] }), rep.Hung)
			assert.Equal(t, rep.Hung, rep.HungDetected, "every hung target's instance is unhealthy")
			assert.Positive(t, rep.RSSBytes)
			assert.GreaterOrEqual(t, rep.RSSPeakBytes, rep.RSSBytes)
			assert.Positive(t, rep.RawCeilingPerSec)
			assert.Positive(t, rep.RawCPUBeforeUS, "a raw loop before the measurement")
			assert.Positive(t, rep.RawCPUAfterUS, "and one after")
			assert.InDelta(t, (rep.RawCPUBeforeUS+rep.RawCPUAfterUS)/2, rep.RawCPUPerProbeUS, 1e-9)
			assert.Positive(t, rep.Efficiency)
			assert.GreaterOrEqual(t, rep.RawListenOverflows, int64(0), "the targets' dropped handshakes are counted")
			assert.GreaterOrEqual(t, rep.ListenOverflows, int64(0))
			assert.GreaterOrEqual(t, rep.ListenDrops, rep.ListenOverflows, "drops count overflows too")

			tr := rep.Target
			if typ == "exec" {
				// the agent serves every instance on one socket: no arrival is
				// attributed, and no figure is made up for them
				assert.Zero(t, tr.Healthy)
				assert.Zero(t, tr.ArrivalsHealthy)
			} else {
				assert.Equal(t, f.count(f.healthy), tr.Healthy)
				assertTargetView(t, cfg, rep)
			}
			var buf bytes.Buffer
			require.NoError(t, rep.WriteJSON(&buf))
			var fields map[string]any
			require.NoError(t, json.Unmarshal(buf.Bytes(), &fields))
			for _, k := range []string{"mode", "instances", "probes_per_second", "lag_p50_ms", "lag_p99_ms", "lag_max_ms", "starved",
				"detection_p50_ms", "detection_p99_ms", "readiness_p99_ms", "skipped", "cpu_percent", "rss_bytes", "rss_peak_bytes",
				"rss_per_instance_bytes", "raw_ceiling_per_second", "raw_cpu_per_probe_before_us", "raw_cpu_per_probe_after_us",
				"efficiency", "raw_listen_overflows", "listen_overflows", "listen_drops", "false_alarms", "hung_detected", "target"} {
				assert.Contains(t, fields, k)
			}
			for _, k := range []string{"lag_p50_ms", "lag_p99_ms", "lag_max_ms", "early_share", "starved", "cpu_percent"} {
				assert.Contains(t, fields["target"], k)
			}
			buf.Reset()
			require.NoError(t, rep.WriteTable(&buf))
			assert.Contains(t, buf.String(), "efficiency")
			assert.Contains(t, buf.String(), "accept-queue overflows")
			assert.Contains(t, buf.String(), "target: lag (gap − interval)")
		})
	}
}

// assertTargetView checks the targets' figures of a run whose healthy
// targets answer at once: every healthy instance arrived about once an
// interval, its gaps are the interval plus a little (the probe's own time:
// the next one is due an interval after the result), hung instances arrive
// once every timeout + interval, and the target process's own CPU is
// counted.
func assertTargetView(t *testing.T, cfg Config, rep *Report) {
	t.Helper()
	tr := rep.Target
	f := newFleet(cfg)
	window := tr.WindowS
	require.Positive(t, window)
	perInterval := window / cfg.Interval.Seconds()
	assert.InDelta(t, float64(tr.Healthy)*perInterval, float64(tr.ArrivalsHealthy), float64(tr.Healthy)*perInterval*0.25,
		"each healthy instance about once an interval")
	assert.Positive(t, tr.Gaps)
	// a stall of this busy machine (other work, -race) may hold up a batch of
	// probes past two intervals; figures made up would starve none or all
	assert.LessOrEqual(t, tr.Starved, tr.Healthy/3, "few healthy instances waited two intervals: %+v", tr)
	assert.Zero(t, tr.Unprobed)
	assert.Zero(t, tr.Strangers, "every arrival is one of the fleet's")
	assert.Greater(t, tr.LagP50MS, -10.0, "no earlier than the interval")
	assert.Less(t, tr.LagP50MS, 100.0, "the interval plus the probe's time")
	assert.GreaterOrEqual(t, tr.LagP99MS, tr.LagP50MS)
	assert.GreaterOrEqual(t, tr.LagMaxMS, tr.LagP99MS)
	assert.Less(t, tr.LagMaxMS, 3*float64(cfg.Interval/time.Millisecond), "no gap of four intervals")
	assert.Less(t, tr.LagP99MS, 2*float64(cfg.Interval/time.Millisecond), "hardly any gap of three intervals")
	assert.GreaterOrEqual(t, tr.EarlyShare, 0.0)
	assert.LessOrEqual(t, tr.EarlyShare, 1.0)
	assert.Positive(t, tr.CPUPercent, "the target process's own CPU")
	assert.Positive(t, tr.CPUPerArrivalUS)
	assert.Positive(t, tr.RSSBytes)
	assert.Positive(t, rep.RawTargetCPUPerProbe, "the target's cost during the raw loops")
	if hung := f.count(func(i int) bool { return f.hung[i] }); hung > 0 {
		// a hung probe holds its connection for the timeout; the next one
		// is due an interval after that
		cycle := (cfg.Interval + cfg.Timeout).Seconds()
		assert.InDelta(t, float64(hung)*window/cycle, float64(tr.ArrivalsHung), float64(hung)*window/cycle*0.35)
		assert.InDelta(t, 1000*cycle, tr.HungGapP50MS, 250, "timeout + interval")
	} else {
		assert.Zero(t, tr.ArrivalsHung)
	}
}

func vigilBinary(t *testing.T) string {
	t.Helper()
	bin, err := vigilbin.Path()
	require.NoError(t, err)
	return bin
}
