package health

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"math"
	"mime"
	"net/http"
	"net/netip"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Type is the kind of probe a policy runs.
type Type string

// Probe types.
const (
	TypeNone Type = "none"
	TypeHTTP Type = "http"
	TypeTCP  Type = "tcp"
	TypeExec Type = "exec"
	TypeGRPC Type = "grpc"
)

// Defaults and limits of a policy (SPEC §2).
const (
	DefaultInterval         = 10 * time.Second
	DefaultTimeout          = 2 * time.Second
	DefaultStartPeriod      = 30 * time.Second
	DefaultFailureThreshold = 3
	DefaultSuccessThreshold = 1
	DefaultHTTPPath         = "/"
	DefaultExpectedStatus   = 200

	MinInterval    = time.Second
	MaxInterval    = 24 * time.Hour
	MaxStartPeriod = 24 * time.Hour
	MaxThreshold   = 100

	MaxHeaders       = 32
	MaxHeaderValue   = 4096
	MaxPathLength    = 2048
	MaxHostLength    = 255
	MaxServiceLength = 256
	MaxArgs          = 256
	MaxArgLength     = 4096
	MaxArgvBytes     = 64 << 10
	MaxEnvEntries    = 128
	MaxEnvBytes      = 64 << 10
	MaxWorkingDir    = 4096

	MaxCondition    = 4096     // bytes of an http.condition
	MaxPattern      = 1024     // bytes of an http.body_regex or tcp.expect
	MaxRequestBody  = 64 << 10 // bytes of an http.body
	MaxTCPSend      = 4 << 10  // bytes of tcp.send, once decoded
	MaxCAPEM        = 64 << 10 // bytes of an http.tls.ca_pem bundle
	MaxMinDaysValid = 3650
)

// PolicySpec is a health_check as a client writes it: every field optional,
// durations as Go duration strings. Normalize turns it into a Policy.
type PolicySpec struct {
	Type             string    `json:"type,omitempty"`
	Interval         string    `json:"interval,omitempty"`
	Timeout          string    `json:"timeout,omitempty"`
	StartPeriod      string    `json:"start_period,omitempty"`
	StartInterval    string    `json:"start_interval,omitempty"`
	FailureThreshold *int      `json:"failure_threshold,omitempty"`
	SuccessThreshold *int      `json:"success_threshold,omitempty"`
	HTTP             *HTTPSpec `json:"http,omitempty"`
	TCP              *TCPSpec  `json:"tcp,omitempty"`
	Exec             *ExecSpec `json:"exec,omitempty"`
	GRPC             *GRPCSpec `json:"grpc,omitempty"`
}

// HTTPSpec is the http block of a PolicySpec. ExpectedStatus is a number
// (200) or a string of codes and ranges ("200-299,304"). Condition is a CEL
// expression over the response (SPEC §4); health checks only its size, and
// the probes package compiles it (probes.Validate).
type HTTPSpec struct {
	Port           int               `json:"port"`
	Path           string            `json:"path,omitempty"`
	Scheme         string            `json:"scheme,omitempty"`
	ExpectedStatus json.RawMessage   `json:"expected_status,omitempty"`
	Method         string            `json:"method,omitempty"`
	Headers        map[string]string `json:"headers,omitempty"`
	Host           string            `json:"host,omitempty"`
	TLSSkipVerify  bool              `json:"tls_skip_verify,omitempty"`
	Body           string            `json:"body,omitempty"`
	ContentType    string            `json:"content_type,omitempty"`
	BodyRegex      string            `json:"body_regex,omitempty"`
	Condition      string            `json:"condition,omitempty"`
	TLS            *TLSSpec          `json:"tls,omitempty"`
}

// TLSSpec is the tls block of an https probe: the name the certificate is
// verified against (and sent as SNI), the roots it is verified against
// instead of the system's, and how many days it must still be valid.
type TLSSpec struct {
	ServerName   string `json:"server_name,omitempty"`
	CAPEM        string `json:"ca_pem,omitempty"`
	MinDaysValid int    `json:"min_days_valid,omitempty"`
}

// TCPSpec is the tcp block of a PolicySpec. Send is written with escapes
// (\r \n \t \\ \xNN, see DecodeEscapes); Expect is an RE2 expression the
// first bytes the target sends must match.
type TCPSpec struct {
	Port   int    `json:"port"`
	Send   string `json:"send,omitempty"`
	Expect string `json:"expect,omitempty"`
}

// ExecSpec is the exec block of a PolicySpec.
type ExecSpec struct {
	Command    []string          `json:"command"`
	WorkingDir string            `json:"working_dir,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
}

// GRPCSpec is the grpc block of a PolicySpec.
type GRPCSpec struct {
	Port    int    `json:"port"`
	Service string `json:"service,omitempty"`
}

// Policy is a normalized, valid health_check: defaults filled in. Build one
// with PolicySpec.Normalize; its JSON is the normalized PolicySpec shape, and
// decoding that JSON normalizes it again.
type Policy struct {
	Type             Type
	Interval         time.Duration
	Timeout          time.Duration
	StartPeriod      time.Duration
	StartInterval    time.Duration
	FailureThreshold int
	SuccessThreshold int
	HTTP             *HTTPProbe
	TCP              *TCPProbe
	Exec             *ExecProbe
	GRPC             *GRPCProbe
}

// HTTPProbe is a normalized http block. Body, BodyRegex and Condition are
// as written (the regular expression and the condition are compiled by the
// prober); TLS is nil when no tls block says anything.
type HTTPProbe struct {
	Port           int
	Path           string
	Scheme         string
	ExpectedStatus StatusSet
	Method         string
	Headers        map[string]string
	Host           string
	TLSSkipVerify  bool
	Body           string
	ContentType    string
	BodyRegex      string
	Condition      string
	TLS            *TLSSpec
}

// TCPProbe is a normalized tcp block. Send is as written (escaped); a probe
// with neither Send nor Expect only connects.
type TCPProbe struct {
	Port   int
	Send   string
	Expect string
}

// Dialogue reports whether the probe talks to its target rather than only
// connecting.
func (t *TCPProbe) Dialogue() bool { return t.Send != "" || t.Expect != "" }

// ExecProbe is a normalized exec block.
type ExecProbe struct {
	Command    []string
	WorkingDir string
	Env        map[string]string
}

// GRPCProbe is a normalized grpc block.
type GRPCProbe struct {
	Port    int
	Service string
}

// Enabled reports whether the policy runs probes.
func (p *Policy) Enabled() bool { return p != nil && p.Type != TypeNone && p.Type != "" }

// Equal reports whether two policies are the same (nil is the disabled policy).
func (p *Policy) Equal(q *Policy) bool {
	if !p.Enabled() || !q.Enabled() {
		return p.Enabled() == q.Enabled()
	}
	return reflect.DeepEqual(p, q)
}

// Port is the network port the policy probes (0 for exec and none).
func (p *Policy) Port() int {
	switch {
	case p.HTTP != nil:
		return p.HTTP.Port
	case p.TCP != nil:
		return p.TCP.Port
	case p.GRPC != nil:
		return p.GRPC.Port
	}
	return 0
}

// Spec returns the normalized policy in its wire shape.
func (p *Policy) Spec() PolicySpec {
	s := PolicySpec{Type: string(p.Type)}
	if p.Type == TypeNone {
		return s
	}
	s.Interval = p.Interval.String()
	s.Timeout = p.Timeout.String()
	s.StartPeriod = p.StartPeriod.String()
	s.StartInterval = p.StartInterval.String()
	ft, st := p.FailureThreshold, p.SuccessThreshold
	s.FailureThreshold, s.SuccessThreshold = &ft, &st
	if h := p.HTTP; h != nil {
		s.HTTP = &HTTPSpec{Port: h.Port, Path: h.Path, Scheme: h.Scheme, ExpectedStatus: h.ExpectedStatus.raw(),
			Method: h.Method, Headers: h.Headers, Host: h.Host, TLSSkipVerify: h.TLSSkipVerify,
			Body: h.Body, ContentType: h.ContentType, BodyRegex: h.BodyRegex, Condition: h.Condition}
		if h.TLS != nil {
			t := *h.TLS
			s.HTTP.TLS = &t
		}
	}
	if t := p.TCP; t != nil {
		s.TCP = &TCPSpec{Port: t.Port, Send: t.Send, Expect: t.Expect}
	}
	if e := p.Exec; e != nil {
		s.Exec = &ExecSpec{Command: e.Command, WorkingDir: e.WorkingDir, Env: e.Env}
	}
	if g := p.GRPC; g != nil {
		s.GRPC = &GRPCSpec{Port: g.Port, Service: g.Service}
	}
	return s
}

// MarshalJSON writes the normalized policy in the PolicySpec shape.
func (p Policy) MarshalJSON() ([]byte, error) { return json.Marshal(p.Spec()) }

// MarshalJSONTo writes the normalized policy as MarshalJSON does, for json
// v2 (the store's encoder).
func (p Policy) MarshalJSONTo(enc *jsontext.Encoder) error {
	return jsonv2.MarshalEncode(enc, p.Spec())
}

// UnmarshalJSON reads a PolicySpec and normalizes it.
func (p *Policy) UnmarshalJSON(b []byte) error { return readNormalized[PolicySpec](fromBytes(b), p) }

// Normalize validates the spec and fills in defaults. Field names in errors
// are prefixed with "health_check.".
func (s PolicySpec) Normalize() (Policy, error) {
	return s.normalize("health_check")
}

func (s PolicySpec) normalize(prefix string) (Policy, error) {
	dot := prefix + "."
	f := func(name string) string { return dot + name }
	typ, err := s.inferType(f)
	if err != nil {
		return Policy{}, err
	}
	if typ == TypeNone {
		return Policy{Type: TypeNone}, nil
	}
	p := Policy{Type: typ}
	if p.Interval, err = parseDuration(dot, "interval", s.Interval, DefaultInterval); err != nil {
		return Policy{}, err
	}
	if p.Interval < MinInterval {
		return Policy{}, fieldErr(f("interval"), "must be at least %s", MinInterval)
	}
	if p.Interval > MaxInterval {
		return Policy{}, fieldErr(f("interval"), "must be at most %s", MaxInterval)
	}
	// the default timeout fits the interval; an explicit one must
	if p.Timeout, err = parseDuration(dot, "timeout", s.Timeout, min(DefaultTimeout, p.Interval)); err != nil {
		return Policy{}, err
	}
	if p.Timeout <= 0 {
		return Policy{}, fieldErr(f("timeout"), "must be greater than 0")
	}
	if p.Timeout > p.Interval {
		return Policy{}, fieldErr(f("timeout"), "must be less than or equal to %s", f("interval"))
	}
	if p.StartPeriod, err = parseDuration(dot, "start_period", s.StartPeriod, DefaultStartPeriod); err != nil {
		return Policy{}, err
	}
	if p.StartPeriod < 0 {
		return Policy{}, fieldErr(f("start_period"), "must be greater than or equal to 0")
	}
	if p.StartPeriod > MaxStartPeriod {
		return Policy{}, fieldErr(f("start_period"), "must be at most %s", MaxStartPeriod)
	}
	if p.StartInterval, err = parseDuration(dot, "start_interval", s.StartInterval, defaultStartInterval(p.Interval)); err != nil {
		return Policy{}, err
	}
	if p.StartInterval < MinInterval {
		return Policy{}, fieldErr(f("start_interval"), "must be at least %s", MinInterval)
	}
	if p.StartInterval > p.Interval {
		return Policy{}, fieldErr(f("start_interval"), "must be less than or equal to %s", f("interval"))
	}
	if p.FailureThreshold, err = threshold(dot, "failure_threshold", s.FailureThreshold, DefaultFailureThreshold); err != nil {
		return Policy{}, err
	}
	if p.SuccessThreshold, err = threshold(dot, "success_threshold", s.SuccessThreshold, DefaultSuccessThreshold); err != nil {
		return Policy{}, err
	}
	switch typ {
	case TypeHTTP:
		p.HTTP, err = normalizeHTTP(f("http"), s.HTTP)
	case TypeTCP:
		p.TCP, err = normalizeTCP(f("tcp"), s.TCP)
	case TypeExec:
		p.Exec, err = normalizeExec(f("exec"), s.Exec)
	case TypeGRPC:
		p.GRPC, err = normalizeGRPC(f("grpc"), s.GRPC)
	}
	if err != nil {
		return Policy{}, err
	}
	return p, nil
}

func (s PolicySpec) inferType(f func(string) string) (Type, error) {
	var blocks []Type
	if s.HTTP != nil {
		blocks = append(blocks, TypeHTTP)
	}
	if s.TCP != nil {
		blocks = append(blocks, TypeTCP)
	}
	if s.Exec != nil {
		blocks = append(blocks, TypeExec)
	}
	if s.GRPC != nil {
		blocks = append(blocks, TypeGRPC)
	}
	if len(blocks) > 1 {
		return "", fieldErr(f(string(blocks[1])), "conflicts with %s: give exactly one probe block", f(string(blocks[0])))
	}
	switch t := Type(s.Type); t {
	case "":
		if len(blocks) == 0 {
			return "", fieldErr(f("type"), "is required when no probe block (http, tcp, exec, grpc) is given")
		}
		return blocks[0], nil
	case TypeNone:
		if len(blocks) == 1 {
			return "", fieldErr(f(string(blocks[0])), "must not be set when %s is none", f("type"))
		}
		return TypeNone, nil
	case TypeHTTP, TypeTCP, TypeExec, TypeGRPC:
		if len(blocks) == 0 {
			return "", fieldErr(f(string(t)), "is required when %s is %s", f("type"), t)
		}
		if blocks[0] != t {
			return "", fieldErr(f(string(blocks[0])), "contradicts %s %s", f("type"), t)
		}
		return t, nil
	default:
		return "", fieldErr(f("type"), "must be one of none, http, tcp, exec, grpc (got %q)", s.Type)
	}
}

func defaultStartInterval(interval time.Duration) time.Duration {
	return min(max(interval/5, MinInterval), interval)
}

// parseDuration, threshold and checkPort name their field prefix+name, made
// only for an error: a spec is normalized at every registration and start.
func parseDuration(prefix, name, s string, def time.Duration) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fieldErr(prefix+name, "must be a duration such as \"10s\" (got %q)", s)
	}
	return d, nil
}

func threshold(prefix, name string, v *int, def int) (int, error) {
	if v == nil {
		return def, nil
	}
	if *v < 1 || *v > MaxThreshold {
		return 0, fieldErr(prefix+name, "must be between 1 and %d (got %d)", MaxThreshold, *v)
	}
	return *v, nil
}

func checkPort(prefix, name string, port int) error {
	if port < 1 || port > 65535 {
		return fieldErr(prefix+name, "must be between 1 and 65535 (got %d)", port)
	}
	return nil
}

func normalizeHTTP(prefix string, s *HTTPSpec) (*HTTPProbe, error) {
	f := func(name string) string { return prefix + "." + name }
	if err := checkPort(prefix, ".port", s.Port); err != nil {
		return nil, err
	}
	h := &HTTPProbe{Port: s.Port, Path: s.Path, Scheme: strings.ToLower(s.Scheme), Method: strings.ToUpper(s.Method),
		Host: s.Host, TLSSkipVerify: s.TLSSkipVerify}
	if h.Path == "" {
		h.Path = DefaultHTTPPath
	}
	if !strings.HasPrefix(h.Path, "/") {
		return nil, fieldErr(f("path"), "must start with / (got %q)", s.Path)
	}
	if len(h.Path) > MaxPathLength {
		return nil, fieldErr(f("path"), "must be at most %d bytes", MaxPathLength)
	}
	if i := strings.IndexFunc(h.Path, func(r rune) bool { return r <= ' ' || r == 0x7f }); i >= 0 {
		return nil, fieldErr(f("path"), "must not contain spaces or control characters")
	}
	switch h.Scheme {
	case "":
		h.Scheme = "http"
	case "http", "https":
	default:
		return nil, fieldErr(f("scheme"), "must be http or https (got %q)", s.Scheme)
	}
	switch h.Method {
	case "":
		h.Method = http.MethodGet
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut:
	default:
		return nil, fieldErr(f("method"), "must be GET, HEAD, POST or PUT (got %q)", s.Method)
	}
	var err error
	if h.ExpectedStatus, err = parseExpectedStatus(f("expected_status"), s.ExpectedStatus); err != nil {
		return nil, err
	}
	if len(h.Host) > MaxHostLength || strings.ContainsFunc(h.Host, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '/' }) {
		return nil, fieldErr(f("host"), "must be a host name of at most %d bytes without spaces or slashes", MaxHostLength)
	}
	if len(s.Headers) > MaxHeaders {
		return nil, fieldErr(f("headers"), "must have at most %d entries (got %d)", MaxHeaders, len(s.Headers))
	}
	if len(s.Headers) > 0 {
		h.Headers = make(map[string]string, len(s.Headers))
		for _, k := range slices.Sorted(maps.Keys(s.Headers)) { // the same input, the same error
			v := s.Headers[k]
			if !validHeaderName(k) {
				return nil, fieldErr(f("headers"), "has an invalid header name %q", k)
			}
			if len(v) > MaxHeaderValue || strings.ContainsAny(v, "\r\n\x00") {
				return nil, fieldErr(f("headers."+k), "must be at most %d bytes without CR, LF or NUL", MaxHeaderValue)
			}
			h.Headers[k] = v
		}
	}
	if err := normalizeRequestBody(f, s, h); err != nil {
		return nil, err
	}
	if s.BodyRegex != "" {
		if err := checkPattern(f("body_regex"), s.BodyRegex); err != nil {
			return nil, err
		}
		h.BodyRegex = s.BodyRegex
	}
	if s.Condition != "" {
		if len(s.Condition) > MaxCondition {
			return nil, fieldErr(f("condition"), "must be at most %d bytes", MaxCondition)
		}
		if strings.TrimSpace(s.Condition) == "" {
			return nil, fieldErr(f("condition"), "must be a CEL expression, not only spaces")
		}
		h.Condition = s.Condition
	}
	if h.TLS, err = normalizeTLS(f, s, h); err != nil {
		return nil, err
	}
	return h, nil
}

// normalizeRequestBody checks what a POST or PUT sends.
func normalizeRequestBody(f func(string) string, s *HTTPSpec, h *HTTPProbe) error {
	sends := h.Method == http.MethodPost || h.Method == http.MethodPut
	if s.Body != "" {
		if !sends {
			return fieldErr(f("body"), "must be left out unless %s is POST or PUT", f("method"))
		}
		if len(s.Body) > MaxRequestBody {
			return fieldErr(f("body"), "must be at most %d bytes", MaxRequestBody)
		}
		h.Body = s.Body
	}
	if s.ContentType == "" {
		return nil
	}
	if !sends {
		return fieldErr(f("content_type"), "must be left out unless %s is POST or PUT", f("method"))
	}
	if _, _, err := mime.ParseMediaType(s.ContentType); err != nil || len(s.ContentType) > MaxHeaderValue ||
		strings.ContainsAny(s.ContentType, "\r\n\x00") {
		return fieldErr(f("content_type"), "must be a media type such as \"application/json\" (got %q)", truncateForMessage(s.ContentType))
	}
	for k := range h.Headers {
		if strings.EqualFold(k, "Content-Type") {
			return fieldErr(f("content_type"), "conflicts with %s: give the content type once", f("headers."+k))
		}
	}
	h.ContentType = s.ContentType
	return nil
}

// normalizeTLS checks the tls block; an empty one is no block.
func normalizeTLS(f func(string) string, s *HTTPSpec, h *HTTPProbe) (*TLSSpec, error) {
	if s.TLS == nil || *s.TLS == (TLSSpec{}) {
		return nil, nil
	}
	t := *s.TLS
	if h.Scheme != "https" {
		return nil, fieldErr(f("tls"), "must be left out unless %s is https", f("scheme"))
	}
	if t.ServerName != "" && !validServerName(t.ServerName) {
		return nil, fieldErr(f("tls.server_name"), "must be a DNS name or an IP address of at most %d bytes (got %q)",
			MaxHostLength, truncateForMessage(t.ServerName))
	}
	if t.CAPEM != "" {
		if h.TLSSkipVerify {
			return nil, fieldErr(f("tls.ca_pem"), "conflicts with %s: a certificate that is not verified needs no roots", f("tls_skip_verify"))
		}
		if err := checkCAPEM(f("tls.ca_pem"), t.CAPEM); err != nil {
			return nil, err
		}
	}
	if t.MinDaysValid < 0 || t.MinDaysValid > MaxMinDaysValid {
		return nil, fieldErr(f("tls.min_days_valid"), "must be between 1 and %d (got %d)", MaxMinDaysValid, t.MinDaysValid)
	}
	return &t, nil
}

// validServerName accepts a DNS name (letters, digits, hyphens, dots,
// underscores) or an IP address.
func validServerName(name string) bool {
	if _, err := netip.ParseAddr(name); err == nil {
		return true
	}
	if len(name) > MaxHostLength || strings.HasPrefix(name, ".") || strings.Contains(name, "..") {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// checkCAPEM accepts a bundle of one or more PEM certificates and nothing else.
func checkCAPEM(field, bundle string) error {
	if len(bundle) > MaxCAPEM {
		return fieldErr(field, "must be at most %d bytes", MaxCAPEM)
	}
	rest, n := []byte(bundle), 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return fieldErr(field, "must hold only CERTIFICATE blocks (found a %s block)", truncateForMessage(block.Type))
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fieldErr(field, "has a certificate that does not parse (certificate %d: %v)", n+1, err)
		}
		n++
	}
	if n == 0 {
		return fieldErr(field, "must hold at least one PEM certificate (-----BEGIN CERTIFICATE-----)")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return fieldErr(field, "has text after its last certificate that is not PEM")
	}
	return nil
}

// checkPattern checks an RE2 regular expression.
func checkPattern(field, pattern string) error {
	if len(pattern) > MaxPattern {
		return fieldErr(field, "must be at most %d bytes", MaxPattern)
	}
	if _, err := regexp.Compile(pattern); err != nil {
		return fieldErr(field, "must be an RE2 regular expression: %s", strings.TrimPrefix(err.Error(), "error parsing regexp: "))
	}
	return nil
}

func normalizeTCP(prefix string, s *TCPSpec) (*TCPProbe, error) {
	f := func(name string) string { return prefix + "." + name }
	if err := checkPort(prefix, ".port", s.Port); err != nil {
		return nil, err
	}
	t := &TCPProbe{Port: s.Port, Send: s.Send, Expect: s.Expect}
	if s.Send != "" {
		b, err := DecodeEscapes(s.Send)
		if err != nil {
			return nil, fieldErr(f("send"), "%v", err)
		}
		if len(b) > MaxTCPSend {
			return nil, fieldErr(f("send"), "must be at most %d bytes once decoded", MaxTCPSend)
		}
		if s.Expect == "" {
			return nil, fieldErr(f("send"), "needs %s: a probe that sends checks the answer", f("expect"))
		}
	}
	if s.Expect != "" {
		if err := checkPattern(f("expect"), s.Expect); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// DecodeEscapes decodes tcp.send: \r, \n, \t, \\ and \xNN (two hex
// digits, any byte) stand for what they do in Go; any other backslash is an
// error, and so is a string that is not valid UTF-8.
func DecodeEscapes(s string) ([]byte, error) {
	if !utf8.ValidString(s) {
		return nil, errors.New("must be valid UTF-8 (write other bytes as \\xNN)")
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		if i+1 >= len(s) {
			return nil, errors.New("ends with a lone backslash (write \\\\ for one)")
		}
		i++
		switch s[i] {
		case 'r':
			out = append(out, '\r')
		case 'n':
			out = append(out, '\n')
		case 't':
			out = append(out, '\t')
		case '\\':
			out = append(out, '\\')
		case 'x':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return nil, fmt.Errorf("has \\x not followed by two hex digits at byte %d", i-1)
			}
			v, _ := strconv.ParseUint(s[i+1:i+3], 16, 8)
			out = append(out, byte(v))
			i += 2
		default:
			return nil, fmt.Errorf("has an unknown escape \\%c at byte %d (known: \\r \\n \\t \\\\ \\xNN)", s[i], i-1)
		}
	}
	return out, nil
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

func validHeaderName(k string) bool {
	if k == "" || len(k) > 256 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
		if !ok {
			return false
		}
	}
	return true
}

func normalizeExec(prefix string, s *ExecSpec) (*ExecProbe, error) {
	f := func(name string) string { return prefix + "." + name }
	if len(s.Command) == 0 || s.Command[0] == "" {
		return nil, fieldErr(f("command"), "must be a non-empty argv whose first element names the program")
	}
	if len(s.Command) > MaxArgs {
		return nil, fieldErr(f("command"), "must have at most %d arguments (got %d)", MaxArgs, len(s.Command))
	}
	total := 0
	for i, a := range s.Command {
		if len(a) > MaxArgLength || strings.IndexByte(a, 0) >= 0 {
			return nil, fieldErr(fmt.Sprintf("%s[%d]", f("command"), i), "must be at most %d bytes without NUL", MaxArgLength)
		}
		total += len(a)
	}
	if total > MaxArgvBytes {
		return nil, fieldErr(f("command"), "must total at most %d bytes", MaxArgvBytes)
	}
	e := &ExecProbe{Command: append([]string(nil), s.Command...), WorkingDir: s.WorkingDir}
	if e.WorkingDir != "" && (!strings.HasPrefix(e.WorkingDir, "/") || len(e.WorkingDir) > MaxWorkingDir || strings.IndexByte(e.WorkingDir, 0) >= 0) {
		return nil, fieldErr(f("working_dir"), "must be an absolute path of at most %d bytes", MaxWorkingDir)
	}
	if len(s.Env) > MaxEnvEntries {
		return nil, fieldErr(f("env"), "must have at most %d entries (got %d)", MaxEnvEntries, len(s.Env))
	}
	if len(s.Env) > 0 {
		e.Env = make(map[string]string, len(s.Env))
		size := 0
		for _, k := range slices.Sorted(maps.Keys(s.Env)) { // the same input, the same error
			v := s.Env[k]
			if k == "" || strings.ContainsAny(k, "=\x00") {
				return nil, fieldErr(f("env"), "has an invalid variable name %q", k)
			}
			if strings.IndexByte(v, 0) >= 0 {
				return nil, fieldErr(f("env."+k), "must not contain NUL")
			}
			size += len(k) + len(v)
			e.Env[k] = v
		}
		if size > MaxEnvBytes {
			return nil, fieldErr(f("env"), "must total at most %d bytes", MaxEnvBytes)
		}
	}
	return e, nil
}

func normalizeGRPC(prefix string, s *GRPCSpec) (*GRPCProbe, error) {
	if err := checkPort(prefix, ".port", s.Port); err != nil {
		return nil, err
	}
	if len(s.Service) > MaxServiceLength || strings.ContainsFunc(s.Service, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return nil, fieldErr(prefix+".service", "must be at most %d bytes without control characters", MaxServiceLength)
	}
	return &GRPCProbe{Port: s.Port, Service: s.Service}, nil
}

// StatusSet is a set of HTTP status codes: a single code, or codes and
// inclusive ranges ("200-299,304"). The zero value matches 200.
type StatusSet struct {
	ranges [8][2]uint16
	n      int
	text   string // non-empty when written as a string
}

const maxStatusRanges = 8

// Contains reports whether code is in the set.
func (s StatusSet) Contains(code int) bool {
	if s.n == 0 {
		return code == DefaultExpectedStatus
	}
	for i := 0; i < s.n; i++ {
		if code >= int(s.ranges[i][0]) && code <= int(s.ranges[i][1]) {
			return true
		}
	}
	return false
}

// String renders the set as it is written ("200" or "200-299,304").
func (s StatusSet) String() string {
	if s.text != "" {
		return s.text
	}
	if s.n == 0 {
		return strconv.Itoa(DefaultExpectedStatus)
	}
	return strconv.Itoa(int(s.ranges[0][0]))
}

func (s StatusSet) raw() json.RawMessage {
	if s.text != "" {
		b, _ := json.Marshal(s.text)
		return b
	}
	return json.RawMessage(s.String())
}

func parseExpectedStatus(field string, raw json.RawMessage) (StatusSet, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return StatusSet{ranges: [8][2]uint16{{200, 200}}, n: 1}, nil
	}
	if raw[0] == '"' {
		var text string
		if err := json.Unmarshal(raw, &text); err != nil {
			return StatusSet{}, fieldErr(field, "must be a status code or a string such as \"200-299,304\"")
		}
		return ParseStatusSet(field, text)
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil || f != math.Trunc(f) {
		return StatusSet{}, fieldErr(field, "must be a status code or a string such as \"200-299,304\"")
	}
	if f < 100 || f > 599 {
		return StatusSet{}, fieldErr(field, "must be between 100 and 599 (got %v)", f)
	}
	return StatusSet{ranges: [8][2]uint16{{uint16(f), uint16(f)}}, n: 1}, nil
}

// ParseStatusSet parses "200", "200-299" or "200-299,304" (at most 8 parts,
// each code 100–599). field names the field in errors.
func ParseStatusSet(field, text string) (StatusSet, error) {
	var s StatusSet
	parts := strings.Split(text, ",")
	if len(parts) > maxStatusRanges {
		return StatusSet{}, fieldErr(field, "must have at most %d codes or ranges", maxStatusRanges)
	}
	for _, part := range parts {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, errA := strconv.Atoi(strings.TrimSpace(lo))
		b := a
		var errB error
		if isRange {
			b, errB = strconv.Atoi(strings.TrimSpace(hi))
		}
		if errA != nil || errB != nil {
			return StatusSet{}, fieldErr(field, "must be codes and ranges such as \"200-299,304\" (bad part %q)", part)
		}
		if a < 100 || a > 599 || b < 100 || b > 599 || a > b {
			return StatusSet{}, fieldErr(field, "has an out-of-order or out-of-range part %q (codes are 100-599)", part)
		}
		s.ranges[s.n] = [2]uint16{uint16(a), uint16(b)}
		s.n++
	}
	canon := make([]string, s.n)
	for i := 0; i < s.n; i++ {
		if s.ranges[i][0] == s.ranges[i][1] {
			canon[i] = strconv.Itoa(int(s.ranges[i][0]))
		} else {
			canon[i] = fmt.Sprintf("%d-%d", s.ranges[i][0], s.ranges[i][1])
		}
	}
	s.text = strings.Join(canon, ",")
	return s, nil
}
