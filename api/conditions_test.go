package api

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// jsonString writes s as a JSON string.
func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestResponseChecksOverHTTP(t *testing.T) {
	srv, _ := server(t, Options{})
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"degraded"}`)
	}))
	defer target.Close()
	port := strconv.Itoa(target.Listener.Addr().(*net.TCPAddr).Port)
	spec := func(check string) string {
		return `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"interval":"1m","http":{"port":` + port + `,` + check + `}}}`
	}
	const u = "/v1/instances/web-1"

	// a bad condition is refused, naming the field, with CEL's message
	checkRejections(t, srv.URL, []rejection{
		{"undeclared", "PUT", u, "application/json", spec(`"condition":"stauts == 200"`), 400, "health_check.http.condition",
			"health_check.http.condition is not a valid CEL condition: 1:1: undeclared reference to 'stauts' (in container '')"},
		{"not boolean", "PUT", u, "application/json", spec(`"condition":"json.status + 1 == 2 ? 1 : 0"`), 400, "health_check.http.condition",
			"health_check.http.condition is not a valid CEL condition: must be true or false, but is of type int"},
		{"regex", "PUT", u, "application/json", spec(`"body_regex":"a("`), 400, "health_check.http.body_regex",
			"health_check.http.body_regex must be an RE2 regular expression: missing closing ): `a(`"},
		{"ca_pem", "PUT", u, "application/json", `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"http":{"port":443,"scheme":"https","tls":{"ca_pem":"none"}}}}`,
			400, "health_check.http.tls.ca_pem", "health_check.http.tls.ca_pem must hold at least one PEM certificate (-----BEGIN CERTIFICATE-----)"},
		{"source family", "PUT", u, "application/json", `{"state":"Running","network":{"ip":"127.0.0.1","source_ip":"::1"},"health_check":{"tcp":{"port":1}}}`,
			400, "network.source_ip", "network.source_ip must be of the same family as network.ip 127.0.0.1 (got ::1)"},
		{"tcp escape", "PUT", u, "application/json", `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":1,"send":"\\q","expect":"x"}}}`,
			400, "health_check.tcp.send", `health_check.tcp.send has an unknown escape \q at byte 0 (known: \r \n \t \\ \xNN)`},
	})
	code, out := call(t, "PUT", srv.URL+u, "application/json", spec(`"condition":"status =="`))
	require.Equal(t, http.StatusBadRequest, code)
	e := out["error"].(map[string]any)
	assert.Equal(t, "health_check.http.condition", e["field"])
	assert.Contains(t, e["message"], "health_check.http.condition is not a valid CEL condition: 1:10: Syntax error: mismatched input '<EOF>'")
	code, _ = call(t, "GET", srv.URL+u, "", "")
	require.Equal(t, http.StatusNotFound, code, "nothing was stored")

	// a good one probes: false is condition_failed with what it saw
	code, out = call(t, "PUT", srv.URL+u, "application/json", spec(`"condition":`+jsonString(`status == 200 && json.status == "ok"`)))
	require.Equal(t, http.StatusCreated, code, out)
	assert.Equal(t, `status == 200 && json.status == "ok"`, out["health_check"].(map[string]any)["http"].(map[string]any)["condition"])
	code, out = call(t, "POST", srv.URL+u+"/probe", "", "")
	require.Equal(t, http.StatusOK, code, out)
	result := out["result"].(map[string]any)
	assert.Equal(t, "failure", result["outcome"])
	assert.Equal(t, "condition_failed", result["reason"])
	assert.Equal(t, `condition is false: status=200 json.status="degraded"`, result["message"])
	assert.Contains(t, result["phases"], "connect_ms")
	assert.Contains(t, result["phases"], "first_byte_ms")
	assert.Equal(t, `condition is false: status=200 json.status="degraded"`, out["health_status"].(map[string]any)["last_error"])

	// a patch to a bad condition changes nothing
	checkRejections(t, srv.URL, []rejection{
		{"patch", "PATCH", u, "application/merge-patch+json", `{"health_check":{"http":{"condition":"json.stat == 1 && nope"}}}`, 400,
			"health_check.http.condition", "health_check.http.condition is not a valid CEL condition: 1:19: undeclared reference to 'nope' (in container '')"},
	})
	code, out = call(t, "GET", srv.URL+u, "", "")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, `status == 200 && json.status == "ok"`, out["health_check"].(map[string]any)["http"].(map[string]any)["condition"], "unchanged")
	// a patch to a good one probes with it
	code, out = call(t, "PATCH", srv.URL+u, "application/merge-patch+json", `{"health_check":{"http":{"condition":"json.status == 'degraded'"}}}`)
	require.Equal(t, http.StatusOK, code, out)
	code, out = call(t, "POST", srv.URL+u+"/probe", "", "")
	require.Equal(t, http.StatusOK, code, out)
	assert.Equal(t, "success", out["result"].(map[string]any)["outcome"], out)
	// a lifecycle change keeps the accepted condition
	code, out = call(t, "PATCH", srv.URL+u, "application/merge-patch+json", `{"state":"Stopped"}`)
	require.Equal(t, http.StatusOK, code, out)

	// the history shows the phases, and the spec reads back as written
	code, out = call(t, "GET", srv.URL+u+"/health", "", "")
	require.Equal(t, http.StatusOK, code)
	history := out["history"].([]any)
	require.GreaterOrEqual(t, len(history), 2, "the probe at registration and the ones asked for")
	for _, r := range history {
		assert.Contains(t, r.(map[string]any)["phases"], "connect_ms")
	}

	// body_regex and a TCP dialogue through the API
	code, out = call(t, "PUT", srv.URL+"/v1/instances/web-2", "application/json", spec(`"method":"POST","body":"{}","content_type":"application/json","body_regex":"degraded"`))
	require.Equal(t, http.StatusCreated, code, out)
	code, out = call(t, "POST", srv.URL+"/v1/instances/web-2/probe", "", "")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, "success", out["result"].(map[string]any)["outcome"], out)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, "-ERR not ready\r\n")
			_ = c.Close()
		}
	}()
	tcpPort := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	code, out = call(t, "PUT", srv.URL+"/v1/instances/redis-1", "application/json",
		`{"state":"Running","network":{"ip":"127.0.0.1","source_ip":"127.0.0.2"},"health_check":{"interval":"1m","tcp":{"port":`+tcpPort+`,"send":"PING\\r\\n","expect":"^\\+PONG"}}}`)
	require.Equal(t, http.StatusCreated, code, out)
	assert.Equal(t, "127.0.0.2", out["network"].(map[string]any)["source_ip"])
	assert.Equal(t, `PING\r\n`, out["health_check"].(map[string]any)["tcp"].(map[string]any)["send"])
	code, out = call(t, "POST", srv.URL+"/v1/instances/redis-1/probe", "", "")
	require.Equal(t, http.StatusOK, code)
	result = out["result"].(map[string]any)
	assert.Equal(t, "expect_mismatch", result["reason"], out)
	assert.True(t, strings.HasSuffix(result["message"].(string), `"-ERR not ready\r\n"`), result["message"])
	assert.Equal(t, "-ERR not ready\r\n", result["output"])
}
