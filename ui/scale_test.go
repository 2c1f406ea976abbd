package ui_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/api"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/internal/tcptest"
)

const fleetSize = 100_000

// bigFleet stores 100 000 instances with the state each had, as a vigil
// restarting finds them: 2 % unhealthy (their targets refuse), 0.5 % each
// starting (Initializing), unknown (Stopped) and disabled (no check), the
// rest healthy, each in its status for up to ten days. Checks run every
// hour, spread over it (≈ 28 probes/s), so the fleet costs the machine
// little. flips are healthy instances whose targets refuse: a probe now
// turns each unhealthy.
func bigFleet(t *testing.T) (store *actors.MemoryStore, flips []string) {
	t.Helper()
	live, dead := tcptest.AcceptAndClose(t), deadPort(t)
	store = actors.NewMemoryStore()
	now := time.Now()
	services := []string{"web", "db", "cache"}
	var wg sync.WaitGroup
	var mu sync.Mutex
	const workers = 2
	for w := range workers {
		wg.Go(func() {
			for i := w; i < fleetSize; i += workers {
				id := fmt.Sprintf("vm-%06d", i)
				svc := services[(i/7)%3]
				spec := health.InstanceSpec{Name: fmt.Sprintf("%s-%d", svc, i), State: health.Running,
					Network: &health.Network{IP: "127.0.0.1"},
					Labels:  map[string]string{"service": svc, "zone": string(rune('a' + i%3))}}
				check, ok := tcpCheck(live, "1h"), true
				flip := i%3331 == 10 && i%200 > 2 && i%50 != 3
				switch {
				case i%200 == 0:
					ok = false
				case i%200 == 1:
					spec.State = health.Stopped
				case i%200 == 2:
					spec.State = health.Initializing
				case i%50 == 3, flip:
					check.TCP.Port = dead
				}
				if ok {
					spec.HealthCheck = check
				}
				in, err := spec.Normalize(id)
				if err != nil {
					panic(err)
				}
				cfg := health.ConfigOf(in)
				var st health.State
				since := now.Add(-time.Duration((i*7919)%864_000) * time.Second)
				at := health.Instant{Wall: since} // its monotonic reading is zero at since
				st.Configure(health.Config{}, cfg, at)
				r := health.Result{Outcome: health.Success, Start: since, Duration: health.Duration(300 * time.Microsecond)}
				if i%50 == 3 {
					r = health.Result{Outcome: health.Failure, Reason: health.ReasonConnectionRefused, Start: since,
						Duration: health.Duration(200 * time.Microsecond), Message: "connect: connection refused"}
				}
				st.Observe(cfg, &r, at.Add(time.Millisecond))
				if err := store.PutInstance(context.Background(), in); err != nil {
					panic(err)
				}
				store.SaveSnapshot(&actors.Snapshot{Version: actors.SnapshotVersion, ID: id, Lifecycle: in.State,
					StartedAt: in.StartTime(), Policy: in.HealthCheck, State: st, NextCheckAt: now.Add(time.Hour)})
				if flip {
					mu.Lock()
					flips = append(flips, id)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	sort.Strings(flips)
	return store, flips
}

// listPage is one page of GET /v1/instances, as the test reads it.
type listPage struct {
	Instances []struct {
		ID string `json:"id"`
	} `json:"instances"`
	NextCursor string `json:"next_cursor"`
}

func list(t *testing.T, base, query string) listPage {
	t.Helper()
	resp, err := http.Get(base + "/v1/instances?" + query)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, query)
	var out listPage
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return out
}

func (l listPage) ids() []string {
	out := make([]string, len(l.Instances))
	for i, it := range l.Instances {
		out[i] = it.ID
	}
	return out
}

// rows are the ids the table shows, and rendered the count of its renders.
func rows(p *page) []string {
	return eval[[]string](p, `[...document.querySelectorAll('#rows tr[data-id]')].map(r => r.dataset.id)`)
}

const renders = `window.vigil.timings.filter(t => t.view === 'instances').length`

// after runs act and waits for the table to render again.
func after(p *page, act func()) {
	p.t.Helper()
	before := eval[int](p, renders)
	act()
	p.wait(10*time.Second, fmt.Sprintf(`%s > %d`, renders, before))
}

// showing waits until the table shows these rows.
func showing(p *page, ids []string) {
	p.t.Helper()
	b, err := json.Marshal(ids)
	require.NoError(p.t, err)
	p.wait(10*time.Second, fmt.Sprintf(`JSON.stringify([...document.querySelectorAll('#rows tr[data-id]')].map(r => r.dataset.id)) === %q`, b))
}

// TestDashboardAt100k runs the dashboard over 100 000 instances: the
// overview's counts, transitions arriving live, and the table's filters,
// orders and pages, each page rendered within 300 ms of its response.
func TestDashboardAt100k(t *testing.T) {
	began := time.Now()
	store, flips := bigFleet(t)
	v := serve(t, store, api.Options{})
	require.True(t, v.sched.Ready())
	t.Logf("%d instances stored and their actors started in %v; %d to flip", fleetSize, time.Since(began), len(flips))

	p := open(t, v.URL, "", 1280, 900)
	p.wait(10*time.Second, `window.vigil.ready && document.querySelector('[data-count=total]') !== null`)
	// a scheduled probe may change a count meanwhile: read until they agree
	require.Eventually(t, func() bool { return assert.ObjectsAreEqual(want(v.sched.Summary()), countsOf(p)) },
		5*time.Second, 50*time.Millisecond, "the overview's counts: %v, the scheduler's: %v", countsOf(p), v.sched.Summary())
	assert.Equal(t, fmt.Sprint(fleetSize), countsOf(p)["total"])

	// the flips turn unhealthy at once; the page follows
	sub := v.sched.Subscribe(4096)
	defer sub.Close()
	var wg sync.WaitGroup
	for _, id := range flips {
		wg.Go(func() {
			_, _, err := v.sched.ProbeNow(context.Background(), id)
			assert.NoError(t, err)
		})
	}
	wg.Wait()
	for seen := map[string]bool{}; len(seen) < len(flips); {
		ev := <-sub.C
		if slices.Contains(flips, ev.InstanceID) && ev.To == health.StatusUnhealthy {
			seen[ev.InstanceID] = true
		}
	}
	flipped := time.Now()
	p.wait(time.Second, fmt.Sprintf(`document.querySelectorAll('#feed li[data-to=unhealthy]').length >= %d`, len(flips)))
	t.Logf("%d transitions shown %v after the last was published", len(flips), time.Since(flipped))
	require.Eventually(t, func() bool { return assert.ObjectsAreEqual(want(v.sched.Summary()), countsOf(p)) },
		3*time.Second, 50*time.Millisecond, "the overview's counts after the flips: %v, the scheduler's: %v", countsOf(p), v.sched.Summary())
	p.wait(8*time.Second, `document.getElementById('stat-p99').dataset.value !== undefined`)
	t.Logf("overview: %s probes/s, lag p50 %s, p99 %s", p.text("#stat-rate"), p.text("#stat-p50"), p.text("#stat-p99"))
	p.screenshot("overview.png", false)
	assert.Empty(t, p.unlabelled(), "the overview")

	// the table: unhealthy first, in pages
	after(p, func() { p.hash("#/instances") })
	want := list(t, v.URL, "sort=status&limit=50")
	assert.Equal(t, want.ids(), rows(p))
	statuses := eval[[]string](p, `[...document.querySelectorAll('#rows tr[data-id]')].map(r => r.dataset.status)`)
	assert.Equal(t, slices.Repeat([]string{"unhealthy"}, 50), statuses)
	p.screenshot("instances.png", false)
	assert.Empty(t, p.unlabelled(), "the instance table")
	cursors := []string{""}
	for i := range 3 {
		cursors = append(cursors, want.NextCursor)
		if i == 0 { // by keyboard
			after(p, func() { p.do(chromedp.Focus(chromedp.ID("next")), chromedp.KeyEvent("\r")) })
		} else {
			after(p, func() { p.do(chromedp.Click(chromedp.ID("next"))) })
		}
		want = list(t, v.URL, "sort=status&limit=50&cursor="+want.NextCursor)
		assert.Equal(t, want.ids(), rows(p))
	}
	after(p, func() { p.do(chromedp.Click(chromedp.ID("prev"))) })
	assert.Equal(t, list(t, v.URL, "sort=status&limit=50&cursor="+cursors[2]).ids(), rows(p))
	assert.Contains(t, p.text("#list-status"), "Page 3: 101–150 of 100,000.")

	// filters: an id prefix, then a status and a label with it
	p.do(chromedp.SendKeys(chromedp.ID("f-prefix"), "vm-0123"))
	showing(p, list(t, v.URL, "sort=status&limit=50&prefix=vm-0123").ids())
	after(p, func() { p.do(chromedp.Click(chromedp.CSS(`input[name=status][value=healthy]`))) })
	p.do(chromedp.SendKeys(chromedp.ID("f-label"), "service=db"))
	showing(p, list(t, v.URL, "sort=status&limit=50&prefix=vm-0123&status=healthy&label=service%3Ddb").ids())
	got := rows(p)
	require.NotEmpty(t, got)
	for _, id := range got {
		assert.True(t, strings.HasPrefix(id, "vm-0123"), id)
	}
	assert.Contains(t, eval[string](p, `location.hash`), "prefix=vm-0123")

	// the orders by time in status, 200 rows a page
	for _, order := range []string{"since", "-since", "id"} {
		after(p, func() { p.hash("#/instances?sort=" + url.QueryEscape(order) + "&limit=200") })
		first := list(t, v.URL, "sort="+url.QueryEscape(order)+"&limit=200")
		assert.Equal(t, first.ids(), rows(p), order)
		after(p, func() { p.do(chromedp.Click(chromedp.ID("next"))) })
		assert.Equal(t, list(t, v.URL, "sort="+url.QueryEscape(order)+"&limit=200&cursor="+first.NextCursor).ids(), rows(p), order)
	}

	// pages are rendered within 300 ms of their response
	var times []float64
	for _, tm := range p.timings() {
		if tm.View != "instances" {
			continue
		}
		times = append(times, tm.Render)
		t.Logf("page of %3d rows: headers after %6.1f ms, the body %5.1f ms later; rendered %5.1f ms after it arrived (JSON %4.1f ms, DOM %4.1f ms)",
			tm.Rows, tm.Server, tm.Body, tm.Render, tm.Parse, tm.Build)
		// the page's own work, strictly; the wall time to the frame also
		// holds whatever else the machine runs (make test runs packages side
		// by side, under the race detector), so its median is what is held
		assert.Less(t, tm.Parse+tm.Build, 300.0, "a page built within 300 ms of its response")
	}
	require.GreaterOrEqual(t, len(times), 14)
	slices.Sort(times)
	t.Logf("render after the response: median %.1f ms, max %.1f ms", times[len(times)/2], times[len(times)-1])
	assert.Less(t, times[len(times)/2], 300.0, "pages rendered within 300 ms of their response")

	// a narrow screen: cards, no sideways scrolling
	p.do(chromedp.EmulateViewport(390, 844))
	after(p, func() { p.hash("#/instances?status=unhealthy&limit=25") })
	assert.True(t, eval[bool](p, `document.documentElement.scrollWidth <= window.innerWidth`), "the page fits a narrow screen")
	p.screenshot("instances-narrow.png", false)
}
