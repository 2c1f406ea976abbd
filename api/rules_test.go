package api

import (
	"bufio"
	"context"
	"fmt"
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
)

// rejection is a request the API must refuse with this message, naming this
// field.
type rejection struct {
	name, method, path, ctype, body string
	status                          int
	field, message                  string
}

func checkRejections(t *testing.T, base string, cases []rejection) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out := call(t, tc.method, base+tc.path, tc.ctype, tc.body)
			require.Equal(t, tc.status, code, out)
			e := out["error"].(map[string]any)
			assert.Equal(t, tc.message, e["message"])
			if tc.field == "" {
				assert.NotContains(t, e, "field")
			} else {
				assert.Equal(t, tc.field, e["field"])
			}
		})
	}
}

func TestMessagesNameTheFieldInWords(t *testing.T) {
	srv, _ := server(t, Options{})
	port := tcpTarget(t)
	code, _ := call(t, "PUT", srv.URL+"/v1/instances/vm-1", "application/json",
		`{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":`+port+`}}}`)
	require.Equal(t, http.StatusCreated, code)
	const put, patch, js, mp = "PUT", "PATCH", "application/json", "application/merge-patch+json"
	const u = "/v1/instances/vm-2"
	running := `"state":"Running","network":{"ip":"127.0.0.1"}`
	checkRejections(t, srv.URL, []rejection{
		{"time", put, u, js, `{"state":"Running","started_at":"yesterday"}`, 400, "started_at",
			"started_at must be an RFC 3339 time such as 2026-11-26T10:00:00Z"},
		{"integer", put, u, js, `{` + running + `,"health_check":{"tcp":{"port":"x"}}}`, 400, "health_check.tcp.port",
			"health_check.tcp.port must be an integer"},
		{"fraction", put, u, js, `{` + running + `,"health_check":{"tcp":{"port":1.5}}}`, 400, "health_check.tcp.port",
			"health_check.tcp.port must be an integer"},
		{"lifecycle type", put, u, js, `{"state":5}`, 400, "state",
			"state must be one of Created, Initializing, Running, Paused, Shutdown, Standby, Stopped, Unknown"},
		{"lifecycle value", put, u, js, `{"state":"Exploded"}`, 400, "state",
			`state must be one of Created, Initializing, Running, Paused, Shutdown, Standby, Stopped, Unknown (got "Exploded")`},
		{"argv", put, u, js, `{"state":"Running","vsock":{"cid":3},"health_check":{"exec":{"command":"ls"}}}`, 400,
			"health_check.exec.command", "health_check.exec.command must be an array of strings"},
		{"argv element", put, u, js, `{"state":"Running","vsock":{"cid":3},"health_check":{"exec":{"command":["ls",1]}}}`, 400,
			"health_check.exec.command[1]", "health_check.exec.command[1] must be a string"},
		{"bool", put, u, js, `{` + running + `,"health_check":{"http":{"port":80,"tls_skip_verify":"yes"}}}`, 400,
			"health_check.http.tls_skip_verify", "health_check.http.tls_skip_verify must be true or false"},
		{"object", put, u, js, `{"state":"Running","network":"127.0.0.1"}`, 400, "network", "network must be a JSON object"},
		{"not an object", put, u, js, `[1]`, 400, "", "body must be a JSON object"},
		{"empty", put, u, js, ``, 400, "", "body must be a JSON object"},
		{"uint", put, u, js, `{"state":"Running","vsock":{"cid":-3}}`, 400, "vsock.cid", "vsock.cid must be a non-negative integer"},
		{"patch string", patch, "/v1/instances/vm-1", mp, `"Stopped"`, 400, "", "merge patch must be a JSON object"},
		{"patch array", patch, "/v1/instances/vm-1", mp, `[{"op":"add"}]`, 400, "", "merge patch must be a JSON object"},
		{"patch null", patch, "/v1/instances/vm-1", mp, `null`, 400, "", "merge patch must be a JSON object"},
		{"patch wrong type", patch, "/v1/instances/vm-1", mp, `{"health_check":{"interval":5}}`, 400, "health_check.interval",
			"health_check.interval must be a string"},
		{"default timeout fits, explicit one must", put, u, js, `{` + running + `,"health_check":{"tcp":{"port":1},"interval":"1s","timeout":"2s"}}`,
			400, "health_check.timeout", "health_check.timeout must be less than or equal to health_check.interval"},
		{"unspecified address", put, u, js, `{"state":"Running","network":{"ip":"0.0.0.0"}}`, 400, "network.ip",
			"network.ip must be the address of one host, not the unspecified address 0.0.0.0"},
		{"unspecified v6", put, u, js, `{"state":"Running","network":{"ip":"::"}}`, 400, "network.ip",
			"network.ip must be the address of one host, not the unspecified address ::"},
		{"broadcast", put, u, js, `{"state":"Running","network":{"ip":"255.255.255.255"}}`, 400, "network.ip",
			"network.ip must be the address of one host, not the broadcast address 255.255.255.255"},
		{"multicast", put, u, js, `{"state":"Running","network":{"ip":"224.0.0.1"}}`, 400, "network.ip",
			"network.ip must be the address of one host, not the multicast address 224.0.0.1"},
		{"multicast v6", put, u, js, `{"state":"Running","network":{"ip":"ff02::1"}}`, 400, "network.ip",
			"network.ip must be the address of one host, not the multicast address ff02::1"},
		{"vsock port 0", put, u, js, `{"state":"Running","vsock":{"cid":3,"port":0}}`, 400, "vsock.port",
			"vsock.port must be a vsock port from 1 to 4294967294 (got 0; leave it out for 2222)"},
	})
}

func TestStrictJSON(t *testing.T) {
	srv, _ := server(t, Options{})
	port := tcpTarget(t)
	code, _ := call(t, "PUT", srv.URL+"/v1/instances/vm-1", "application/json",
		`{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":`+port+`}}}`)
	require.Equal(t, http.StatusCreated, code)
	const u = "/v1/instances/vm-2"
	checkRejections(t, srv.URL, []rejection{
		{"case of a key", "PUT", u, "application/json", `{"STATE":"Running"}`, 400, "STATE", "unknown field STATE"},
		{"case of a nested key", "PUT", u, "application/json", `{"state":"Running","network":{"IP":"127.0.0.1"}}`, 400,
			"network.IP", "unknown field network.IP"},
		{"duplicate key", "PUT", u, "application/json", `{"state":"Running","state":"Stopped"}`, 400, "state",
			"duplicate field state"},
		{"duplicate nested key", "PUT", u, "application/json",
			`{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"interval":"5s","interval":"9s","tcp":{"port":1}}}`,
			400, "health_check.interval", "duplicate field health_check.interval"},
		{"invalid UTF-8", "PUT", u, "application/json", "{\"state\":\"Running\",\"name\":\"web-\xff\"}", 400, "name",
			"name must be valid UTF-8"},
		{"patch duplicate key", "PATCH", "/v1/instances/vm-1", "application/merge-patch+json",
			`{"state":"Stopped","state":"Running"}`, 400, "state", "duplicate field state"},
		{"patch invalid UTF-8", "PATCH", "/v1/instances/vm-1", "application/merge-patch+json",
			"{\"name\":\"\xc3\x28\"}", 400, "name", "name must be valid UTF-8"},
		{"patch case", "PATCH", "/v1/instances/vm-1", "application/merge-patch+json", `{"State":"Stopped"}`, 400,
			"State", "unknown field State"},
	})
	// nothing was changed by what was refused
	code, out := call(t, "GET", srv.URL+"/v1/instances/vm-1", "", "")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, "Running", out["state"])
	assert.NotContains(t, out, "name")
}

func TestInvalidIDsAndCursorsAre400(t *testing.T) {
	srv, _ := server(t, Options{})
	idMessage := `id must be 1-128 characters of A-Z a-z 0-9 . _ - (got "a b")`
	var cases []rejection
	for _, r := range []struct{ method, path, ctype, body string }{
		{"GET", "/v1/instances/a%20b", "", ""},
		{"DELETE", "/v1/instances/a%20b", "", ""},
		{"GET", "/v1/instances/a%20b/health", "", ""},
		{"POST", "/v1/instances/a%20b/probe", "", ""},
		{"PATCH", "/v1/instances/a%20b", "application/merge-patch+json", `{"state":"Stopped"}`},
		{"PUT", "/v1/instances/a%20b", "application/json", `{"state":"Running"}`},
	} {
		cases = append(cases, rejection{r.method + " " + r.path, r.method, r.path, r.ctype, r.body, 400, "id", idMessage})
	}
	cursorMessage := "cursor is not one this server issued: pass next_cursor from the previous page as it is"
	cases = append(cases,
		rejection{"garbage cursor", "GET", "/v1/instances?cursor=%21%21", "", "", 400, "cursor", cursorMessage},
		rejection{"an id as cursor", "GET", "/v1/instances?cursor=vm-1", "", "", 400, "cursor", cursorMessage},
		rejection{"long id", "GET", "/v1/instances/" + strings.Repeat("x", 129), "", "", 400, "id",
			`id must be 1-128 characters of A-Z a-z 0-9 . _ - (got "` + strings.Repeat("x", 64) + `…")`},
	)
	checkRejections(t, srv.URL, cases)

	// the cursors the server issues page through every instance once
	port := tcpTarget(t)
	for i := range 7 {
		code, _ := call(t, "PUT", fmt.Sprintf("%s/v1/instances/vm-%d", srv.URL, i), "application/json",
			`{"state":"Stopped","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":`+port+`}}}`)
		require.Equal(t, http.StatusCreated, code)
	}
	var seen []string
	cursor := ""
	for {
		code, out := call(t, "GET", srv.URL+"/v1/instances?limit=3&cursor="+cursor, "", "")
		require.Equal(t, http.StatusOK, code, out)
		for _, in := range out["instances"].([]any) {
			seen = append(seen, in.(map[string]any)["id"].(string))
		}
		cursor = out["next_cursor"].(string)
		if cursor == "" {
			break
		}
		assert.NotContains(t, cursor, "vm-", "the cursor is opaque")
	}
	assert.Equal(t, []string{"vm-0", "vm-1", "vm-2", "vm-3", "vm-4", "vm-5", "vm-6"}, seen)
}

// TestPatchAppliesToTheSpecAsWritten checks that derived defaults follow
// the fields they derive from, and that a PUT and the equivalent PATCH store
// the same spec.
func TestPatchAppliesToTheSpecAsWritten(t *testing.T) {
	srv, _ := server(t, Options{})
	u := srv.URL + "/v1/instances/vm-1"
	code, out := call(t, "PUT", u, "application/json",
		`{"state":"Stopped","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":9},"interval":"60s"}}`)
	require.Equal(t, http.StatusCreated, code, out)
	hc := out["health_check"].(map[string]any)
	assert.Equal(t, "12s", hc["start_interval"], "GET shows the normalized policy")
	assert.Equal(t, "2s", hc["timeout"])
	assert.Equal(t, "tcp", hc["type"])

	code, out = call(t, "PATCH", u, "application/merge-patch+json", `{"health_check":{"interval":"5s"}}`)
	require.Equal(t, http.StatusOK, code, out)
	hc = out["health_check"].(map[string]any)
	assert.Equal(t, "5s", hc["interval"])
	assert.Equal(t, "1s", hc["start_interval"], "derived again from the new interval")

	code, out = call(t, "PATCH", u, "application/merge-patch+json", `{"health_check":{"tcp":null,"http":{"port":9}}}`)
	require.Equal(t, http.StatusOK, code, out)
	hc = out["health_check"].(map[string]any)
	assert.Equal(t, "http", hc["type"], "the inferred type follows the block")
	assert.NotContains(t, hc, "tcp")
	assert.Equal(t, "/", hc["http"].(map[string]any)["path"])

	// the default timeout fits a short interval
	code, out = call(t, "PATCH", u, "application/merge-patch+json", `{"health_check":{"interval":"1s"}}`)
	require.Equal(t, http.StatusOK, code, out)
	assert.Equal(t, "1s", out["health_check"].(map[string]any)["timeout"])

	// a PUT of what the patches wrote is the same spec: the same answer, and
	// the same answer to the next patch
	code, _ = call(t, "PUT", srv.URL+"/v1/instances/vm-2", "application/json",
		`{"state":"Stopped","network":{"ip":"127.0.0.1"},"health_check":{"http":{"port":9},"interval":"1s"}}`)
	require.Equal(t, http.StatusCreated, code)
	for _, patch := range []string{``, `{"health_check":{"interval":"30s"}}`, `{"health_check":{"timeout":"3s"}}`} {
		var a, b map[string]any
		if patch == "" {
			_, a = call(t, "GET", u, "", "")
			_, b = call(t, "GET", srv.URL+"/v1/instances/vm-2", "", "")
		} else {
			_, a = call(t, "PATCH", u, "application/merge-patch+json", patch)
			_, b = call(t, "PATCH", srv.URL+"/v1/instances/vm-2", "application/merge-patch+json", patch)
		}
		delete(a, "id")
		delete(b, "id")
		delete(a, "health_status")
		delete(b, "health_status")
		assert.Equal(t, a, b, "after %q", patch)
	}
}

func TestClearingThePolicyClearsItsEvidence(t *testing.T) {
	srv, _ := server(t, Options{})
	u := srv.URL + "/v1/instances/vm-1"
	code, out := call(t, "PUT", u, "application/json", `{"state":"Running","network":{"ip":"127.0.0.1"},`+
		`"health_check":{"tcp":{"port":`+deadPort(t)+`},"start_period":"0s","failure_threshold":1}}`)
	require.Equal(t, http.StatusCreated, code, out)
	code, out = call(t, "POST", u+"/probe", "", "")
	require.Equal(t, http.StatusOK, code, out)
	hs := out["health_status"].(map[string]any)
	require.Equal(t, "unhealthy", hs["status"])
	require.NotEmpty(t, hs["last_error"])

	code, out = call(t, "PATCH", u, "application/merge-patch+json", `{"health_check":null}`)
	require.Equal(t, http.StatusOK, code, out)
	code, hs = call(t, "GET", u+"/health", "", "")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, "disabled", hs["status"])
	assert.Equal(t, "", hs["last_error"])
	assert.Nil(t, hs["last_failure_at"])
	assert.Nil(t, hs["last_checked_at"])
	assert.Equal(t, float64(0), hs["consecutive_failures"])
	assert.NotContains(t, hs, "history")

	// a new policy starts from nothing
	port := tcpTarget(t)
	code, out = call(t, "PATCH", u, "application/merge-patch+json", `{"health_check":{"tcp":{"port":`+port+`},"start_period":"0s"}}`)
	require.Equal(t, http.StatusOK, code, out)
	code, out = call(t, "POST", u+"/probe", "", "")
	require.Equal(t, http.StatusOK, code, out)
	hs = out["health_status"].(map[string]any)
	assert.Equal(t, "healthy", hs["status"])
	for _, r := range hs["history"].([]any) {
		assert.Equal(t, "success", r.(map[string]any)["outcome"], "no result of the old policy is left")
	}
}

func TestHeadOnEveryGetRoute(t *testing.T) {
	srv, s := server(t, Options{Metrics: NewMetrics()})
	_, _, err := s.Put(context.Background(), "vm-1", stoppedSpec())
	require.NoError(t, err)
	for _, path := range []string{"/healthz", "/readyz", "/v1/instances", "/v1/instances/vm-1", "/v1/instances/vm-1/health",
		"/v1/summary", "/v1/events", "/v1/openapi.json", "/metrics"} {
		get, err := http.Get(srv.URL + path)
		require.NoError(t, err)
		if path != "/v1/events" {
			_, _ = io.Copy(io.Discard, get.Body)
		}
		get.Body.Close()
		req, err := http.NewRequest(http.MethodHead, srv.URL+path, nil)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		head, err := http.DefaultClient.Do(req.WithContext(ctx))
		require.NoError(t, err, path)
		b, _ := io.ReadAll(head.Body)
		head.Body.Close()
		cancel()
		assert.Equal(t, get.StatusCode, head.StatusCode, path)
		assert.Equal(t, get.Header.Get("Content-Type"), head.Header.Get("Content-Type"), path)
		assert.Empty(t, b, path)
	}
	// HEAD of a missing instance is the GET's 404, without its body
	req, _ := http.NewRequest(http.MethodHead, srv.URL+"/v1/instances/nope", nil)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
}

func stoppedSpec() health.InstanceSpec { return stoppedSpecPort("9") }

func stoppedSpecPort(port string) health.InstanceSpec {
	p, _ := strconv.Atoi(port)
	return health.InstanceSpec{State: health.Stopped, Network: &health.Network{IP: "127.0.0.1"},
		HealthCheck: &health.PolicySpec{TCP: &health.TCPSpec{Port: p}}}
}

// serveRaw runs the API the way vigil serve does (NewServer over
// JSONErrors) and returns its address.
func serveRaw(t *testing.T, opt Options) (string, *actors.Scheduler) {
	t.Helper()
	s, err := actors.New(context.Background())
	require.NoError(t, err)
	opt.Log = zerolog.Nop()
	srv := NewServer(New(s, opt))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(JSONErrors(l)) }()
	t.Cleanup(func() {
		_ = srv.Close()
		require.NoError(t, s.Close(context.Background()))
	})
	return l.Addr().String(), s
}

// rawExchange writes a request as it is and reads the reply until the
// server closes the connection or the deadline passes.
func rawExchange(t *testing.T, addr, request string, deadline time.Duration) (status string, header http.Header, body string, took time.Duration) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	began := time.Now()
	require.NoError(t, c.SetDeadline(began.Add(deadline)))
	_, err = io.WriteString(c, request)
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	return resp.Status, resp.Header, string(b), time.Since(began)
}

func TestSlowBodyIsCutOff(t *testing.T) {
	addr, _ := serveRaw(t, Options{BodyReadTimeout: 300 * time.Millisecond})
	status, h, body, took := rawExchange(t, addr, "PUT /v1/instances/vm-1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
		"Content-Length: 100\r\n\r\n{\"state\"", 10*time.Second)
	assert.Equal(t, "408 Request Timeout", status)
	assert.Equal(t, "application/json", h.Get("Content-Type"))
	assert.JSONEq(t, `{"error":{"code":"request_timeout","message":"the request body did not arrive in time"}}`, body)
	assert.Less(t, took, 5*time.Second)
	assert.GreaterOrEqual(t, took, 300*time.Millisecond)
}

func TestNetHTTPErrorsAreJSON(t *testing.T) {
	addr, _ := serveRaw(t, Options{})
	huge := strings.Repeat("a", MaxHeaderBytes+8192)
	status, h, body, _ := rawExchange(t, addr, "GET /v1/summary HTTP/1.1\r\nHost: x\r\nX-Big: "+huge+"\r\n\r\n", 10*time.Second)
	assert.Equal(t, "431 Request Header Fields Too Large", status)
	assert.Equal(t, "application/json", h.Get("Content-Type"))
	assert.JSONEq(t, `{"error":{"code":"headers_too_large","message":"431 request header fields too large"}}`, body)

	status, h, body, _ = rawExchange(t, addr, "GET /v1/summary HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 10*time.Second)
	assert.Equal(t, "400 Bad Request", status)
	assert.Equal(t, "application/json", h.Get("Content-Type"))
	assert.JSONEq(t, `{"error":{"code":"invalid_request","message":"400 bad request"}}`, body)

	status, h, body, _ = rawExchange(t, addr, "POST /v1/instances/a/probe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 10*time.Second)
	assert.Equal(t, "501 Not Implemented", status)
	assert.Equal(t, "application/json", h.Get("Content-Type"))
	assert.JSONEq(t, `{"error":{"code":"not_implemented","message":"unsupported transfer encoding"}}`, body)

	// a normal exchange on the same kind of connection is untouched
	status, h, body, _ = rawExchange(t, addr, "GET /v1/summary HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 10*time.Second)
	assert.Equal(t, "200 OK", status)
	assert.JSONEq(t, `{"total":0,"disabled":0,"unknown":0,"starting":0,"healthy":0,"unhealthy":0}`, body)
	assert.Equal(t, "application/json", h.Get("Content-Type"))
}

// TestWriteDeadline checks that a client that stops reading a response is
// cut off at the write deadline.
func TestWriteDeadline(t *testing.T) {
	s, err := actors.New(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close(context.Background())) })
	port := tcpTarget(t)
	for i := range 1000 {
		_, _, err := s.Put(context.Background(), fmt.Sprintf("vm-%04d-%s", i, strings.Repeat("x", 100)), stoppedSpecPort(port))
		require.NoError(t, err)
	}
	srv := httptest.NewUnstartedServer(New(s, Options{Log: zerolog.Nop(), WriteTimeout: 300 * time.Millisecond}))
	srv.Listener = smallBuffers{srv.Listener}
	srv.Start()
	t.Cleanup(srv.Close)

	const request = "GET /v1/instances?limit=1000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	read := func(pause time.Duration) int64 {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.(*net.TCPConn).SetReadBuffer(4096))
		_, err = io.WriteString(c, request)
		require.NoError(t, err)
		time.Sleep(pause) // a client that does not read
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		n, _ := io.Copy(io.Discard, c)
		return n
	}
	resp, err := http.Get(srv.URL + "/v1/instances?limit=1000")
	require.NoError(t, err)
	whole, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Greater(t, whole, int64(200_000))
	cut := read(time.Second) // past the deadline
	assert.Less(t, cut, whole/2, "the server gave up writing to a client that did not read")
}
