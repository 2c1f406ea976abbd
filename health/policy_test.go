package health

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func decodePolicy(t *testing.T, js string) (Policy, error) {
	t.Helper()
	var s PolicySpec
	require.NoError(t, json.Unmarshal([]byte(js), &s))
	return s.Normalize()
}

func TestPolicyDefaults(t *testing.T) {
	p, err := decodePolicy(t, `{"http":{"port":8080}}`)
	require.NoError(t, err)
	assert.Equal(t, TypeHTTP, p.Type)
	assert.Equal(t, 10*time.Second, p.Interval)
	assert.Equal(t, 2*time.Second, p.Timeout)
	assert.Equal(t, 30*time.Second, p.StartPeriod)
	assert.Equal(t, 2*time.Second, p.StartInterval)
	assert.Equal(t, 3, p.FailureThreshold)
	assert.Equal(t, 1, p.SuccessThreshold)
	assert.Equal(t, "/", p.HTTP.Path)
	assert.Equal(t, "http", p.HTTP.Scheme)
	assert.Equal(t, "GET", p.HTTP.Method)
	assert.True(t, p.HTTP.ExpectedStatus.Contains(200))
	assert.False(t, p.HTTP.ExpectedStatus.Contains(204))

	out, err := json.Marshal(p)
	require.NoError(t, err)
	assert.JSONEq(t, `{"type":"http","interval":"10s","timeout":"2s","start_period":"30s","start_interval":"2s",
		"failure_threshold":3,"success_threshold":1,"http":{"port":8080,"path":"/","scheme":"http","expected_status":200,"method":"GET"}}`, string(out))

	var again Policy
	require.NoError(t, json.Unmarshal(out, &again))
	assert.True(t, p.Equal(&again), "normalized JSON normalizes to the same policy")
}

func TestStartIntervalDefaultIsClamped(t *testing.T) {
	for _, tc := range []struct {
		interval string
		want     time.Duration
	}{
		{"1s", time.Second}, {"3s", time.Second}, {"10s", 2 * time.Second}, {"1m", 12 * time.Second},
	} {
		p, err := decodePolicy(t, `{"tcp":{"port":1},"timeout":"1s","interval":"`+tc.interval+`"}`)
		require.NoError(t, err)
		assert.Equal(t, tc.want, p.StartInterval, tc.interval)
	}
}

func TestPolicyTypeInference(t *testing.T) {
	for _, tc := range []struct {
		js   string
		want Type
	}{
		{`{"tcp":{"port":22}}`, TypeTCP},
		{`{"grpc":{"port":50051,"service":"x"}}`, TypeGRPC},
		{`{"exec":{"command":["true"]}}`, TypeExec},
		{`{"type":"none"}`, TypeNone},
		{`{"type":"http","http":{"port":80}}`, TypeHTTP},
	} {
		p, err := decodePolicy(t, tc.js)
		require.NoError(t, err, tc.js)
		assert.Equal(t, tc.want, p.Type, tc.js)
	}
}

func TestPolicyRejections(t *testing.T) {
	for _, tc := range []struct {
		js, field, msg string
	}{
		{`{}`, "health_check.type", "is required"},
		{`{"type":"ping"}`, "health_check.type", "must be one of"},
		{`{"http":{"port":80},"tcp":{"port":80}}`, "health_check.tcp", "conflicts"},
		{`{"type":"tcp","http":{"port":80}}`, "health_check.http", "contradicts"},
		{`{"type":"tcp"}`, "health_check.tcp", "is required"},
		{`{"type":"none","tcp":{"port":1}}`, "health_check.tcp", "must not be set"},
		{`{"tcp":{"port":1},"interval":"500ms"}`, "health_check.interval", "at least 1s"},
		{`{"tcp":{"port":1},"interval":"10"}`, "health_check.interval", "duration"},
		{`{"tcp":{"port":1},"interval":"48h"}`, "health_check.interval", "at most"},
		{`{"tcp":{"port":1},"timeout":"0s"}`, "health_check.timeout", "greater than 0"},
		{`{"tcp":{"port":1},"timeout":"-1s"}`, "health_check.timeout", "greater than 0"},
		{`{"tcp":{"port":1},"interval":"5s","timeout":"6s"}`, "health_check.timeout", "less than or equal to health_check.interval"},
		{`{"tcp":{"port":1},"start_period":"-1s"}`, "health_check.start_period", "greater than or equal to 0"},
		{`{"tcp":{"port":1},"start_interval":"100ms"}`, "health_check.start_interval", "at least 1s"},
		{`{"tcp":{"port":1},"start_interval":"11s"}`, "health_check.start_interval", "less than or equal"},
		{`{"tcp":{"port":1},"failure_threshold":0}`, "health_check.failure_threshold", "between 1 and 100"},
		{`{"tcp":{"port":1},"success_threshold":101}`, "health_check.success_threshold", "between 1 and 100"},
		{`{"tcp":{"port":0}}`, "health_check.tcp.port", "between 1 and 65535"},
		{`{"tcp":{"port":65536}}`, "health_check.tcp.port", "between 1 and 65535"},
		{`{"http":{"port":80,"path":"healthz"}}`, "health_check.http.path", "must start with /"},
		{`{"http":{"port":80,"path":"/a b"}}`, "health_check.http.path", "spaces"},
		{`{"http":{"port":80,"scheme":"ftp"}}`, "health_check.http.scheme", "http or https"},
		{`{"http":{"port":80,"method":"PATCH"}}`, "health_check.http.method", "GET, HEAD, POST or PUT"},
		{`{"http":{"port":80,"expected_status":99}}`, "health_check.http.expected_status", "between 100 and 599"},
		{`{"http":{"port":80,"expected_status":200.5}}`, "health_check.http.expected_status", "status code"},
		{`{"http":{"port":80,"expected_status":"200-"}}`, "health_check.http.expected_status", "bad part"},
		{`{"http":{"port":80,"expected_status":"300-200"}}`, "health_check.http.expected_status", "out-of-order"},
		{`{"http":{"port":80,"expected_status":true}}`, "health_check.http.expected_status", "status code"},
		{`{"http":{"port":80,"headers":{"Bad Name":"x"}}}`, "health_check.http.headers", "invalid header name"},
		{`{"http":{"port":80,"headers":{"X-A":"a\r\nb"}}}`, "health_check.http.headers.X-A", "CR, LF"},
		{`{"http":{"port":80,"host":"a b"}}`, "health_check.http.host", "host name"},
		{`{"exec":{"command":[]}}`, "health_check.exec.command", "non-empty"},
		{`{"exec":{"command":[""]}}`, "health_check.exec.command", "non-empty"},
		{`{"exec":{"command":["a\u0000b"]}}`, "health_check.exec.command[0]", "NUL"},
		{`{"exec":{"command":["true"],"working_dir":"rel"}}`, "health_check.exec.working_dir", "absolute"},
		{`{"exec":{"command":["true"],"env":{"A=B":"x"}}}`, "health_check.exec.env", "invalid variable name"},
		{`{"grpc":{"port":-1}}`, "health_check.grpc.port", "between 1 and 65535"},
	} {
		_, err := decodePolicy(t, tc.js)
		var fe *FieldError
		require.True(t, errors.As(err, &fe), "%s: want a FieldError, got %v", tc.js, err)
		assert.Equal(t, tc.field, fe.Field, tc.js)
		assert.Contains(t, err.Error(), tc.msg, tc.js)
		assert.Contains(t, err.Error(), tc.field, "the message names the field")
	}
}

func TestTimeoutMessageMatchesSpec(t *testing.T) {
	_, err := decodePolicy(t, `{"tcp":{"port":1},"interval":"5s","timeout":"6s"}`)
	assert.EqualError(t, err, "health_check.timeout must be less than or equal to health_check.interval")
}

func TestExecLimits(t *testing.T) {
	args := make([]string, MaxArgs+1)
	for i := range args {
		args[i] = "x"
	}
	_, err := PolicySpec{Exec: &ExecSpec{Command: args}}.Normalize()
	assert.ErrorContains(t, err, "at most 256 arguments")
	env := map[string]string{}
	for i := 0; i <= MaxEnvEntries; i++ {
		env[string(rune('A'+i%26))+string(rune('a'+i/26))] = "v"
	}
	_, err = PolicySpec{Exec: &ExecSpec{Command: []string{"true"}, Env: env}}.Normalize()
	assert.ErrorContains(t, err, "at most 128 entries")
}

func TestStatusSet(t *testing.T) {
	s, err := ParseStatusSet("f", "200-299, 304")
	require.NoError(t, err)
	for code, want := range map[int]bool{199: false, 200: true, 250: true, 299: true, 300: false, 304: true, 404: false} {
		assert.Equal(t, want, s.Contains(code), code)
	}
	assert.Equal(t, "200-299,304", s.String())

	p, err := decodePolicy(t, `{"http":{"port":80,"expected_status":"200-299,304"}}`)
	require.NoError(t, err)
	out, err := json.Marshal(p)
	require.NoError(t, err)
	assert.Contains(t, string(out), `"expected_status":"200-299,304"`)

	p, err = decodePolicy(t, `{"http":{"port":80,"expected_status":204}}`)
	require.NoError(t, err)
	assert.True(t, p.HTTP.ExpectedStatus.Contains(204))
	assert.False(t, p.HTTP.ExpectedStatus.Contains(200))

	_, err = ParseStatusSet("f", "1,2,3,4,5,6,7,8,9")
	assert.ErrorContains(t, err, "at most 8")
}

func TestPolicyEqual(t *testing.T) {
	a, _ := decodePolicy(t, `{"tcp":{"port":1}}`)
	b, _ := decodePolicy(t, `{"tcp":{"port":1},"interval":"10s"}`)
	c, _ := decodePolicy(t, `{"tcp":{"port":2}}`)
	none := Policy{Type: TypeNone}
	assert.True(t, a.Equal(&b))
	assert.False(t, a.Equal(&c))
	assert.False(t, a.Equal(nil))
	assert.True(t, (*Policy)(nil).Equal(&none))
}

func TestDefaultTimeoutFitsTheInterval(t *testing.T) {
	for interval, want := range map[string]time.Duration{"1s": time.Second, "1500ms": 1500 * time.Millisecond, "2s": 2 * time.Second, "10s": 2 * time.Second} {
		p, err := decodePolicy(t, `{"tcp":{"port":1},"interval":"`+interval+`"}`)
		require.NoError(t, err, interval)
		assert.Equal(t, want, p.Timeout, interval)
	}
	_, err := decodePolicy(t, `{"tcp":{"port":1},"interval":"1s","timeout":"2s"}`)
	var fe *FieldError
	require.ErrorAs(t, err, &fe, "an explicit timeout above the interval is still an error")
	assert.Equal(t, "health_check.timeout", fe.Field)
}

// Found by FuzzDecodeSpec: with two bad keys in a map, the error named
// whichever the map's iteration met first, so one input got different
// errors. It names the first bad key in byte order.
func TestMapErrorsNameTheFirstKey(t *testing.T) {
	for range 20 {
		err := ValidateLabels(map[string]string{"zz$": "1", "(1B": "2", "ok": "3", "X8$": "4"})
		var fe *FieldError
		require.True(t, errors.As(err, &fe), "%v", err)
		assert.Equal(t, "labels.(1B", fe.Field)

		_, err = decodePolicy(t, `{"http":{"port":80,"headers":{"z":"a\nb","b":"c\rd","a":"ok"}}}`)
		require.True(t, errors.As(err, &fe), "%v", err)
		assert.Equal(t, "health_check.http.headers.b", fe.Field)

		_, err = decodePolicy(t, `{"exec":{"command":["true"],"env":{"Z":"\u0000","B":"\u0000","A":"ok"}}}`)
		require.True(t, errors.As(err, &fe), "%v", err)
		assert.Equal(t, "health_check.exec.env.B", fe.Field)
	}
}

// A restart backoff over a day is refused naming backoff; it was refused
// naming max_backoff, whose default follows the backoff.
func TestRestartBackoffOverADayNamesBackoff(t *testing.T) {
	for backoff, want := range map[string]string{"1000h": "restart_policy.backoff", "500ms": "restart_policy.backoff"} {
		_, err := RestartPolicySpec{Policy: RestartOnUnhealthy, URL: "http://127.0.0.1/r", Backoff: backoff}.Normalize()
		var fe *FieldError
		require.True(t, errors.As(err, &fe), "%v", err)
		assert.Equal(t, want, fe.Field, backoff)
		assert.Contains(t, fe.Message, "1s", backoff)
	}
}
