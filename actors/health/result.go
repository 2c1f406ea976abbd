package health

import (
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"
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
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

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

// Result is what one probe observed.
type Result struct {
	Outcome    Outcome   `json:"outcome"`
	Reason     Reason    `json:"reason,omitempty"`
	Message    string    `json:"message,omitempty"`
	Start      time.Time `json:"start"`
	Duration   Duration  `json:"duration"`
	HTTPStatus int       `json:"http_status,omitempty"`
	ExitCode   *int      `json:"exit_code,omitempty"`
	Output     string    `json:"output,omitempty"`
	Truncated  bool      `json:"output_truncated,omitempty"`
}

// TruncateUTF8 returns at most the first n bytes of s, cut on a rune boundary.
func TruncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i]
}

// TailUTF8 returns at most the last n bytes of s, starting on a rune boundary.
func TailUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := len(s) - n
	for i < len(s) && !utf8.RuneStart(s[i]) {
		i++
	}
	return s[i:]
}

// History is a ring of the last HistorySize results. It keeps each result
// compactly — times as integers, outcome and reason as codes, the texts
// behind one pointer that is nil for a plain result — because every
// instance holds one and the garbage collector scans them all. Adding a
// plain result allocates nothing.
type History struct {
	buf  [HistorySize]entry
	next int
	n    int
}

// entry is one result as History keeps it.
type entry struct {
	start, dur int64 // unix nanoseconds, nanoseconds
	http, exit int32
	outcome    uint8
	reason     uint8 // index in reasonCodes; otherReason: in extra
	hasExit    bool
	extra      *entryText
}

// entryText is the rarely present part of a result.
type entryText struct {
	reason    Reason
	message   string
	output    string
	truncated bool
}

var outcomeCodes = [...]Outcome{"", Success, Failure, Skipped}

var reasonCodes = [...]Reason{"", ReasonTimeout, ReasonConnectionRefused, ReasonUnreachable, ReasonStatusMismatch,
	ReasonTLS, ReasonExitNonzero, ReasonExecError, ReasonAgentUnreachable, ReasonNotServing, ReasonIOError,
	ReasonPanic, ReasonUnsupported, ReasonBudgetFull, ReasonInactive, ReasonDisabled, ReasonCanceled}

const otherReason = 255

func codeOf[T comparable](codes []T, v T) (uint8, bool) {
	for i, c := range codes {
		if c == v {
			return uint8(i), true
		}
	}
	return 0, false
}

func pack(r *Result) entry {
	e := entry{dur: int64(r.Duration), http: int32(r.HTTPStatus)}
	if !r.Start.IsZero() {
		e.start = r.Start.UnixNano()
	}
	if r.ExitCode != nil {
		e.exit, e.hasExit = int32(*r.ExitCode), true
	}
	e.outcome, _ = codeOf(outcomeCodes[:], r.Outcome)
	code, known := codeOf(reasonCodes[:], r.Reason)
	e.reason = code
	if !known {
		e.reason = otherReason
	}
	if !known || r.Message != "" || r.Output != "" || r.Truncated {
		e.extra = &entryText{message: r.Message, output: r.Output, truncated: r.Truncated}
		if !known {
			e.extra.reason = r.Reason
		}
	}
	return e
}

func (e *entry) unpack() Result {
	r := Result{Duration: Duration(e.dur), HTTPStatus: int(e.http), Outcome: outcomeCodes[e.outcome]}
	if e.start != 0 {
		r.Start = time.Unix(0, e.start).UTC()
	}
	if e.hasExit {
		code := int(e.exit)
		r.ExitCode = &code
	}
	if e.reason != otherReason {
		r.Reason = reasonCodes[e.reason]
	}
	if x := e.extra; x != nil {
		if e.reason == otherReason {
			r.Reason = x.reason
		}
		r.Message, r.Output, r.Truncated = x.message, x.output, x.truncated
	}
	return r
}

// Add records r, dropping the oldest result when full.
func (h *History) Add(r Result) {
	h.buf[h.next] = pack(&r)
	h.next = (h.next + 1) % HistorySize
	if h.n < HistorySize {
		h.n++
	}
}

// Len is the number of results held.
func (h *History) Len() int { return h.n }

// Results returns the held results, oldest first.
func (h *History) Results() []Result {
	out := make([]Result, 0, h.n)
	start := (h.next - h.n + HistorySize) % HistorySize
	for i := 0; i < h.n; i++ {
		out = append(out, h.buf[(start+i)%HistorySize].unpack())
	}
	return out
}

// Last returns the newest result.
func (h *History) Last() (Result, bool) {
	if h.n == 0 {
		return Result{}, false
	}
	return h.buf[(h.next-1+HistorySize)%HistorySize].unpack(), true
}

// MarshalJSON writes the results oldest first.
func (h History) MarshalJSON() ([]byte, error) { return json.Marshal(h.Results()) }

// UnmarshalJSON reads results oldest first, keeping the newest HistorySize.
func (h *History) UnmarshalJSON(b []byte) error {
	var rs []Result
	if err := json.Unmarshal(b, &rs); err != nil {
		return err
	}
	*h = History{}
	for _, r := range rs {
		h.Add(r)
	}
	return nil
}
