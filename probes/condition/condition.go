// Package condition compiles and evaluates an HTTP probe's condition: a CEL
// expression over one response (SPEC §4). The variables are
//
//	status       int                  the status code
//	headers      map(string, string)  the response headers, names in lower case, values joined with ", "
//	body         string               the body as read (at most 64 KiB)
//	json         dyn                  the body parsed as JSON; null when it is not JSON
//	duration_ms  double               the probe's time so far, from the dial to the end of the body
//	tls          map(string, double)  {"days_left": d} over https, {} over plain http
//
// so `status == 200 && json.status == "ok" && duration_ms < 250`, or
// `!has(tls.days_left) || tls.days_left > 14`. Numbers of different types
// compare (`duration_ms < 250`). Compile type-checks an expression and
// refuses one that is not boolean; Eval runs it under a cost limit, so an
// expression that loops or builds huge strings stops with an error instead
// of spending the host's CPU.
//
// Concurrency contract: a Condition is immutable and safe for concurrent
// use; Compile keeps compiled conditions in a bounded cache shared by every
// caller (a fleet tends to share a few conditions among many instances).
package condition

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/cel-go/cel"
	celast "github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/interpreter"
)

// CostLimit bounds one evaluation in CEL's cost units (about one per
// operation, and a tenth of a unit per byte a string operation touches, per
// byte of the pattern for contains): a regular expression over the whole
// 64 KiB body costs ≈ 6 500–26 000, so several fit; an expression that
// nests comprehensions or concatenates the body over and over stops within
// a few milliseconds of CPU (BENCHMARKS.md, "Response conditions").
const CostLimit = 200_000

// MaxLength bounds an expression's source, as health does (MaxCondition).
const MaxLength = 4096

// Variable names.
const (
	varStatus   = "status"
	varHeaders  = "headers"
	varBody     = "body"
	varJSON     = "json"
	varDuration = "duration_ms"
	varTLS      = "tls"
)

// the order in which a false condition reports what it saw
var varOrder = []string{varStatus, varDuration, varTLS, varHeaders, varJSON, varBody}

var env = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable(varStatus, cel.IntType),
		cel.Variable(varHeaders, cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable(varBody, cel.StringType),
		cel.Variable(varJSON, cel.DynType),
		cel.Variable(varDuration, cel.DoubleType),
		cel.Variable(varTLS, cel.MapType(cel.StringType, cel.DoubleType)),
		cel.CrossTypeNumericComparisons(true),
		cel.ParserExpressionSizeLimit(MaxLength),
	)
})

// Condition is a compiled, type-checked condition.
type Condition struct {
	src   string
	prg   cel.Program
	uses  map[string]bool // variables the expression reads
	paths []path          // what a false condition reports, in varOrder
}

// path is a variable and the fields or keys the expression selects from it
// (json.status, headers["content-type"]).
type path struct {
	root string
	keys []string
}

// String is the expression as written.
func (c *Condition) String() string { return c.src }

// Uses reports whether the expression reads the variable name.
func (c *Condition) Uses(name string) bool { return c.uses[name] }

// cache holds compiled conditions by source. When full it is emptied: a
// fleet with more distinct conditions than fit compiles some again.
var cache = struct {
	sync.Mutex
	m map[string]*Condition
}{m: map[string]*Condition{}}

const cacheMax = 1024

// Compile parses and type-checks expr. Its error is CEL's message, on one
// line, each problem (at most three) with its line and column ("1:8: undeclared reference
// to 'stauts'").
func Compile(expr string) (*Condition, error) {
	cache.Lock()
	c := cache.m[expr]
	cache.Unlock()
	if c != nil {
		return c, nil
	}
	c, err := compile(expr)
	if err != nil {
		return nil, err
	}
	cache.Lock()
	if len(cache.m) >= cacheMax {
		clear(cache.m)
	}
	cache.m[expr] = c
	cache.Unlock()
	return c, nil
}

func compile(expr string) (*Condition, error) {
	if len(expr) > MaxLength {
		return nil, fmt.Errorf("is %d bytes, more than %d", len(expr), MaxLength)
	}
	e, err := env()
	if err != nil {
		return nil, fmt.Errorf("condition: environment: %w", err)
	}
	ast, iss := e.Compile(expr)
	if iss != nil && iss.Err() != nil {
		return nil, errors.New(issues(iss))
	}
	if t := ast.OutputType(); !t.IsExactType(cel.BoolType) && !t.IsExactType(cel.DynType) {
		return nil, fmt.Errorf("must be true or false, but is of type %s", t)
	}
	prg, err := e.Program(ast, cel.CostLimit(CostLimit), cel.InterruptCheckFrequency(64))
	if err != nil {
		return nil, err
	}
	c := &Condition{src: expr, prg: prg, uses: map[string]bool{}}
	c.paths = paths(ast.NativeRep().Expr(), c.uses)
	return c, nil
}

// issues renders CEL's errors without the source excerpt it draws under
// each one.
func issues(iss *cel.Issues) string {
	var parts []string
	for _, e := range iss.Errors() {
		msg := e.Message
		if l := e.Location; l != nil && l.Line() > 0 {
			msg = fmt.Sprintf("%d:%d: %s", l.Line(), l.Column()+1, msg)
		}
		parts = append(parts, msg)
	}
	switch {
	case len(parts) == 0:
		return strings.Join(strings.Fields(iss.String()), " ")
	case len(parts) > 3:
		return strings.Join(parts[:3], "; ") + fmt.Sprintf("; and %d more", len(parts)-3)
	}
	return strings.Join(parts, "; ")
}

// paths finds the longest selections of the variables in the expression,
// marking the variables used.
func paths(root celast.Expr, uses map[string]bool) []path {
	var found []path
	celast.PreOrderVisit(root, celast.NewExprVisitor(func(e celast.Expr) {
		if p, ok := selection(e); ok {
			uses[p.root] = true
			found = append(found, p)
		}
	}))
	// keep the longest of each chain, once
	var out []path
	for _, p := range found {
		longer := false
		for _, q := range found {
			if len(q.keys) > len(p.keys) && q.root == p.root && slices.Equal(q.keys[:len(p.keys)], p.keys) {
				longer = true
				break
			}
		}
		if !longer && !slices.ContainsFunc(out, func(q path) bool { return q.root == p.root && slices.Equal(q.keys, p.keys) }) {
			out = append(out, p)
		}
	}
	slices.SortStableFunc(out, func(a, b path) int { return slices.Index(varOrder, a.root) - slices.Index(varOrder, b.root) })
	if len(out) > 8 {
		out = out[:8]
	}
	return out
}

// selection recognizes a variable, a field of a selection (x.f) and a
// string key of one (x["k"]).
func selection(e celast.Expr) (path, bool) {
	switch e.Kind() {
	case celast.IdentKind:
		if name := e.AsIdent(); slices.Contains(varOrder, name) {
			return path{root: name}, true
		}
	case celast.SelectKind:
		s := e.AsSelect()
		if p, ok := selection(s.Operand()); ok {
			return path{root: p.root, keys: append(slices.Clip(p.keys), s.FieldName())}, true
		}
	case celast.CallKind:
		call := e.AsCall()
		if call.FunctionName() != "_[_]" || len(call.Args()) != 2 || call.Args()[1].Kind() != celast.LiteralKind {
			break
		}
		key, ok := call.Args()[1].AsLiteral().Value().(string)
		if !ok {
			break
		}
		if p, ok := selection(call.Args()[0]); ok {
			return path{root: p.root, keys: append(slices.Clip(p.keys), key)}, true
		}
	}
	return path{}, false
}

// Response is what a condition is evaluated over. Header's names are
// canonical (as net/http keeps them); DaysLeft is read when TLS is set.
type Response struct {
	Status   int
	Header   http.Header
	Body     string
	Duration time.Duration
	TLS      bool
	DaysLeft float64
}

// Eval evaluates the condition over r within ctx and the cost limit. An
// error is an expression that could not be evaluated (a missing key, a
// wrong type, the cost limit, the context ending); a result that is not a
// bool is one too.
func (c *Condition) Eval(ctx context.Context, r *Response) (bool, error) {
	a := &activation{r: r}
	out, _, err := c.prg.ContextEval(ctx, a)
	if err != nil {
		return false, err
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, fmt.Errorf("evaluated to %s, not true or false", out.Type().TypeName())
	}
	return b, nil
}

// Explain says what the condition saw of r: each variable or selection the
// expression reads, with its value (strings and JSON cut to 64 bytes), at
// most about 400 bytes in all.
func (c *Condition) Explain(r *Response) string {
	a := &activation{r: r}
	var b strings.Builder
	for _, p := range c.paths {
		if b.Len() > 400 {
			b.WriteString(" …")
			break
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p.root)
		for _, k := range p.keys {
			if isIdent(k) {
				b.WriteString("." + k)
			} else {
				b.WriteString("[" + strconv.Quote(k) + "]")
			}
		}
		b.WriteByte('=')
		b.WriteString(a.render(p))
	}
	return b.String()
}

func isIdent(k string) bool {
	if k == "" {
		return false
	}
	for i, r := range k {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// render is the value at p, in CEL's notation, or <absent>.
func (a *activation) render(p path) string {
	var v any
	switch p.root {
	case varStatus:
		v = float64(a.r.Status)
	case varDuration:
		v = ms(a.r.Duration)
	case varBody:
		v = a.r.Body
	case varHeaders:
		v = a.headerMap()
	case varTLS:
		v = a.tlsMap()
	case varJSON:
		v = a.jsonValue()
	}
	for _, k := range p.keys {
		switch m := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = m[k]; !ok {
				return "<absent>"
			}
		case map[string]string:
			s, ok := m[k]
			if !ok {
				return "<absent>"
			}
			v = s
		case map[string]float64:
			f, ok := m[k]
			if !ok {
				return "<absent>"
			}
			v = f
		default:
			return "<absent>"
		}
	}
	if s, ok := v.(string); ok {
		return strconv.Quote(cut(s, 64))
	}
	if f, ok := v.(float64); ok {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	j, err := json.Marshal(v)
	if err != nil {
		return "<unprintable>"
	}
	return cut(string(j), 64)
}

func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// activation resolves the variables of one evaluation, building each only
// when the expression reads it (headers as a map, the body parsed as JSON).
type activation struct {
	r       *Response
	headers map[string]string
	parsed  bool
	json    any
}

// ResolveName implements interpreter.Activation.
func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case varStatus:
		return types.Int(a.r.Status), true
	case varDuration:
		return types.Double(ms(a.r.Duration)), true
	case varBody:
		return types.String(a.r.Body), true
	case varHeaders:
		return types.NewStringStringMap(types.DefaultTypeAdapter, a.headerMap()), true
	case varTLS:
		return types.DefaultTypeAdapter.NativeToValue(a.tlsMap()), true
	case varJSON:
		return types.DefaultTypeAdapter.NativeToValue(a.jsonValue()), true
	}
	return nil, false
}

// Parent implements interpreter.Activation.
func (a *activation) Parent() interpreter.Activation { return nil }

func (a *activation) headerMap() map[string]string {
	if a.headers == nil {
		a.headers = make(map[string]string, len(a.r.Header))
		for k, vs := range a.r.Header {
			a.headers[strings.ToLower(k)] = strings.Join(vs, ", ")
		}
	}
	return a.headers
}

func (a *activation) tlsMap() map[string]float64 {
	if !a.r.TLS {
		return map[string]float64{}
	}
	return map[string]float64{"days_left": a.r.DaysLeft}
}

// jsonValue is the body parsed as JSON, nil when it is not JSON.
func (a *activation) jsonValue() any {
	if !a.parsed {
		a.parsed = true
		if err := json.Unmarshal([]byte(a.r.Body), &a.json); err != nil {
			a.json = nil
		}
	}
	return a.json
}
