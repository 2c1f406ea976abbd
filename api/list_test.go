package api

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// prefixBlindFleet is a fleet of one whose FleetList, like the fleet's
// catalog, knows no prefix: the API applies it.
type prefixBlindFleet struct{ *actors.Scheduler }

func (prefixBlindFleet) Nodes(context.Context) (any, error) {
	return map[string]any{"nodes": []any{}}, nil
}
func (prefixBlindFleet) FleetSummary(context.Context) (any, error) { return map[string]any{}, nil }
func (prefixBlindFleet) Move(context.Context, string, string) (actors.Info, error) {
	return actors.Info{}, actors.ErrNotFound
}
func (prefixBlindFleet) FleetEvents(context.Context, string, time.Duration, func(id, event string, data any) error) error {
	return nil
}
func (f prefixBlindFleet) FleetList(_ context.Context, flt actors.Filter, after string, limit int) ([]actors.Info, string, error) {
	flt.Prefix = ""
	page, next := f.List(flt, after, limit)
	return page, next, nil
}

// listed is one instance as a list shows it.
type listed struct {
	id     string
	status health.Status
	since  time.Time
}

// mixedFleet registers 120 instances, a-000… and b-000…, a quarter each
// unknown (Stopped), disabled, healthy and unhealthy, and waits for their
// first probes.
func mixedFleet(t *testing.T, s *actors.Scheduler) {
	t.Helper()
	live, err := strconv.Atoi(tcpTarget(t))
	require.NoError(t, err)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadPort := dead.Addr().(*net.TCPAddr).Port
	require.NoError(t, dead.Close())
	one := 1
	ctx := context.Background()
	for i := range 120 {
		spec := health.InstanceSpec{State: health.Running, Network: &health.Network{IP: "127.0.0.1"},
			Labels: map[string]string{"even": strconv.FormatBool(i%2 == 0)}}
		check := &health.PolicySpec{Interval: "1h", Timeout: "1s", StartPeriod: "0s", FailureThreshold: &one, TCP: &health.TCPSpec{Port: live}}
		switch i % 4 {
		case 0:
			spec.State, spec.HealthCheck = health.Stopped, check
		case 2:
			spec.HealthCheck = check
		case 3:
			check.TCP.Port, spec.HealthCheck = deadPort, check
		}
		_, _, err := s.Put(ctx, fmt.Sprintf("%c-%03d", 'a'+i%2, i/2), spec)
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool {
		sum := s.Summary()
		return sum[health.StatusHealthy] == 30 && sum[health.StatusUnhealthy] == 30
	}, 10*time.Second, 10*time.Millisecond)
}

// pages follows next_cursor from the first page of query and returns every
// instance in the order given; no page but a lone first one is empty.
func pages(t *testing.T, base, query string) []listed {
	t.Helper()
	var out []listed
	cursor := ""
	for n := 0; ; n++ {
		q := query + "&cursor=" + url.QueryEscape(cursor)
		code, body := call(t, "GET", base+"/v1/instances?"+q, "", "")
		require.Equal(t, http.StatusOK, code, "%s: %v", q, body)
		items := body["instances"].([]any)
		if n > 0 {
			require.NotEmpty(t, items, "an empty page after a next_cursor: %s", q)
		}
		for _, it := range items {
			m := it.(map[string]any)
			hs := m["health_status"].(map[string]any)
			since, err := time.Parse(time.RFC3339Nano, hs["since"].(string))
			require.NoError(t, err)
			out = append(out, listed{id: m["id"].(string), status: health.Status(hs["status"].(string)), since: since})
		}
		cursor = body["next_cursor"].(string)
		if cursor == "" {
			return out
		}
	}
}

func ids(ls []listed) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.id
	}
	return out
}

func rank(st health.Status) int { return slices.Index(statusOrder, st) }

func TestListPrefixAndOrders(t *testing.T) {
	srv, s := server(t, Options{}, func(s *actors.Scheduler) Registry { return prefixBlindFleet{s} })
	mixedFleet(t, s)
	all := pages(t, srv.URL, "limit=1000")
	require.Len(t, all, 120)

	keep := func(pred func(l listed) bool) []listed {
		var out []listed
		for _, l := range all {
			if pred(l) {
				out = append(out, l)
			}
		}
		return out
	}
	byStatus := func(ls []listed) []listed {
		out := slices.Clone(ls)
		slices.SortStableFunc(out, func(a, b listed) int { return rank(a.status) - rank(b.status) })
		return out
	}
	bySince := func(ls []listed, newest bool) []listed {
		out := slices.Clone(ls)
		slices.SortFunc(out, func(a, b listed) int {
			if c := a.since.Compare(b.since); c != 0 {
				if newest {
					return -c
				}
				return c
			}
			return strings.Compare(a.id, b.id)
		})
		return out
	}
	hasPrefix := func(p string) func(l listed) bool {
		return func(l listed) bool { return strings.HasPrefix(l.id, p) }
	}
	a01 := keep(hasPrefix("a-01"))
	require.Len(t, a01, 10)
	sick := func(l listed) bool {
		return hasPrefix("b-")(l) && (l.status == health.StatusHealthy || l.status == health.StatusUnhealthy)
	}

	for _, tc := range []struct {
		query string
		want  []listed
	}{
		{"prefix=a-01&limit=3", a01},
		{"prefix=a-&limit=6", keep(hasPrefix("a-"))},
		{"prefix=a-059&limit=1", keep(hasPrefix("a-059"))},
		{"prefix=c&limit=5", nil},
		{"prefix=b-&status=healthy,unhealthy&limit=4", keep(sick)},
		{"sort=status&limit=7", byStatus(all)},
		{"sort=status&limit=15&prefix=a-", byStatus(keep(hasPrefix("a-")))},
		{"sort=status&limit=5&prefix=b-&status=healthy,unhealthy", byStatus(keep(sick))},
		{"sort=status&limit=4&label=even=true", byStatus(keep(hasPrefix("a-")))},
		{"sort=since&limit=9", bySince(all, false)},
		{"sort=-since&limit=8", bySince(all, true)},
		{"sort=since&limit=10&prefix=a-01", bySince(a01, false)},
		{"sort=-since&limit=2&status=unhealthy", bySince(keep(func(l listed) bool { return l.status == health.StatusUnhealthy }), true)},
		// the fleet applies the prefix over a catalog that knows none
		{"scope=fleet&prefix=a-01&limit=4", a01},
		{"scope=fleet&prefix=b-&limit=7", keep(hasPrefix("b-"))},
		{"scope=fleet&sort=status&prefix=a-&limit=8", byStatus(keep(hasPrefix("a-")))},
	} {
		t.Run(tc.query, func(t *testing.T) {
			assert.Equal(t, ids(tc.want), ids(pages(t, srv.URL, tc.query)))
		})
	}

	// a cursor belongs to its order; bad values name their parameter
	code, body := call(t, "GET", srv.URL+"/v1/instances?limit=2", "", "")
	require.Equal(t, http.StatusOK, code)
	idCursor := body["next_cursor"].(string)
	code, body = call(t, "GET", srv.URL+"/v1/instances?limit=2&sort=since", "", "")
	require.Equal(t, http.StatusOK, code)
	sinceCursor := body["next_cursor"].(string)
	for _, tc := range []struct{ query, field string }{
		{"sort=status&cursor=" + idCursor, "cursor"},
		{"sort=-since&cursor=" + sinceCursor, "cursor"},
		{"cursor=" + sinceCursor, "cursor"},
		{"sort=name", "sort"},
		{"prefix=a%20b", "prefix"},
		{"prefix=" + strings.Repeat("a", 129), "prefix"},
		{"scope=fleet&sort=since", "sort"},
	} {
		code, body := call(t, "GET", srv.URL+"/v1/instances?"+tc.query, "", "")
		assert.Equal(t, http.StatusBadRequest, code, tc.query)
		assert.Equal(t, tc.field, body["error"].(map[string]any)["field"], tc.query)
	}
}

func TestJustBelow(t *testing.T) {
	for _, p := range []string{"a", "vm-1", "Z", "0", "x.", "-"} {
		below := justBelow(p)
		assert.Less(t, below, p)
		// every id below the prefix is below it too, every id with it above
		for _, id := range []string{p[:len(p)-1], p[:len(p)-1] + string(p[len(p)-1]-1) + "zzzz", p[:len(p)-1] + string(p[len(p)-1]-1)} {
			if id != "" && id < p {
				assert.Less(t, id, below, "%q %q", p, id)
			}
		}
		assert.Greater(t, p+"-", below)
	}
}
