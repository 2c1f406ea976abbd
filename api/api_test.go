package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/input"
)

// server runs the API over a real scheduler on a loopback port. wrap, when
// set, stands between the API and the scheduler.
func server(t *testing.T, opt Options, wrap ...func(*actors.Scheduler) Registry) (*httptest.Server, *actors.Scheduler) {
	t.Helper()
	s, err := actors.New(context.Background(), actors.WithAskTimeout(2*time.Second))
	require.NoError(t, err)
	var reg Registry = s
	for _, w := range wrap {
		reg = w(s)
	}
	srv := httptest.NewServer(New(reg, opt))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		require.NoError(t, s.Close(context.Background()))
	})
	return srv, s
}

// call makes one request and decodes a JSON answer; every answer is checked
// against the OpenAPI document.
func call(t *testing.T, method, url, ctype, body string, headers ...string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	conforms(t, req, resp, b)
	var out map[string]any
	if len(b) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		require.NoError(t, json.Unmarshal(b, &out), string(b))
	}
	return resp.StatusCode, out
}

func tcpTarget(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func TestInstanceLifecycleOverHTTP(t *testing.T) {
	srv, _ := server(t, Options{})
	port := tcpTarget(t)
	body := `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":` + port + `}}}`

	code, out := call(t, "PUT", srv.URL+"/v1/instances/vm-1", "application/json", body)
	require.Equal(t, http.StatusCreated, code, out)
	assert.Equal(t, "10s", out["health_check"].(map[string]any)["interval"], "normalized")
	code, _ = call(t, "PUT", srv.URL+"/v1/instances/vm-1", "application/json", body)
	assert.Equal(t, http.StatusOK, code)

	code, out = call(t, "POST", srv.URL+"/v1/instances/vm-1/probe", "", "")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, "success", out["result"].(map[string]any)["outcome"])
	assert.Equal(t, "healthy", out["health_status"].(map[string]any)["status"])

	code, out = call(t, "GET", srv.URL+"/v1/instances/vm-1", "", "")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, "healthy", out["health_status"].(map[string]any)["status"])
	code, out = call(t, "GET", srv.URL+"/v1/instances/vm-1/health", "", "")
	require.Equal(t, http.StatusOK, code)
	assert.NotEmpty(t, out["history"])
	code, out = call(t, "GET", srv.URL+"/v1/instances?status=healthy&limit=10", "", "")
	require.Equal(t, http.StatusOK, code)
	assert.Len(t, out["instances"], 1)
	code, out = call(t, "GET", srv.URL+"/v1/summary", "", "")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, float64(1), out["total"])
	assert.Equal(t, float64(1), out["healthy"])

	code, _ = call(t, "DELETE", srv.URL+"/v1/instances/vm-1", "", "")
	assert.Equal(t, http.StatusNoContent, code)
	code, out = call(t, "GET", srv.URL+"/v1/instances/vm-1", "", "")
	assert.Equal(t, http.StatusNotFound, code)
	assert.Equal(t, "not_found", out["error"].(map[string]any)["code"])

	code, _ = call(t, "GET", srv.URL+"/healthz", "", "")
	assert.Equal(t, http.StatusOK, code)
	code, _ = call(t, "GET", srv.URL+"/readyz", "", "")
	assert.Equal(t, http.StatusOK, code)
}

func TestErrorsOverHTTP(t *testing.T) {
	srv, _ := server(t, Options{})
	u := srv.URL + "/v1/instances/vm-1"
	port := tcpTarget(t)
	code, _ := call(t, "PUT", srv.URL+"/v1/instances/vm-2", "application/json", `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":`+port+`}}}`)
	require.Equal(t, http.StatusCreated, code)
	u2 := srv.URL + "/v1/instances/vm-2"
	for _, tc := range []struct {
		name, method, url, ctype, body string
		status                         int
		code, field                    string
	}{
		{"malformed", "PUT", u, "application/json", `{"state":`, 400, "invalid_request", ""},
		{"wrong type", "PUT", u, "application/json", `{"state":5}`, 400, "invalid_request", "state"},
		{"unknown field", "PUT", u, "application/json", `{"state":"Running","color":"red"}`, 400, "invalid_request", "color"},
		{"rule", "PUT", u, "application/json", `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":1},"interval":"5s","timeout":"6s"}}`, 400, "invalid_request", "health_check.timeout"},
		{"bad id", "PUT", srv.URL + "/v1/instances/a%20b", "application/json", `{"state":"Running"}`, 400, "invalid_request", "id"},
		{"too large", "PUT", u, "application/json", `{"name":"` + strings.Repeat("x", 1<<20) + `"}`, 413, "too_large", ""},
		{"media type", "PUT", u, "text/plain", `{}`, 415, "unsupported_media_type", ""},
		{"not found", "DELETE", u, "", "", 404, "not_found", ""},
		{"method", "PATCH", srv.URL + "/v1/summary", "", "", 405, "method_not_allowed", ""},
		{"no route", "GET", srv.URL + "/v2/nothing", "", "", 404, "not_found", ""},
		{"not an object", "PUT", u, "application/json", `[1,2]`, 400, "invalid_request", ""},
		{"trailing data", "PUT", u, "application/json", `{"state":"Running"} {}`, 400, "invalid_request", ""},
		{"nested unknown field", "PUT", u, "application/json", `{"state":"Running","health_check":{"tcp":{"port":1,"host":"x"}}}`, 400, "invalid_request", "health_check.tcp.host"},
		{"nested wrong type", "PUT", u, "application/json", `{"state":"Running","health_check":{"failure_threshold":"3"}}`, 400, "invalid_request", "health_check.failure_threshold"},
		{"missing state", "PUT", u, "application/json", `{}`, 400, "invalid_request", "state"},
		{"bad lifecycle", "PUT", u, "application/json", `{"state":"Exploded"}`, 400, "invalid_request", "state"},
		{"patch missing", "PATCH", u, "application/merge-patch+json", `{"state":"Stopped"}`, 404, "not_found", ""},
		{"patch media type", "PATCH", u2, "application/json-patch+json", `[]`, 415, "unsupported_media_type", ""},
		{"patch not an object", "PATCH", u2, "application/merge-patch+json", `"Stopped"`, 400, "invalid_request", ""},
		{"patch malformed", "PATCH", u2, "application/merge-patch+json", `{"state":`, 400, "invalid_request", ""},
		{"patch id", "PATCH", u2, "application/merge-patch+json", `{"id":"other"}`, 400, "invalid_request", "id"},
		{"patch unknown field", "PATCH", u2, "application/merge-patch+json", `{"colour":"red"}`, 400, "invalid_request", "colour"},
		{"patch wrong type", "PATCH", u2, "application/merge-patch+json", `{"health_check":{"interval":5}}`, 400, "invalid_request", "health_check.interval"},
		{"patch rule", "PATCH", u2, "application/merge-patch+json", `{"health_check":{"timeout":"1m"}}`, 400, "invalid_request", "health_check.timeout"},
		{"patch two blocks", "PATCH", u2, "application/merge-patch+json", `{"health_check":{"type":null,"http":{"port":80}}}`, 400, "invalid_request", "health_check.tcp"},
		{"patch too large", "PATCH", u2, "application/json", `{"name":"` + strings.Repeat("x", 1<<20) + `"}`, 413, "too_large", ""},
		{"health missing", "GET", u + "/health", "", "", 404, "not_found", ""},
		{"probe missing", "POST", u + "/probe", "", "", 404, "not_found", ""},
		{"bad since", "GET", srv.URL + "/v1/events?since=yesterday", "", "", 400, "invalid_request", "since"},
		{"bad instance filter", "GET", srv.URL + "/v1/events?instance_id=a%20b", "", "", 400, "invalid_request", "instance_id"},
		{"bad limit", "GET", srv.URL + "/v1/instances?limit=5000", "", "", 400, "invalid_request", "limit"},
		{"bad status", "GET", srv.URL + "/v1/instances?status=sick", "", "", 400, "invalid_request", "status"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := call(t, tc.method, tc.url, tc.ctype, tc.body)
			assert.Equal(t, tc.status, code, out)
			e := out["error"].(map[string]any)
			assert.Equal(t, tc.code, e["code"])
			if tc.field != "" {
				assert.Equal(t, tc.field, e["field"])
			}
			assert.NotEmpty(t, e["message"])
		})
	}
	// nothing invalid reached the actor: vm-2 is as registered
	code, out := call(t, "GET", u2, "", "")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, "Running", out["state"])
	assert.Equal(t, "10s", out["health_check"].(map[string]any)["interval"])
}

// FuzzDecode checks a PUT body as the handler reads it: refused with an
// error naming its field (the whole body's, or one inside it), or a spec
// that normalizes or fails naming a field.
func FuzzDecode(f *testing.F) {
	f.Add(`{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"http":{"port":80,"expected_status":"200-299"}}}`)
	f.Add(`{"state":"Running","vsock":{"cid":3},"health_check":{"exec":{"command":["true"]}}}`)
	f.Add(`{"health_check":{"tcp":{"port":1e9}}}`)
	srv := New(nil, Options{Log: zerolog.Nop()})
	f.Fuzz(func(t *testing.T, body string) {
		req := httptest.NewRequest("PUT", "/v1/instances/x", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		c := srv.NewContext(req, httptest.NewRecorder())
		var in health.InstanceSpec
		err := decode(c, &in)
		if err != nil {
			var ie *input.Error
			var ae *apiError
			switch {
			case errors.As(err, &ie):
				require.Contains(t, ie.Message, ie.Field)
			case errors.As(err, &ae):
				require.NotEmpty(t, ae.detail.Message)
			default:
				t.Fatalf("%T: %v", err, err)
			}
			return
		}
		if _, err := in.Normalize("x"); err != nil {
			var fe *health.FieldError
			require.True(t, errors.As(err, &fe), "%T: %v", err, err)
			require.NotEmpty(t, fe.Field)
		}
	})
}
