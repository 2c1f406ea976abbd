package api

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

func TestPatchMergesIntoTheCurrentSpec(t *testing.T) {
	srv, _ := server(t, Options{})
	port := tcpTarget(t)
	u := srv.URL + "/v1/instances/vm-1"
	code, _ := call(t, "PUT", u, "application/json", `{"name":"web-1","state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":`+port+`},"failure_threshold":5}}`)
	require.Equal(t, http.StatusCreated, code)

	// a field of the policy: the rest of the policy stays
	code, out := call(t, "PATCH", u, "application/merge-patch+json", `{"health_check":{"interval":"30s"}}`)
	require.Equal(t, http.StatusOK, code, out)
	hc := out["health_check"].(map[string]any)
	assert.Equal(t, "30s", hc["interval"])
	assert.Equal(t, float64(5), hc["failure_threshold"])
	assert.Equal(t, "web-1", out["name"])
	assert.NotContains(t, out["health_status"], "history")

	// the lifecycle, with plain application/json
	code, out = call(t, "PATCH", u, "application/json", `{"state":"Stopped"}`)
	require.Equal(t, http.StatusOK, code, out)
	assert.Equal(t, "Stopped", out["state"])
	assert.Equal(t, "unknown", out["health_status"].(map[string]any)["status"])

	// null removes a member: no name, and no policy at all means disabled
	code, out = call(t, "PATCH", u, "application/merge-patch+json", `{"name":null,"health_check":null}`)
	require.Equal(t, http.StatusOK, code, out)
	assert.NotContains(t, out, "name")
	assert.NotContains(t, out, "health_check")
	assert.Equal(t, "disabled", out["health_status"].(map[string]any)["status"])

	// switching probe type needs the old block removed; the error says which
	code, out = call(t, "PATCH", u, "application/merge-patch+json", `{"health_check":{"http":{"port":`+port+`}}}`)
	require.Equal(t, http.StatusOK, code, out)
	assert.Equal(t, "http", out["health_check"].(map[string]any)["type"])
	code, out = call(t, "PATCH", u, "application/merge-patch+json", `{"state":"Running","health_check":{"tcp":{"port":`+port+`}}}`)
	require.Equal(t, http.StatusBadRequest, code, out)
	code, out = call(t, "PATCH", u, "application/merge-patch+json", `{"health_check":{"type":"tcp","http":null,"tcp":{"port":`+port+`}}}`)
	require.Equal(t, http.StatusOK, code, out)
	assert.Equal(t, "tcp", out["health_check"].(map[string]any)["type"])
	assert.Equal(t, "Stopped", out["state"], "the rejected patch changed nothing")
}

func TestTokenGuardsEverythingButProcessProbes(t *testing.T) {
	srv, _ := server(t, Options{Token: "s3cret", Metrics: NewMetrics()})
	for _, path := range []string{"/v1/summary", "/v1/instances", "/v1/instances/vm-1", "/v1/events", "/metrics", "/v1/openapi.json"} {
		for _, auth := range []string{"", "Bearer wrong", "Bearer s3cre", "Basic s3cret", "s3cret"} {
			code, out := call(t, "GET", srv.URL+path, "", "", "Authorization", auth)
			assert.Equal(t, http.StatusUnauthorized, code, "%s with %q", path, auth)
			assert.Equal(t, "unauthorized", out["error"].(map[string]any)["code"], path)
		}
	}
	code, _ := call(t, "GET", srv.URL+"/v1/summary", "", "", "Authorization", "Bearer s3cret")
	assert.Equal(t, http.StatusOK, code)
	code, _ = call(t, "GET", srv.URL+"/healthz", "", "")
	assert.Equal(t, http.StatusOK, code)
	code, _ = call(t, "GET", srv.URL+"/readyz", "", "")
	assert.Equal(t, http.StatusOK, code)
	// an unknown route answers 401 too, so it reveals nothing
	code, _ = call(t, "GET", srv.URL+"/v2/x", "", "")
	assert.Equal(t, http.StatusUnauthorized, code)
}

func TestMetricsExposeProbesStatusesAndTransitions(t *testing.T) {
	m := NewMetrics()
	s, err := actors.New(context.Background(), actors.WithObserver(m))
	require.NoError(t, err)
	srv := httptest.NewServer(New(s, Options{Metrics: m, Behind: s.Behind}))
	defer func() { srv.Close(); require.NoError(t, s.Close(context.Background())) }()
	port := tcpTarget(t)
	code, _ := call(t, "PUT", srv.URL+"/v1/instances/vm-1", "application/json", `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":`+port+`}}}`)
	require.Equal(t, http.StatusCreated, code)
	code, out := call(t, "POST", srv.URL+"/v1/instances/vm-1/probe", "", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "healthy", out["health_status"].(map[string]any)["status"])

	var text string
	require.Eventually(t, func() bool {
		resp, err := http.Get(srv.URL + "/metrics")
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		text = string(b)
		return strings.Contains(text, `vigil_transitions_total{from="starting",to="healthy"} 1`)
	}, 5*time.Second, 20*time.Millisecond, "transition counted")
	for _, want := range []string{
		`vigil_probes_total{outcome="success",reason="",type="tcp"}`,
		`vigil_probe_duration_seconds_count{type="tcp"}`,
		`vigil_schedule_lag_seconds_count`,
		`vigil_instances{status="healthy"} 1`,
		`vigil_instances{status="unhealthy"} 0`,
		`vigil_probes_in_flight 0`,
		`vigil_probing_behind 0`,
		`go_goroutines`,
	} {
		assert.Contains(t, text, want)
	}
}

// blockingTarget is an HTTP target whose handler waits until released.
func blockingTarget(t *testing.T) (port string, release func()) {
	t.Helper()
	stop := make(chan struct{})
	var once sync.Once
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-stop:
		case <-r.Context().Done():
		}
	}))
	release = func() { once.Do(func() { close(stop) }) }
	t.Cleanup(func() { release(); ts.Close() })
	return ts.URL[strings.LastIndex(ts.URL, ":")+1:], release
}

func TestActorQueryCapAnswers503AndLeavesReadsAlone(t *testing.T) {
	srv, _ := server(t, Options{MaxActorQueries: 1, QueueWait: 50 * time.Millisecond})
	port, release := blockingTarget(t)
	code, _ := call(t, "PUT", srv.URL+"/v1/instances/vm-1", "application/json",
		`{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"http":{"port":`+port+`},"interval":"1m","timeout":"5s"}}`)
	require.Equal(t, http.StatusCreated, code)

	done := make(chan int, 1)
	go func() {
		resp, err := http.Post(srv.URL+"/v1/instances/vm-1/probe", "", nil)
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	// the probe-now holds the only slot until its target answers
	require.Eventually(t, func() bool {
		code, _ := call(t, "GET", srv.URL+"/v1/instances/vm-1", "", "")
		return code == http.StatusServiceUnavailable
	}, 5*time.Second, 10*time.Millisecond)
	code, out := call(t, "GET", srv.URL+"/v1/instances/vm-1/health", "", "")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "unavailable", out["error"].(map[string]any)["code"])
	// list and summary read published values and are not capped
	code, _ = call(t, "GET", srv.URL+"/v1/summary", "", "")
	assert.Equal(t, http.StatusOK, code)
	code, _ = call(t, "GET", srv.URL+"/v1/instances", "", "")
	assert.Equal(t, http.StatusOK, code)

	release()
	assert.Equal(t, http.StatusOK, <-done)
	code, _ = call(t, "GET", srv.URL+"/v1/instances/vm-1", "", "")
	assert.Equal(t, http.StatusOK, code, "the slot was given back")
}

// panicky is a registry whose summary panics.
type panicky struct{ Registry }

func (panicky) Summary() map[health.Status]int { panic("summary exploded") }

func TestHandlerPanicIsAJSON500(t *testing.T) {
	srv, _ := server(t, Options{}, func(s *actors.Scheduler) Registry { return panicky{s} })
	code, out := call(t, "GET", srv.URL+"/v1/summary", "", "")
	assert.Equal(t, http.StatusInternalServerError, code)
	assert.Equal(t, "internal", out["error"].(map[string]any)["code"])
	code, _ = call(t, "GET", srv.URL+"/healthz", "", "")
	assert.Equal(t, http.StatusOK, code, "the server lives on")
}

func TestRequestLogNeverHasTheToken(t *testing.T) {
	var logs strings.Builder
	var mu sync.Mutex
	w := zerolog.SyncWriter(writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return logs.Write(p) }))
	srv, _ := server(t, Options{Token: "s3cret", Log: zerolog.New(w)})
	call(t, "GET", srv.URL+"/v1/summary?x=1", "", "", "Authorization", "Bearer s3cret")
	call(t, "GET", srv.URL+"/v1/summary", "", "", "Authorization", "Bearer s3cret-wrong")
	mu.Lock()
	defer mu.Unlock()
	assert.Contains(t, logs.String(), `"path":"/v1/summary"`)
	assert.Contains(t, logs.String(), `"status":401`)
	assert.Contains(t, logs.String(), `"duration_ms":`)
	assert.Contains(t, logs.String(), `"error_code":"unauthorized"`)
	assert.NotContains(t, logs.String(), "s3cret")
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
