package health

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Outcome is how one probe ended.
type Outcome string

// Probe outcomes. Skipped never changes counters.
const (
	Success Outcome = "success"
	Failure Outcome = "failure"
	Skipped Outcome = "skipped"
)

// Reason is a machine-readable reason code for a failure, a skip or a
// transition.
type Reason string

// Reason codes.
const (
	ReasonTimeout           Reason = "timeout"
	ReasonConnectionRefused Reason = "connection_refused"
	ReasonUnreachable       Reason = "unreachable"
	ReasonStatusMismatch    Reason = "status_mismatch"
	ReasonTLS               Reason = "tls_error"
	ReasonExitNonzero       Reason = "exit_nonzero"
	ReasonExecError         Reason = "exec_error"
	ReasonAgentUnreachable  Reason = "agent_unreachable"
	ReasonNotServing        Reason = "not_serving"
	ReasonIOError           Reason = "io_error"
	ReasonPanic             Reason = "probe_panic"
	ReasonUnsupported       Reason = "unsupported"
	ReasonBudgetFull        Reason = "budget_full"
	ReasonInactive          Reason = "inactive"
	ReasonDisabled          Reason = "disabled"
	ReasonCanceled          Reason = "canceled"
	ReasonBodyMismatch      Reason = "body_mismatch"    // http.body_regex did not match
	ReasonConditionFailed   Reason = "condition_failed" // http.condition was false
	ReasonConditionError    Reason = "condition_error"  // http.condition could not be evaluated
	ReasonCertExpiring      Reason = "cert_expiring"    // the chain expires within http.tls.min_days_valid
	ReasonExpectMismatch    Reason = "expect_mismatch"  // tcp.expect did not match the answer

	// Reasons of transitions that no probe caused.
	ReasonLifecycle     Reason = "lifecycle"
	ReasonPolicyChanged Reason = "policy_changed"
	ReasonNewWindow     Reason = "new_window"
	ReasonRegistered    Reason = "registered"
	ReasonDeleted       Reason = "deleted"
)

// Bounds of what a result keeps.
const (
	MaxLastError = 512
	MaxOutput    = 4 << 10
	HistorySize  = 10
)

// Duration is a time.Duration written in JSON as a Go duration string.
type Duration time.Duration

// MarshalJSON writes "1.5s".
func (d Duration) MarshalJSON() ([]byte, error) {
	return strconv.AppendQuote(nil, time.Duration(d).String()), nil
}

// MarshalJSONTo writes "1.5s", for json v2 (the store's encoder).
func (d Duration) MarshalJSONTo(enc *jsontext.Encoder) error {
	return enc.WriteToken(jsontext.String(time.Duration(d).String()))
}

// UnmarshalJSON reads "1.5s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"1.5s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Result is what one probe observed. CertNotAfter (https) is when the
// first certificate of the target's chain expires; Phases (http) is how
// long each part of the exchange took.
type Result struct {
	Outcome      Outcome   `json:"outcome"`
	Reason       Reason    `json:"reason,omitempty"`
	Message      string    `json:"message,omitempty"`
	Start        time.Time `json:"start"`
	Duration     Duration  `json:"duration"`
	HTTPStatus   int       `json:"http_status,omitempty"`
	ExitCode     *int      `json:"exit_code,omitempty"`
	Output       string    `json:"output,omitempty"`
	Truncated    bool      `json:"output_truncated,omitempty"`
	CertNotAfter time.Time `json:"cert_not_after,omitzero"`
	Phases       Phases    `json:"phases,omitzero"`
}

// Phases are the parts of an HTTP probe: the TCP handshake, the TLS
// handshake (https) and the wait from the request written to the first byte
// of the response. Written in JSON as milliseconds ({"connect_ms": 0.21,
// "tls_ms": 1.4, "first_byte_ms": 0.35}), each left out when zero.
type Phases struct {
	Connect   time.Duration
	TLS       time.Duration
	FirstByte time.Duration
}

// IsZero reports whether no phase was measured.
func (p Phases) IsZero() bool { return p == Phases{} }

type phasesJSON struct {
	Connect   float64 `json:"connect_ms,omitempty"`
	TLS       float64 `json:"tls_ms,omitempty"`
	FirstByte float64 `json:"first_byte_ms,omitempty"`
}

func toMS(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fromMS(ms float64) time.Duration {
	return time.Duration(math.Round(ms * float64(time.Millisecond)))
}

// MarshalJSON writes the phases in milliseconds.
func (p Phases) MarshalJSON() ([]byte, error) {
	return json.Marshal(phasesJSON{Connect: toMS(p.Connect), TLS: toMS(p.TLS), FirstByte: toMS(p.FirstByte)})
}

// UnmarshalJSON reads phases in milliseconds.
func (p *Phases) UnmarshalJSON(b []byte) error {
	var j phasesJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*p = Phases{Connect: fromMS(j.Connect), TLS: fromMS(j.TLS), FirstByte: fromMS(j.FirstByte)}
	return nil
}

// TruncateUTF8 returns at most the first n bytes of s, cut on a rune
// boundary: at most utf8.UTFMax-1 bytes short of n, however invalid s is.
func TruncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && i > n-(utf8.UTFMax-1) && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i]
}

// TailUTF8 returns at most the last n bytes of s, starting on a rune
// boundary: at most utf8.UTFMax-1 bytes short of n, however invalid s is
// (bytes that start no rune are kept rather than all dropped).
func TailUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	start := len(s) - n
	i := start
	for i < len(s) && i < start+utf8.UTFMax-1 && !utf8.RuneStart(s[i]) {
		i++
	}
	return s[i:]
}

// History is a ring of the last HistorySize results. It keeps each result
// compactly — times as integers, outcome and reason as codes, without
// pointers — because every instance holds one and the garbage collector
// scans them all. The texts of results that carry any (a message, output, a
// reason outside the known codes, a certificate's expiry; an HTTP probe's
// phases with them) live in one array beside the ring; an HTTP probe's
// phases alone, as most of its results have, in another, packed into a
// word each. Both are allocated only when needed and never changed once
// shared: a History copied into a snapshot keeps what it had. Adding a
// plain result to a history without texts or phases allocates nothing; a
// result with phases alone, the one array.
type History struct {
	buf    [HistorySize]entry
	texts  *[HistorySize]*entryText   // nil when no held result has text
	phases *[HistorySize]packedPhases // nil when no held result has packed phases
	next   uint8
	n      uint8
}

// packedPhases is a result's phases in microseconds, 21 bits each (up to
// 2.097151 s): connect, TLS, first byte from the low bits. 0: none.
type packedPhases uint64

const (
	phaseBits = 21
	phaseMax  = 1<<phaseBits - 1 // µs
)

// packPhases packs p, reporting false when a phase does not fit: negative,
// not whole microseconds, or longer than phaseMax.
func packPhases(p Phases) (packedPhases, bool) {
	var q packedPhases
	for i, d := range [3]time.Duration{p.Connect, p.TLS, p.FirstByte} {
		us := d / time.Microsecond
		if d < 0 || d%time.Microsecond != 0 || us > phaseMax {
			return 0, false
		}
		q |= packedPhases(us) << (i * phaseBits)
	}
	return q, true
}

func (q packedPhases) unpack() Phases {
	at := func(i int) time.Duration { return time.Duration(q>>(i*phaseBits)&phaseMax) * time.Microsecond }
	return Phases{Connect: at(0), TLS: at(1), FirstByte: at(2)}
}

// entry is one result as History keeps it (24 bytes).
type entry struct {
	start, dur int64 // unix nanoseconds, nanoseconds
	exit       int32
	http       int16
	outcome    uint8 // index in outcomeCodes; hasExit set when exit is valid
	reason     uint8 // index in reasonCodes; otherReason: in the texts
}

const hasExit = 0x80

// entryText is the rarely present part of a result: its texts, and what
// only HTTP probes measure.
type entryText struct {
	reason       Reason
	message      string
	output       string
	truncated    bool
	certNotAfter int64 // unix seconds (a certificate's times are in seconds, up to the year 9999); 0: none
	phases       Phases
}

var outcomeCodes = [...]Outcome{"", Success, Failure, Skipped}

var reasonCodes = [...]Reason{"", ReasonTimeout, ReasonConnectionRefused, ReasonUnreachable, ReasonStatusMismatch,
	ReasonTLS, ReasonExitNonzero, ReasonExecError, ReasonAgentUnreachable, ReasonNotServing, ReasonIOError,
	ReasonPanic, ReasonUnsupported, ReasonBudgetFull, ReasonInactive, ReasonDisabled, ReasonCanceled,
	ReasonBodyMismatch, ReasonConditionFailed, ReasonConditionError, ReasonCertExpiring, ReasonExpectMismatch}

const otherReason = 255

func codeOf[T comparable](codes []T, v T) (uint8, bool) {
	for i, c := range codes {
		if c == v {
			return uint8(i), true
		}
	}
	return 0, false
}

// pack is r as History keeps it: the entry, and either its text or its
// packed phases (or neither).
func pack(r *Result) (entry, *entryText, packedPhases) {
	e := entry{dur: int64(r.Duration), http: int16(min(max(r.HTTPStatus, 0), math.MaxInt16))}
	if !r.Start.IsZero() {
		e.start = r.Start.UnixNano()
	}
	e.outcome, _ = codeOf(outcomeCodes[:], r.Outcome)
	if r.ExitCode != nil {
		e.exit = int32(min(max(*r.ExitCode, math.MinInt32), math.MaxInt32))
		e.outcome |= hasExit
	}
	code, known := codeOf(reasonCodes[:], r.Reason)
	e.reason = code
	if !known {
		e.reason = otherReason
	}
	if known && r.Message == "" && r.Output == "" && !r.Truncated && r.CertNotAfter.IsZero() {
		if q, fits := packPhases(r.Phases); fits {
			return e, nil, q
		}
	}
	x := &entryText{message: r.Message, output: r.Output, truncated: r.Truncated, phases: r.Phases}
	if !r.CertNotAfter.IsZero() {
		x.certNotAfter = r.CertNotAfter.Unix()
	}
	if !known {
		x.reason = r.Reason
	}
	return e, x, 0
}

func (e *entry) unpack(x *entryText, q packedPhases) Result {
	r := Result{Duration: Duration(e.dur), HTTPStatus: int(e.http), Outcome: outcomeCodes[e.outcome&^hasExit]}
	if e.start != 0 {
		r.Start = time.Unix(0, e.start).UTC()
	}
	if e.outcome&hasExit != 0 {
		code := int(e.exit)
		r.ExitCode = &code
	}
	if e.reason != otherReason {
		r.Reason = reasonCodes[e.reason]
	}
	if q != 0 {
		r.Phases = q.unpack()
	}
	if x != nil {
		if e.reason == otherReason {
			r.Reason = x.reason
		}
		r.Message, r.Output, r.Truncated, r.Phases = x.message, x.output, x.truncated, x.phases
		if x.certNotAfter != 0 {
			r.CertNotAfter = time.Unix(x.certNotAfter, 0).UTC()
		}
	}
	return r
}

// text is the text of the result in slot i, if any.
func (h *History) text(i int) *entryText {
	if h.texts == nil {
		return nil
	}
	return h.texts[i]
}

// phasesAt are the packed phases of the result in slot i, if any.
func (h *History) phasesAt(i int) packedPhases {
	if h.phases == nil {
		return 0
	}
	return h.phases[i]
}

// Add records r, dropping the oldest result when full.
func (h *History) Add(r Result) {
	e, x, q := pack(&r)
	i := int(h.next)
	h.buf[i] = e
	if q != 0 || h.phasesAt(i) != 0 {
		// copy on write, as the texts
		phases := new([HistorySize]packedPhases)
		if h.phases != nil {
			*phases = *h.phases
		}
		phases[i] = q
		h.phases = phases
		if *phases == ([HistorySize]packedPhases{}) {
			h.phases = nil
		}
	}
	if x != nil || h.text(i) != nil {
		// copy on write: a copy of this History may share the array
		texts := new([HistorySize]*entryText)
		if h.texts != nil {
			*texts = *h.texts
		}
		texts[i] = x
		h.texts = texts
		if *texts == ([HistorySize]*entryText{}) {
			h.texts = nil
		}
	}
	h.next = uint8((i + 1) % HistorySize)
	if h.n < HistorySize {
		h.n++
	}
}

// Len is the number of results held.
func (h *History) Len() int { return int(h.n) }

// Results returns the held results, oldest first.
func (h *History) Results() []Result {
	out := make([]Result, 0, h.n)
	start := (int(h.next) - int(h.n) + HistorySize) % HistorySize
	for i := 0; i < int(h.n); i++ {
		j := (start + i) % HistorySize
		out = append(out, h.buf[j].unpack(h.text(j), h.phasesAt(j)))
	}
	return out
}

// Last returns the newest result.
func (h *History) Last() (Result, bool) {
	if h.n == 0 {
		return Result{}, false
	}
	j := (int(h.next) - 1 + HistorySize) % HistorySize
	return h.buf[j].unpack(h.text(j), h.phasesAt(j)), true
}

// MarshalJSON writes the results oldest first.
func (h History) MarshalJSON() ([]byte, error) { return json.Marshal(h.Results()) }

// MarshalJSONTo writes the results oldest first, for json v2 (the store's
// encoder), one at a time as they are unpacked.
func (h History) MarshalJSONTo(enc *jsontext.Encoder) error {
	if err := enc.WriteToken(jsontext.BeginArray); err != nil {
		return err
	}
	start := (int(h.next) - int(h.n) + HistorySize) % HistorySize
	for i := 0; i < int(h.n); i++ {
		j := (start + i) % HistorySize
		r := h.buf[j].unpack(h.text(j), h.phasesAt(j))
		if err := jsonv2.MarshalEncode(enc, &r); err != nil {
			return err
		}
	}
	return enc.WriteToken(jsontext.EndArray)
}

// UnmarshalJSON reads results oldest first, keeping the newest HistorySize.
func (h *History) UnmarshalJSON(b []byte) error { return h.read(fromBytes(b)) }

// read decodes results with read, keeping the newest HistorySize.
func (h *History) read(read func(any) error) error {
	var rs []Result
	if err := read(&rs); err != nil {
		return err
	}
	*h = History{}
	for _, r := range rs {
		h.Add(r)
	}
	return nil
}
