package health

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Restart policies (hypeman's restart_policy vocabulary).
const (
	RestartNever       = "never"
	RestartOnUnhealthy = "on_unhealthy"
)

// Defaults and limits of a restart policy.
const (
	DefaultRestartBackoff     = 5 * time.Second
	DefaultRestartMaxBackoff  = 5 * time.Minute
	DefaultRestartMaxAttempts = 5
	DefaultRestartStableAfter = 10 * time.Minute
	MaxRestartAttempts        = 100
	MaxRestartURL             = 2048
)

// Why restarts hold (RestartState.Blocked).
const (
	BlockedMaxAttempts = "max_attempts_exceeded"
	BlockedFlapping    = "flapping"
	BlockedSilenced    = "silenced"
	BlockedIncident    = "incident"
)

// RestartPolicySpec is a restart_policy as a client writes it.
type RestartPolicySpec struct {
	Policy      string `json:"policy,omitempty"`
	URL         string `json:"url,omitempty"`
	Backoff     string `json:"backoff,omitempty"`
	MaxBackoff  string `json:"max_backoff,omitempty"`
	MaxAttempts *int   `json:"max_attempts,omitempty"`
	StableAfter string `json:"stable_after,omitempty"`
	After       string `json:"after,omitempty"`
}

// RestartPolicy is a normalized restart_policy: when the status has been
// unhealthy for After, POST to URL (the VM manager's restart endpoint);
// attempts back off from Backoff to MaxBackoff, at most MaxAttempts of
// them until StableAfter of health resets the count.
type RestartPolicy struct {
	Policy      string
	URL         string
	Backoff     time.Duration
	MaxBackoff  time.Duration
	MaxAttempts int
	StableAfter time.Duration
	After       time.Duration
}

// Enabled reports whether the policy restarts anything.
func (p *RestartPolicy) Enabled() bool { return p != nil && p.Policy == RestartOnUnhealthy }

// Normalize validates the spec and fills in defaults; errors name
// restart_policy.<field>.
func (s RestartPolicySpec) Normalize() (RestartPolicy, error) {
	const prefix = "restart_policy."
	p := RestartPolicy{Policy: s.Policy, URL: s.URL}
	switch s.Policy {
	case "", RestartNever:
		p.Policy = RestartNever
		return p, nil
	case RestartOnUnhealthy:
	default:
		return RestartPolicy{}, fieldErr(prefix+"policy", "must be never or on_unhealthy (got %q)", truncateForMessage(s.Policy))
	}
	u, err := url.Parse(s.URL)
	if s.URL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(s.URL) > MaxRestartURL {
		return RestartPolicy{}, fieldErr(prefix+"url", "must be the http or https URL of the VM manager's restart endpoint (at most %d bytes)", MaxRestartURL)
	}
	var errs [5]error
	p.Backoff, errs[0] = parseDuration(prefix, "backoff", s.Backoff, DefaultRestartBackoff)
	// the default cap follows a backoff set above it
	p.MaxBackoff, errs[1] = parseDuration(prefix, "max_backoff", s.MaxBackoff, max(DefaultRestartMaxBackoff, p.Backoff))
	p.StableAfter, errs[2] = parseDuration(prefix, "stable_after", s.StableAfter, DefaultRestartStableAfter)
	p.After, errs[3] = parseDuration(prefix, "after", s.After, 0)
	p.MaxAttempts, errs[4] = threshold(prefix, "max_attempts", s.MaxAttempts, DefaultRestartMaxAttempts)
	for _, err := range errs {
		if err != nil {
			return RestartPolicy{}, err
		}
	}
	switch {
	case p.Backoff < time.Second:
		return RestartPolicy{}, fieldErr(prefix+"backoff", "must be at least 1s")
	case p.MaxBackoff < p.Backoff:
		return RestartPolicy{}, fieldErr(prefix+"max_backoff", "must be at least restart_policy.backoff")
	}
	for _, d := range []struct {
		field string
		v     time.Duration
		least time.Duration
	}{{"backoff", p.Backoff, time.Second}, {"max_backoff", p.MaxBackoff, 0}, {"stable_after", p.StableAfter, 0}, {"after", p.After, 0}} {
		if d.v < d.least || d.v > 24*time.Hour {
			return RestartPolicy{}, fieldErr(prefix+d.field, "must be between %s and 24h (got %s)", d.least, d.v)
		}
	}
	return p, nil
}

// Spec returns the normalized policy in its written shape.
func (p *RestartPolicy) Spec() RestartPolicySpec {
	if !p.Enabled() {
		return RestartPolicySpec{Policy: RestartNever}
	}
	n := p.MaxAttempts
	return RestartPolicySpec{Policy: p.Policy, URL: p.URL, Backoff: p.Backoff.String(), MaxBackoff: p.MaxBackoff.String(),
		MaxAttempts: &n, StableAfter: p.StableAfter.String(), After: p.After.String()}
}

// RestartState is an instance's restart bookkeeping, part of its durable
// state: a vigil killed between deciding an attempt and making it finds the
// attempt recorded (Pending) and makes it again with the same number, so no
// attempt is skipped and none is added inside the backoff.
type RestartState struct {
	Attempts      int       `json:"attempts,omitzero"`
	LastAttemptAt time.Time `json:"last_attempt_at,omitzero"`
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"` // the earliest the next may be
	Blocked       string    `json:"blocked_reason,omitzero"`
	// Pending is an attempt recorded and not yet delivered to the VM
	// manager; Reason and LastError are what it tells.
	Pending   bool   `json:"pending,omitzero"`
	Reason    Reason `json:"reason,omitzero"`
	LastError string `json:"last_error,omitzero"`

	// the monotonic reading of NextAttemptAt, on which the backoff is
	// measured; live once set (a decoded state is placed on the monotonic
	// clock by the first decision)
	nextMono time.Duration
	live     bool
}

// next is NextAttemptAt on both clocks.
func (r *RestartState) next() Instant {
	if r.NextAttemptAt.IsZero() {
		return Instant{}
	}
	return Instant{Wall: r.NextAttemptAt, Mono: r.nextMono}
}

// RestartInput is what a restart decision looks at. Its durations are
// measured on the monotonic clock (see Instant).
type RestartInput struct {
	Status Status
	Since  Instant // of the status
	Now    Instant
	Held   string // BlockedFlapping, BlockedSilenced, BlockedIncident, or ""
	// HoldDown is the least time unhealthy before an attempt, whatever the
	// policy's after: long enough for the node to tell an incident (many
	// instances failing together) from one sick guest
	HoldDown time.Duration
	// HeldUntil is when the last hold ended (an incident closed): an
	// attempt waits HoldDown after it too, for what recovers by itself
	HeldUntil Instant
	// Reason and LastError of the status, for the attempt
	Reason    Reason
	LastError string
}

// Decide steps the restart rules at in.Now. It reports whether an attempt
// is due now (it is recorded in the state, Pending, before anything is
// sent) and when to look again (zero for never, or a time after Now).
func (r *RestartState) Decide(p *RestartPolicy, in RestartInput) (attempt bool, wake Instant) {
	if !p.Enabled() {
		*r = RestartState{}
		return false, Instant{}
	}
	if !r.live {
		r.live = true
		r.nextMono = in.Now.Of(r.NextAttemptAt).Mono
	}
	if in.Status == StatusHealthy {
		if r.Blocked != BlockedMaxAttempts {
			r.Blocked = ""
		}
		stable := in.Since.Add(p.StableAfter)
		if r.Attempts > 0 || r.Blocked != "" {
			if in.Now.Mono >= stable.Mono {
				// stable long enough: the count starts again
				r.Attempts, r.Blocked, r.NextAttemptAt, r.nextMono = 0, "", time.Time{}, 0
				return false, Instant{}
			}
			return false, stable
		}
		return false, Instant{}
	}
	if in.Status != StatusUnhealthy {
		return false, Instant{}
	}
	if in.Held != "" {
		if r.Blocked != BlockedMaxAttempts {
			r.Blocked = in.Held
		}
		return false, Instant{} // looked at again when the hold ends
	}
	if r.Blocked != BlockedMaxAttempts {
		r.Blocked = ""
	}
	due := in.Since.Add(max(p.After, in.HoldDown))
	if after := in.HeldUntil.Add(in.HoldDown); after.Mono > due.Mono && !in.HeldUntil.IsZero() {
		due = after
	}
	if next := r.next(); !next.IsZero() && next.Mono > due.Mono {
		due = next
	}
	if in.Now.Mono < due.Mono {
		return false, due
	}
	if r.Attempts >= p.MaxAttempts {
		r.Blocked = BlockedMaxAttempts
		return false, Instant{}
	}
	r.Attempts++
	r.LastAttemptAt = in.Now.Wall
	next := in.Now.Add(RestartBackoff(p, r.Attempts))
	r.NextAttemptAt, r.nextMono = next.Wall, next.Mono
	r.Pending, r.Reason, r.LastError = true, in.Reason, in.LastError
	return true, next
}

// RestartBackoff is the pause after attempt n (1-based): Backoff doubled
// for each attempt before it, at most MaxBackoff.
func RestartBackoff(p *RestartPolicy, n int) time.Duration {
	d := p.Backoff
	for i := 1; i < n && d < p.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, p.MaxBackoff)
}

// RestartView is health_status.restart.
type RestartView struct {
	Attempts      int        `json:"attempts"`
	LastAttemptAt *time.Time `json:"last_attempt_at"`
	NextAttemptAt *time.Time `json:"next_attempt_at"`
	BlockedReason string     `json:"blocked_reason,omitempty"`
}

// IsZero reports whether nothing has been recorded: a stored state leaves
// it out then (its monotonic reading alone is not a record).
func (r RestartState) IsZero() bool {
	return r.Attempts == 0 && r.LastAttemptAt.IsZero() && r.NextAttemptAt.IsZero() && r.Blocked == "" && !r.Pending &&
		r.Reason == "" && r.LastError == ""
}

// View renders the state for readers.
func (r *RestartState) View() *RestartView {
	v := &RestartView{Attempts: r.Attempts, BlockedReason: r.Blocked}
	if !r.LastAttemptAt.IsZero() {
		t := r.LastAttemptAt.UTC()
		v.LastAttemptAt = &t
	}
	if !r.NextAttemptAt.IsZero() && r.Attempts > 0 {
		t := r.NextAttemptAt.UTC()
		v.NextAttemptAt = &t
	}
	return v
}

// Label rules (Kubernetes' label keys and values).
const (
	MaxLabels        = 32
	maxLabelName     = 63
	maxLabelPrefix   = 253
	maxLabelValueLen = 63
)

// ValidateLabels checks labels: at most 32 pairs, keys an optional DNS
// subdomain prefix and a name of at most 63 characters, values at most 63.
// Errors name labels.<key>, the first bad key in byte order, so that one
// input always gets the same error.
func ValidateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fieldErr("labels", "must have at most %d entries (got %d)", MaxLabels, len(labels))
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		v := labels[k]
		field := "labels." + truncateForMessage(k)
		if msg := labelKeyProblem(k); msg != "" {
			return fieldErr(field, "is not a valid label key: %s", msg)
		}
		if len(v) > maxLabelValueLen || (v != "" && !labelName(v)) {
			return fieldErr(field, "must be at most %d characters of A-Z a-z 0-9 - _ ., beginning and ending with a letter or digit", maxLabelValueLen)
		}
	}
	return nil
}

func labelKeyProblem(k string) string {
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if !hasPrefix {
		name, prefix = prefix, ""
	}
	switch {
	case name == "" || len(name) > maxLabelName || !labelName(name):
		return fmt.Sprintf("the name must be 1-%d characters of A-Z a-z 0-9 - _ ., beginning and ending with a letter or digit", maxLabelName)
	case hasPrefix && (prefix == "" || len(prefix) > maxLabelPrefix || !dnsSubdomain(prefix)):
		return "the prefix before / must be a DNS subdomain such as example.com"
	}
	return ""
}

func alnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }

func labelName(s string) bool {
	if s == "" || !alnum(s[0]) || !alnum(s[len(s)-1]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !alnum(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

func dnsSubdomain(s string) bool {
	for _, part := range strings.Split(s, ".") {
		if part == "" || len(part) > 63 || part[0] == '-' || part[len(part)-1] == '-' {
			return false
		}
		for i := 0; i < len(part); i++ {
			c := part[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// MatchLabels reports whether labels has every pair of want.
func MatchLabels(labels, want map[string]string) bool {
	for k, v := range want {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// MarshalJSON writes the normalized policy in its written shape.
func (p RestartPolicy) MarshalJSON() ([]byte, error) { return json.Marshal(p.Spec()) }

// MarshalJSONTo writes the normalized policy as MarshalJSON does, for json
// v2 (the store's encoder).
func (p RestartPolicy) MarshalJSONTo(enc *jsontext.Encoder) error {
	return jsonv2.MarshalEncode(enc, p.Spec())
}

// UnmarshalJSON reads a written policy and normalizes it.
func (p *RestartPolicy) UnmarshalJSON(b []byte) error {
	return readNormalized[RestartPolicySpec](fromBytes(b), p)
}
