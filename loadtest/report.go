package loadtest

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

// WriteTable writes the report as a two-column table.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	type row struct {
		k string
		v any
	}
	t := r.Target
	under := "the embedded scheduler (this process)"
	inside := "inside (probe start − due)"
	if r.Mode == "serve" {
		under = "vigil serve (its own process, Badger, over the API)"
		inside = "inside (probe start − due, /metrics buckets)"
	}
	rows := []row{
		{"under test", under},
		{"instances", r.Instances}, {"type", r.Type}, {"interval", fmt.Sprintf("%.0f ms", r.IntervalMS)},
		{"store", r.Store}, {"measured for", fmt.Sprintf("%.1f s", r.DurationS)},
		{"registration", fmt.Sprintf("%.2f s", r.RegistrationS)},
		{"probes", r.Probes}, {"probes/s", fmt.Sprintf("%.0f", r.ProbesPerSecond)},
		{inside + " lag p50 / p99 / max", fmt.Sprintf("%.1f / %.1f / %.1f ms", r.LagP50MS, r.LagP99MS, r.LagMaxMS)},
	}
	if r.Mode != "serve" {
		rows = append(rows, row{"inside: healthy instances' lag p99", fmt.Sprintf("%.1f ms", r.HealthyLagP99MS)},
			row{"inside: starved (no probe in 3 intervals)", r.Starved})
	}
	rows = append(rows,
		row{"target: lag (gap − interval) p50 / p99 / max", fmt.Sprintf("%.1f / %.1f / %.1f ms (mean %.2f, earliest %.1f)",
			t.LagP50MS, t.LagP99MS, t.LagMaxMS, t.LagMeanMS, t.LagMinMS)},
		row{"target: early gaps (< interval − 50 ms)", fmt.Sprintf("%d of %d (%.3f %%)", t.EarlyGaps, t.Gaps, 100*t.EarlyShare)},
		row{"target: starved (a gap > 2 intervals)", fmt.Sprintf("%d of %d healthy (%d without an arrival)", t.Starved, t.Healthy, t.Unprobed)},
		row{"target: arrivals healthy / hung / flipping / unknown", fmt.Sprintf("%d / %d / %d / %d", t.ArrivalsHealthy, t.ArrivalsHung,
			t.ArrivalsFlip, t.Strangers)},
	)
	if t.ArrivalsHung > 0 {
		rows = append(rows, row{"target: hung instances' gap p50", fmt.Sprintf("%.0f ms", t.HungGapP50MS)})
	}
	rows = append(rows,
		row{"target process cpu", fmt.Sprintf("%.1f %% of one core (%.1f µs an arrival), rss %.0f MiB", t.CPUPercent,
			t.CPUPerArrivalUS, float64(t.RSSBytes)/(1<<20))},
		row{"false alarms (healthy targets shown unhealthy)", r.FalseAlarms},
		row{"healthy targets with a failed probe", r.HealthyFailed},
		row{"hung detected", fmt.Sprintf("%d of %d", r.HungDetected, r.Hung)},
		row{"detection p50 / p99", fmt.Sprintf("%.0f / %.0f ms (%d transitions)", r.DetectionP50MS, r.DetectionP99MS, r.Detections)},
	)
	if r.Mode != "serve" {
		rows = append(rows, row{"readiness p99", fmt.Sprintf("%.0f ms", r.ReadinessP99MS)})
	}
	rows = append(rows,
		row{"skipped / failures", fmt.Sprintf("%d / %d", r.Skipped, r.Failures)},
		row{"cpu", fmt.Sprintf("%.0f %% of one core", r.CPUPercent)},
		row{"rss median / peak", fmt.Sprintf("%.0f / %.0f MiB (%d B per instance)", float64(r.RSSBytes)/(1<<20),
			float64(r.RSSPeakBytes)/(1<<20), r.RSSPerInstance)},
		row{"raw ceiling (own process)", fmt.Sprintf("%.0f probes/s (the targets: %.1f µs a probe)", r.RawCeilingPerSec, r.RawTargetCPUPerProbe)},
		row{"cpu per probe raw / vigil", fmt.Sprintf("%.1f / %.1f µs (raw before %.1f, after %.1f)", r.RawCPUPerProbeUS,
			r.VigilCPUPerProbeUS, r.RawCPUBeforeUS, r.RawCPUAfterUS)},
		row{"efficiency", fmt.Sprintf("%.2f", r.Efficiency)},
	)
	if r.Mode == "serve" {
		rows = append(rows, row{"the load test's own cpu", fmt.Sprintf("%.0f %% of one core", r.DriverCPUPercent)})
	} else {
		rows = append(rows, row{"allocated per probe", fmt.Sprintf("%.0f B (%d GC cycles)", r.AllocPerProbe, r.GCCycles)})
	}
	rows = append(rows, row{"accept-queue overflows raw / window", fmt.Sprintf("%d / %d (listen drops %d / %d)",
		r.RawListenOverflows, r.ListenOverflows, r.RawListenDrops, r.ListenDrops)})
	if r.HogShare > 0 {
		rows = append(rows, row{"cpu hog (another process)", fmt.Sprintf("%.0f %% of the machine asked, %.0f %% of one core taken",
			100*r.HogShare, r.HogCPUPercent)})
	}
	if r.NotifierDeliveries > 0 {
		rows = append(rows, row{"notifier deliveries, lag p50 / p99 / max", fmt.Sprintf("%d, %.0f / %.0f / %.0f ms", r.NotifierDeliveries,
			r.NotifierLagP50MS, r.NotifierLagP99MS, r.NotifierLagMaxMS)})
	}
	if a := r.API; a != nil {
		rows = append(rows, row{"api clients", fmt.Sprintf("%d: %.0f requests/s, %d violations", a.Clients, a.PerSecond, a.Violations)})
		for _, name := range floodKinds {
			k, ok := a.Kinds[name]
			if !ok {
				continue
			}
			rows = append(rows, row{"api " + name + " p50 / p99 / max", fmt.Sprintf("%.1f / %.1f / %.1f ms, %d: %s", k.P50MS, k.P99MS,
				k.MaxMS, k.Requests, k.statusLine())})
		}
	}
	for _, row := range rows {
		fmt.Fprintf(tw, "%s\t%v\n", row.k, row.v)
	}
	return tw.Flush()
}

// WriteJSON writes the report as one JSON object on one line.
func (r *Report) WriteJSON(w io.Writer) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// WriteTable writes the fleet-of-nodes report as a two-column table.
func (r *NodesReport) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	rows := []struct {
		k string
		v any
	}{
		{"nodes × instances", fmt.Sprintf("%d × %d TCP at %.0f ms", r.Nodes, r.PerNode, r.IntervalMS)},
		{"registration over the API", fmt.Sprintf("%.1f s", r.RegistrationS)},
		{"fleet summary p50 / p99", fmt.Sprintf("%.1f / %.1f ms", r.SummaryP50MS, r.SummaryP99MS)},
		{"fleet page of unhealthy p50 / p99", fmt.Sprintf("%.1f / %.1f ms (%d items)", r.PageP50MS, r.PageP99MS, r.PageItems)},
		{"move p50 / p99", fmt.Sprintf("%.1f / %.1f ms", r.MoveP50MS, r.MoveP99MS)},
		{"kill -9 → unknown everywhere p50 / p99", fmt.Sprintf("%.0f / %.0f ms (lease 3 s)", r.NodeDownP50MS, r.NodeDownP99MS)},
		{"node cpu median / max", fmt.Sprintf("%.1f / %.1f %% of one core", r.NodeCPUPercent, r.NodeCPUMaxPercent)},
		{"standalone cpu", fmt.Sprintf("%.1f %% (node / standalone %.2f)", r.AloneCPUPercent, r.CPURatio)},
		{"node rss median / standalone", fmt.Sprintf("%.0f / %.0f MiB (%.2f)", float64(r.NodeRSSBytes)/(1<<20),
			float64(r.AloneRSSBytes)/(1<<20), r.RSSRatio)},
		{"etcd cpu", fmt.Sprintf("%.1f %% of one core", r.EtcdCPUPercent)},
	}
	for _, row := range rows {
		fmt.Fprintf(tw, "%s\t%v\n", row.k, row.v)
	}
	return tw.Flush()
}

// WriteJSON writes the fleet-of-nodes report as one JSON object on one line.
func (r *NodesReport) WriteJSON(w io.Writer) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
