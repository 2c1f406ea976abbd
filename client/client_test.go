package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/api"
	"github.com/vigilhq/vigil/client"
)

const token = "client-test-token"

// serve runs the real API over a real scheduler on a loopback port.
func serve(t *testing.T) (*httptest.Server, *actors.Scheduler) {
	t.Helper()
	s, err := actors.New(context.Background())
	require.NoError(t, err)
	srv := httptest.NewServer(api.New(s, api.Options{Log: zerolog.Nop(), Token: token, Metrics: api.NewMetrics()}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		require.NoError(t, s.Close(context.Background()))
	})
	return srv, s
}

// target is a TCP listener that accepts while up.
type target struct {
	mu   sync.Mutex
	l    net.Listener
	port int
}

func newTarget(t *testing.T) *target {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	tg := &target{l: l, port: l.Addr().(*net.TCPAddr).Port}
	t.Cleanup(tg.down)
	return tg
}

func (tg *target) down() {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	if tg.l != nil {
		_ = tg.l.Close()
		tg.l = nil
	}
}

func (tg *target) up(t *testing.T) {
	t.Helper()
	tg.mu.Lock()
	defer tg.mu.Unlock()
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(tg.port))
	require.NoError(t, err)
	tg.l = l
}

func ptr[T any](v T) *T { return &v }

func tcpInstance(port int, state client.Lifecycle) client.InstanceInput {
	return client.InstanceInput{State: state, Network: &client.Network{Ip: "127.0.0.1"},
		HealthCheck: &client.HealthCheck{Tcp: &client.TCPCheck{Port: port}, StartPeriod: ptr("0s"), FailureThreshold: ptr(1)}}
}

func TestEveryRoute(t *testing.T) {
	srv, _ := serve(t)
	ctx := context.Background()
	c, err := client.New(srv.URL, client.WithToken(token))
	require.NoError(t, err)
	tg := newTarget(t)

	require.NoError(t, c.Healthz(ctx))
	require.NoError(t, c.Ready(ctx))

	inst, created, err := c.Put(ctx, "vm-1", tcpInstance(tg.port, client.LifecycleRunning))
	require.NoError(t, err)
	assert.True(t, created)
	assert.Equal(t, "vm-1", inst.Id)
	assert.Equal(t, "2s", *inst.HealthCheck.StartInterval, "normalized: derived from the default interval")
	_, created, err = c.Put(ctx, "vm-1", tcpInstance(tg.port, client.LifecycleRunning))
	require.NoError(t, err)
	assert.False(t, created)

	pr, err := c.Probe(ctx, "vm-1")
	require.NoError(t, err)
	assert.Equal(t, client.ResultOutcome("success"), pr.Result.Outcome)
	assert.Equal(t, client.Status("healthy"), pr.HealthStatus.Status)

	hs, err := c.Health(ctx, "vm-1")
	require.NoError(t, err)
	require.NotNil(t, hs.History)
	assert.NotEmpty(t, *hs.History)

	patched := time.Now()
	inst, err = c.Patch(ctx, "vm-1", map[string]any{"name": "web-1", "health_check": map[string]any{"interval": "20s"}})
	require.NoError(t, err)
	assert.Equal(t, "web-1", *inst.Name)
	assert.Equal(t, "20s", *inst.HealthCheck.Interval)
	assert.Equal(t, "4s", *inst.HealthCheck.StartInterval)

	got, err := c.Get(ctx, "vm-1")
	require.NoError(t, err)
	// a new policy opens a fresh window, starting, and probes at once: the
	// GET may come after that probe has made it healthy again
	assert.Contains(t, []client.Status{"starting", "healthy"}, got.HealthStatus.Status)
	require.NotNil(t, got.HealthStatus.Since)
	assert.False(t, got.HealthStatus.Since.Before(patched), "a new policy opens a fresh window: since %v", got.HealthStatus.Since)

	for i := range 5 {
		_, _, err := c.Put(ctx, fmt.Sprintf("vm-stopped-%d", i), tcpInstance(tg.port, client.LifecycleStopped))
		require.NoError(t, err)
	}
	page, err := c.List(ctx, client.ListOptions{Limit: 2})
	require.NoError(t, err)
	assert.Len(t, page.Instances, 2)
	assert.NotEmpty(t, page.NextCursor)
	var ids []string
	for in, err := range c.All(ctx, client.ListOptions{Limit: 2, Status: []client.Status{"unknown"}}) {
		require.NoError(t, err)
		ids = append(ids, in.Id)
	}
	assert.Equal(t, []string{"vm-stopped-0", "vm-stopped-1", "vm-stopped-2", "vm-stopped-3", "vm-stopped-4"}, ids)

	_, err = c.Probe(ctx, "vm-1")
	require.NoError(t, err)
	sum, err := c.Summary(ctx)
	require.NoError(t, err)
	assert.Equal(t, 6, sum.Total)
	assert.Equal(t, 1, sum.Healthy)
	assert.Equal(t, 5, sum.Unknown)

	doc, err := c.OpenAPI(ctx)
	require.NoError(t, err)
	assert.Contains(t, string(doc), `"openapi"`)
	m, err := c.Metrics(ctx)
	require.NoError(t, err)
	assert.Contains(t, string(m), "vigil_")
	status, h, err := c.Head(ctx, "/v1/summary")
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, "application/json", h.Get("Content-Type"))

	require.NoError(t, c.Delete(ctx, "vm-1"))
	_, err = c.Get(ctx, "vm-1")
	assert.True(t, client.IsNotFound(err), "%v", err)
	err = c.Delete(ctx, "vm-1")
	assert.True(t, client.IsNotFound(err), "%v", err)
}

func TestErrorsAreValues(t *testing.T) {
	srv, _ := serve(t)
	ctx := context.Background()
	c, err := client.New(srv.URL, client.WithToken(token))
	require.NoError(t, err)

	in := tcpInstance(9, client.LifecycleRunning)
	in.HealthCheck.Timeout = ptr("1m")
	_, _, err = c.Put(ctx, "vm-1", in)
	var ae *client.Error
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, http.StatusBadRequest, ae.Status)
	assert.Equal(t, "invalid_request", ae.Code)
	assert.Equal(t, "health_check.timeout", ae.Field)
	assert.Equal(t, "health_check.timeout must be less than or equal to health_check.interval", ae.Message)

	_, err = c.Patch(ctx, "vm-9", map[string]any{"state": "Stopped"})
	assert.True(t, client.IsNotFound(err))
	_, err = c.Get(ctx, "a b")
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "id", ae.Field)

	anon, err := client.New(srv.URL)
	require.NoError(t, err)
	_, err = anon.Summary(ctx)
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, http.StatusUnauthorized, ae.Status)
	assert.Equal(t, "unauthorized", ae.Code)
}

// TestEventsResumeAfterTheServerClosesTheStream drops every connection
// while transitions happen: the iterator reconnects with the last id it
// yielded and misses nothing, repeats nothing.
func TestEventsResumeAfterTheServerClosesTheStream(t *testing.T) {
	srv, s := serve(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.New(srv.URL, client.WithToken(token), client.WithRetry(20*time.Millisecond))
	require.NoError(t, err)
	tg := newTarget(t)
	_, _, err = c.Put(ctx, "vm-1", tcpInstance(tg.port, client.LifecycleRunning))
	require.NoError(t, err)
	pr, err := c.Probe(ctx, "vm-1") // joins the first probe: healthy before the flips
	require.NoError(t, err)
	require.Equal(t, client.Status("healthy"), pr.HealthStatus.Status)

	events := make(chan client.StreamEvent, 100)
	go func() {
		defer close(events)
		for ev, err := range c.Events(ctx, client.EventsOptions{After: "0"}) {
			if err != nil {
				continue // a dropped connection; the iterator retries
			}
			events <- ev
		}
	}()
	// each flip of the target is one transition; the server drops every
	// stream between flips
	const flips = 6
	for i := range flips {
		if i%2 == 0 {
			tg.down()
		} else {
			tg.up(t)
		}
		_, _, err := s.ProbeNow(ctx, "vm-1")
		require.NoError(t, err)
		srv.CloseClientConnections()
	}
	var seqs []int64
	var kinds []string
	for len(seqs) < flips+3 { // registered, the first probe's healthy, the flips, and flapping at the sixth change
		select {
		case ev, ok := <-events:
			require.True(t, ok)
			require.NotNil(t, ev.Transition)
			require.Equal(t, strconv.FormatInt(ev.Transition.Seq, 10), ev.ID)
			seqs = append(seqs, ev.Transition.Seq)
			kinds = append(kinds, ev.Type)
		case <-ctx.Done():
			require.FailNow(t, "events did not arrive", "got %v", seqs)
		}
	}
	for i, seq := range seqs {
		assert.Equal(t, int64(i+1), seq, "every event once, in order: %v", seqs)
	}
	// six changes of health within ten intervals (the first probe's and five
	// flips): the seventh event tells of flapping
	assert.Equal(t, "flapping", kinds[7], "%v", kinds)
	assert.Equal(t, []string{"transition"}, slices.Compact(slices.Delete(slices.Clone(kinds), 7, 8)))
}

func TestUnixSocket(t *testing.T) {
	s, err := actors.New(context.Background())
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close(context.Background())) }()
	dir, err := os.MkdirTemp("/tmp", "vc") // Unix socket paths stay under 108 bytes
	require.NoError(t, err)
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "api.sock")
	l, err := api.Listen(api.UnixPrefix + path)
	require.NoError(t, err)
	srv := api.NewServer(api.New(s, api.Options{Log: zerolog.Nop()}))
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()

	c, err := client.New(api.UnixPrefix + path)
	require.NoError(t, err)
	sum, err := c.Summary(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 0, sum.Total)

	// a second server on the same socket is refused while the first serves
	_, err = api.Listen(api.UnixPrefix + path)
	assert.True(t, errors.Is(err, api.ErrSocketInUse), "%v", err)
}
