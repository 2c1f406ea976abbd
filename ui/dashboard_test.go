package ui_test

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/api"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/internal/tcptest"
)

// deadPort is a loopback port nothing listens on.
func deadPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return port
}

func tcpCheck(port int, interval string) *health.PolicySpec {
	one := 1
	return &health.PolicySpec{TCP: &health.TCPSpec{Port: port}, Interval: interval, Timeout: "500ms", StartPeriod: "0s", FailureThreshold: &one}
}

// countsOf is what the overview shows per status and in total.
func countsOf(p *page) map[string]string {
	return eval[map[string]string](p, `Object.fromEntries([...document.querySelectorAll('[data-count]')].map(e => [e.dataset.count, e.textContent.replace(/,/g, '')]))`)
}

func want(sum map[health.Status]int) map[string]string {
	out := map[string]string{}
	total := 0
	for st, c := range sum {
		out[string(st)] = strconv.Itoa(c)
		total += c
	}
	out["total"] = strconv.Itoa(total)
	return out
}

// TestDashboardFollowsALiveHost opens the overview of a small host with real
// targets, kills one target and waits for the page to show the transition,
// then opens an instance and probes it now.
func TestDashboardFollowsALiveHost(t *testing.T) {
	v := serve(t, nil, api.Options{})
	ctx := context.Background()
	targets := map[string]net.Listener{}
	for _, id := range []string{"web-1", "web-2", "web-3"} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		tcptest.Serve(t, l)
		targets[id] = l
		_, _, err = v.sched.Put(ctx, id, health.InstanceSpec{Name: "web server", State: health.Running,
			Network: &health.Network{IP: "127.0.0.1"}, Labels: map[string]string{"service": "web"},
			HealthCheck: tcpCheck(l.Addr().(*net.TCPAddr).Port, "1s")})
		require.NoError(t, err)
	}
	dead := deadPort(t)
	for id, spec := range map[string]health.InstanceSpec{
		"db-1":     {State: health.Running, Network: &health.Network{IP: "127.0.0.1"}, HealthCheck: tcpCheck(dead, "2s")},
		"batch-1":  {State: health.Stopped, Network: &health.Network{IP: "127.0.0.1"}, HealthCheck: tcpCheck(dead, "2s")},
		"legacy-1": {State: health.Running},
		"boot-1":   {State: health.Initializing, Network: &health.Network{IP: "127.0.0.1"}, HealthCheck: tcpCheck(dead, "1h")},
	} {
		_, _, err := v.sched.Put(ctx, id, spec)
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool {
		sum := v.sched.Summary()
		return sum[health.StatusHealthy] == 3 && sum[health.StatusUnhealthy] == 1
	}, 5*time.Second, 10*time.Millisecond)

	p := open(t, v.URL, "", 1280, 900)
	p.wait(5*time.Second, `window.vigil.ready && document.querySelector('[data-count=total]') !== null`)
	assert.Equal(t, want(v.sched.Summary()), countsOf(p), "the overview's counts")
	assert.Equal(t, "Live", p.text("#conn"))

	// kill web-2's target: it turns unhealthy on the open page within 1 s
	sub := v.sched.Subscribe(64)
	defer sub.Close()
	require.NoError(t, targets["web-2"].Close())
	var at time.Time
	for ev := range sub.C {
		if ev.InstanceID == "web-2" && ev.To == health.StatusUnhealthy {
			at = time.Now()
			break
		}
	}
	p.wait(time.Second, `document.querySelector('#feed li[data-instance="web-2"][data-to="unhealthy"]') !== null &&
		document.querySelector('[data-count=unhealthy]').textContent === '2'`)
	shown := time.Since(at)
	t.Logf("web-2's transition to unhealthy shown %v after the scheduler published it", shown)
	assert.Less(t, shown, time.Second)
	assert.Equal(t, want(v.sched.Summary()), countsOf(p))

	// probes per second and the lag, from /metrics
	p.wait(8*time.Second, `Number(document.getElementById('stat-rate').dataset.value) > 0 &&
		document.getElementById('stat-p99').dataset.value !== undefined`)
	rate := eval[string](p, `document.getElementById('stat-rate').dataset.value`)
	t.Logf("probes per second on the page: %s; lag p50 %s, p99 %s", rate, p.text("#stat-p50"), p.text("#stat-p99"))
	r, err := strconv.ParseFloat(rate, 64)
	require.NoError(t, err)
	assert.InDelta(t, 3+1/2.0, r, 1, "three targets every second (web-2 now refuses) and db-1 every 2 s")

	// one instance: status, history, sparkline, transitions, probe now
	p.hash("#/instances/web-1")
	p.wait(5*time.Second, `document.querySelector('#inst-status[data-status=healthy]') !== null &&
		document.querySelectorAll('#history tr').length >= 2 && document.querySelector('#inst-spark svg') !== null &&
		document.querySelectorAll('#transitions li').length >= 2`)
	assert.True(t, has(p.text("#inst-policy"), "tcp", "1s", "500ms"), p.text("#inst-policy"))
	assert.True(t, has(p.text("#transitions"), "starting", "healthy", "registered"), p.text("#transitions"))
	p.do(chromedp.Click(chromedp.ID("probe-now")))
	p.wait(5*time.Second, `document.querySelector('#probe-result[data-outcome=success]') !== null`)
	assert.True(t, has(p.text("#probe-result"), "success", "healthy"), p.text("#probe-result"))
	p.screenshot("instance.png", true)
	assert.Empty(t, p.unlabelled(), "the instance view")

	p.hash("#/instances/db-1")
	p.wait(5*time.Second, `document.querySelector('#inst-status[data-status=unhealthy]') !== null`)
	p.do(chromedp.Click(chromedp.ID("probe-now")))
	p.wait(5*time.Second, `document.querySelector('#probe-result[data-outcome=failure]') !== null`)
	assert.True(t, has(p.text("#probe-result"), "failure", "connection_refused", "unhealthy"), p.text("#probe-result"))

	p.hash("#/instances/nope")
	p.wait(5*time.Second, `document.getElementById('inst-error').textContent.includes('No instance nope')`)
}
