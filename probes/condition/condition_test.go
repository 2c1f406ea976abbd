package condition

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func response() *Response {
	return &Response{
		Status:   200,
		Header:   http.Header{"Content-Type": {"application/json"}, "X-Version": {"1", "2"}},
		Body:     `{"status":"ok","checks":[{"name":"db","ok":true},{"name":"cache","ok":true}],"count":3}`,
		Duration: 12500 * time.Microsecond,
		TLS:      true,
		DaysLeft: 30.5,
	}
}

func TestVariables(t *testing.T) {
	plain := response()
	plain.TLS = false
	text := response()
	text.Body = "hello"
	for _, tc := range []struct {
		name, expr string
		r          *Response
		want       bool
	}{
		{"status", `status == 200`, response(), true},
		{"status false", `status == 204`, response(), false},
		{"status range", `status >= 200 && status < 300`, response(), true},
		{"headers lower case", `headers["content-type"] == "application/json"`, response(), true},
		{"headers joined", `headers["x-version"] == "1, 2"`, response(), true},
		{"headers has", `has(headers.etag)`, response(), false},
		{"body", `body.contains("\"status\":\"ok\"")`, response(), true},
		{"body matches", `body.matches("^\\{.*\\}$")`, response(), true},
		{"body size", `size(body) < 100`, response(), true},
		{"json field", `json.status == "ok"`, response(), true},
		{"json number and int", `json.count == 3 && json.count > 2`, response(), true},
		{"json all", `json.checks.all(c, c.ok)`, response(), true},
		{"json exists", `json.checks.exists(c, c.name == "db")`, response(), true},
		{"not json is null", `json == null`, text, true},
		{"duration", `duration_ms < 250`, response(), true},
		{"duration exact", `duration_ms == 12.5`, response(), true},
		{"duration slow", `duration_ms < 10`, response(), false},
		{"tls days", `tls.days_left > 14`, response(), true},
		{"tls days short", `tls.days_left > 60`, response(), false},
		{"tls absent over http", `!has(tls.days_left)`, plain, true},
		{"tls either", `!has(tls.days_left) || tls.days_left > 14`, plain, true},
		{"the example", `status == 200 && json.status == "ok" && duration_ms < 250`, response(), true},
		{"dyn result", `json.checks[0].ok`, response(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Compile(tc.expr)
			require.NoError(t, err)
			got, err := c.Eval(context.Background(), tc.r)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct{ expr, msg string }{
		{`stauts == 200`, "1:1: undeclared reference to 'stauts'"},
		{`status == `, "1:11: Syntax error"},
		{`status + 1`, "must be true or false, but is of type int"},
		{`body == 3`, "found no matching overload for '_==_' applied to '(string, int)'"},
		{`headers["a"] > 1`, "found no matching overload"},
		{strings.Repeat("a", MaxLength+1), "more than 4096"},
		{`a == b || c == d || e == f`, "; and 3 more"},
	} {
		t.Run(tc.expr[:min(len(tc.expr), 20)], func(t *testing.T) {
			_, err := Compile(tc.expr)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.msg)
			assert.NotContains(t, err.Error(), "\n")
		})
	}
}

func TestEvalErrors(t *testing.T) {
	plain := response()
	plain.TLS = false
	text := response()
	text.Body = "hello"
	for _, tc := range []struct {
		name, expr string
		r          *Response
		msg        string
	}{
		{"missing key", `json.missing == "x"`, response(), "no such key: missing"},
		{"not json", `json.status == "ok"`, text, ""},
		{"tls over http", `tls.days_left > 14`, plain, "no such key: days_left"},
		{"not a bool", `json.status`, response(), "evaluated to string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Compile(tc.expr)
			require.NoError(t, err)
			_, err = c.Eval(context.Background(), tc.r)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.msg)
		})
	}
}

// runaway expressions: a nest of comprehensions (10⁶ iterations) and a
// string built by repeated concatenation of the 64 KiB body
func runaways() map[string]string {
	ten := "[0,1,2,3,4,5,6,7,8,9]"
	nest := "a"
	for _, v := range []string{"f", "e", "d", "c", "b", "a"} {
		nest = ten + ".map(" + v + ", " + nest + ")"
	}
	nest = "size(" + nest + ") > 0"
	concat := "size(" + strings.TrimSuffix(strings.Repeat("body + ", 200), " + ") + ") > 0"
	spread := "[0,1,2,3,4,5,6,7,8,9].map(x, " + ten + ".map(y, body + body + body + body)).size() > 0"
	return map[string]string{"nested comprehensions": nest, "string concatenation": concat, "strings in a comprehension": spread}
}

func TestCostLimitStopsRunaways(t *testing.T) {
	r := response()
	r.Body = strings.Repeat("x", 64<<10)
	for name, expr := range runaways() {
		t.Run(name, func(t *testing.T) {
			c, err := Compile(expr)
			require.NoError(t, err)
			began := time.Now()
			_, err = c.Eval(context.Background(), r)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "cost limit exceeded")
			assert.Less(t, time.Since(began), time.Second)
		})
	}
	// what stays under the limit: a regular expression over the whole body
	c, err := Compile(`body.matches("^x+$") && body.contains("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")`)
	require.NoError(t, err)
	ok, err := c.Eval(context.Background(), r)
	require.NoError(t, err)
	assert.True(t, ok)
}

func TestContextEndsEvaluation(t *testing.T) {
	c, err := Compile(runaways()["nested comprehensions"])
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = c.Eval(ctx, response())
	require.Error(t, err)
}

func TestExplain(t *testing.T) {
	c, err := Compile(`status == 200 && json.status == "ok" && headers["content-type"] == "x" && duration_ms < 1 && json.checks[0].ok`)
	require.NoError(t, err)
	r := response()
	assert.Equal(t, `status=200 duration_ms=12.5 headers["content-type"]="application/json" json.status="ok" json.checks=[{"name":"db","ok":true},{"name":"cache","ok":true}]`,
		c.Explain(r))
	c, err = Compile(`body.startsWith("{") && json.nope == 1 && tls.days_left > 1`)
	require.NoError(t, err)
	r.Body = strings.Repeat("é", 100)
	assert.Equal(t, `tls.days_left=30.5 json.nope=<absent> body="`+strings.Repeat("é", 32)+`…"`, c.Explain(r))
	assert.True(t, c.Uses(varBody))
	assert.False(t, c.Uses(varHeaders))
}

func TestCompileIsCached(t *testing.T) {
	a, err := Compile(`status == 299`)
	require.NoError(t, err)
	b, err := Compile(`status == 299`)
	require.NoError(t, err)
	assert.Same(t, a, b)
}

// BenchmarkCondition measures one evaluation over a 1 KiB JSON body: what
// a probe pays for its condition beyond the request.
func BenchmarkCondition(b *testing.B) {
	body := `{"status":"ok","version":"1.2.3","checks":[` + strings.TrimSuffix(strings.Repeat(`{"name":"db","ok":true,"latency_ms":1.5},`, 24), ",") + `]}`
	r := response()
	r.Body = body
	for _, bc := range []struct{ name, expr string }{
		{"status", `status == 200`},
		{"status_duration", `status == 200 && duration_ms < 250`},
		{"header", `headers["content-type"].startsWith("application/json")`},
		{"body_contains", `body.contains("\"status\":\"ok\"")`},
		{"json_field", `status == 200 && json.status == "ok" && duration_ms < 250`},
		{"json_all", `json.checks.all(c, c.ok && c.latency_ms < 10.0)`},
	} {
		c, err := Compile(bc.expr)
		require.NoError(b, err)
		ctx := context.Background()
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ok, err := c.Eval(ctx, r)
				if err != nil || !ok {
					b.Fatal(ok, err)
				}
			}
		})
	}
	big := response()
	big.Body = strings.Repeat("x", 64<<10)
	for name, expr := range runaways() {
		c, err := Compile(expr)
		require.NoError(b, err)
		b.Run("runaway_"+strings.ReplaceAll(name, " ", "_"), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Eval(context.Background(), big); err == nil {
					b.Fatal("the cost limit did not stop it")
				}
			}
		})
	}
	b.Run("compile", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := compile(`status == 200 && json.status == "ok" && duration_ms < 250`); err != nil {
				b.Fatal(err)
			}
		}
	})
}
