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
	rows := []struct {
		k string
		v any
	}{
		{"instances", r.Instances}, {"type", r.Type}, {"interval", fmt.Sprintf("%.0f ms", r.IntervalMS)},
		{"store", r.Store}, {"measured for", fmt.Sprintf("%.1f s", r.DurationS)},
		{"registration", fmt.Sprintf("%.2f s", r.RegistrationS)},
		{"probes", r.Probes}, {"probes/s", fmt.Sprintf("%.0f", r.ProbesPerSecond)},
		{"lag p50 / p99 / max", fmt.Sprintf("%.1f / %.1f / %.1f ms", r.LagP50MS, r.LagP99MS, r.LagMaxMS)},
		{"healthy instances' lag p99", fmt.Sprintf("%.1f ms", r.HealthyLagP99MS)},
		{"starved", r.Starved},
		{"detection p50 / p99", fmt.Sprintf("%.0f / %.0f ms (%d transitions)", r.DetectionP50MS, r.DetectionP99MS, r.Detections)},
		{"readiness p99", fmt.Sprintf("%.0f ms", r.ReadinessP99MS)},
		{"skipped / failures", fmt.Sprintf("%d / %d", r.Skipped, r.Failures)},
		{"cpu", fmt.Sprintf("%.0f %% of one core", r.CPUPercent)},
		{"rss", fmt.Sprintf("%.0f MiB (%d B per instance)", float64(r.RSSBytes)/(1<<20), r.RSSPerInstance)},
		{"raw ceiling", fmt.Sprintf("%.0f probes/s", r.RawCeilingPerSec)},
		{"cpu per probe raw / vigil", fmt.Sprintf("%.1f / %.1f µs (raw before %.1f, after %.1f)", r.RawCPUPerProbeUS,
			r.VigilCPUPerProbeUS, r.RawCPUBeforeUS, r.RawCPUAfterUS)},
		{"efficiency", fmt.Sprintf("%.2f", r.Efficiency)},
		{"allocated per probe", fmt.Sprintf("%.0f B (%d GC cycles)", r.AllocPerProbe, r.GCCycles)},
		{"accept-queue overflows raw / vigil", fmt.Sprintf("%d / %d", r.RawListenOverflows, r.ListenOverflows)},
	}
	if r.NotifierDeliveries > 0 {
		rows = append(rows, struct {
			k string
			v any
		}{"notifier deliveries, lag p50 / p99 / max", fmt.Sprintf("%d, %.0f / %.0f / %.0f ms", r.NotifierDeliveries,
			r.NotifierLagP50MS, r.NotifierLagP99MS, r.NotifierLagMaxMS)})
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
