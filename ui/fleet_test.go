package ui_test

import (
	"context"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/api"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/ui"
)

// threeNodes is node n1 of a fleet of three whose n3 is down, as the API
// sees a fleet (api.Fleet): n1's instances are the scheduler's, n2's and
// n3's are counts only. The fleet itself is tested with etcd and real
// nodes in fleet/; this is the page's view of one.
type threeNodes struct {
	*actors.Scheduler
	self string // n1's API address
	down time.Time
}

var otherNodes = map[string]map[string]int{
	"n2": {"total": 40, "healthy": 38, "unhealthy": 2},
	"n3": {"total": 25, "unknown": 25},
}

func (f *threeNodes) local() map[string]int {
	out := map[string]int{"total": 0}
	for st, n := range f.Summary() {
		out[string(st)] = n
		out["total"] += n
	}
	return out
}

func (f *threeNodes) Nodes(context.Context) (any, error) {
	node := func(name, addr string, up bool, n int, sum map[string]int) map[string]any {
		return map[string]any{"name": name, "peer_address": "127.0.0.1:7946", "api_address": addr, "up": up,
			"since": f.down, "instances": n, "summary": sum}
	}
	return map[string]any{"nodes": []any{
		node("n1", f.self, true, f.Len(), f.local()),
		node("n2", "127.0.0.2:8484", true, 40, otherNodes["n2"]),
		node("n3", "127.0.0.3:8484", false, 25, otherNodes["n3"]),
	}}, nil
}

func (f *threeNodes) FleetSummary(context.Context) (any, error) {
	nodes := map[string]map[string]int{"n1": f.local(), "n2": otherNodes["n2"], "n3": otherNodes["n3"]}
	out := map[string]any{"nodes": nodes}
	for _, k := range []string{"total", "disabled", "unknown", "starting", "healthy", "unhealthy"} {
		sum := 0
		for _, c := range nodes {
			sum += c[k]
		}
		out[k] = sum
	}
	return out, nil
}

func (f *threeNodes) FleetList(_ context.Context, flt actors.Filter, after string, limit int) ([]actors.Info, string, error) {
	page, next := f.List(flt, after, limit)
	for i := range page {
		page[i].Node = "n1"
	}
	return page, next, nil
}

func (f *threeNodes) Move(context.Context, string, string) (actors.Info, error) {
	return actors.Info{}, actors.ErrNotFound
}

// FleetEvents starts with n3's node_down, then follows n1's transitions.
func (f *threeNodes) FleetEvents(ctx context.Context, _ string, keepAlive time.Duration, send func(id, event string, data any) error) error {
	sub := f.Subscribe(256)
	defer sub.Close()
	if err := send("c0", "node_down", map[string]any{"node": "n3", "at": f.down}); err != nil {
		return err
	}
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for {
		select {
		case ev, ok := <-sub.C:
			if !ok {
				return nil
			}
			ev.Node = "n1"
			if err := send("c"+strconv.FormatUint(ev.Seq, 10), "transition", ev); err != nil {
				return err
			}
		case <-tick.C:
			if err := send("", "", "keepalive"); err != nil {
				return err
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// TestDashboardOfAFleet: in a fleet the page counts the fleet's instances
// and each node's, names the nodes that are down, lists with scope=fleet
// and follows the fleet's stream.
func TestDashboardOfAFleet(t *testing.T) {
	s, err := actors.New(context.Background())
	require.NoError(t, err)
	fleet := &threeNodes{Scheduler: s, down: time.Now().Add(-time.Minute).UTC()}
	shutdown := make(chan struct{})
	srv := httptest.NewUnstartedServer(api.New(fleet, api.Options{UI: ui.Handler(), Shutdown: shutdown}))
	srv.Start()
	t.Cleanup(func() {
		close(shutdown)
		srv.CloseClientConnections()
		srv.Close()
		require.NoError(t, s.Close(context.Background()))
	})
	u, err := url.Parse(srv.URL)
	require.NoError(t, err)
	fleet.self = u.Host
	ctx := context.Background()
	for _, id := range []string{"vm-1", "vm-2"} {
		_, _, err := s.Put(ctx, id, health.InstanceSpec{State: health.Stopped})
		require.NoError(t, err)
	}

	p := open(t, srv.URL, "", 1280, 900)
	p.wait(5*time.Second, `window.vigil.ready && document.querySelector('[data-count=total]') !== null &&
		document.querySelectorAll('#nodes tr[data-node]').length === 3`)
	assert.Equal(t, map[string]string{"total": "67", "healthy": "38", "unhealthy": "2", "unknown": "25", "starting": "0", "disabled": "2"}, countsOf(p))
	assert.Contains(t, p.text("#nodes-down"), "1 node down: n3")
	assert.Contains(t, p.text("#scope"), "Fleet · 3 nodes · 1 down")
	assert.Contains(t, p.text("#feed"), "Node n3 is down")

	// a transition on n1 moves the fleet's counts and n1's
	_, _, err = s.Put(ctx, "vm-3", health.InstanceSpec{State: health.Running})
	require.NoError(t, err)
	p.wait(2*time.Second, `document.querySelector('#feed li[data-instance="vm-3"][data-node="n1"]') !== null &&
		document.querySelector('[data-count=total]').textContent === '68'`)
	assert.Contains(t, p.text(`#nodes tr[data-node="n1"]`), "3")

	// the table lists the fleet, with each instance's node, by id or status
	p.hash("#/instances")
	p.wait(5*time.Second, `document.querySelectorAll('#rows tr[data-id]').length === 3`)
	assert.Contains(t, p.text("#instances"), "Node")
	assert.Equal(t, []string{"status", "id"}, eval[[]string](p, `[...document.querySelectorAll('#f-sort option')].map(o => o.value)`))
}
