package health

import (
	"math"
	"time"
)

// Status is what readers see of an instance's health.
type Status string

// Statuses (SPEC §3).
const (
	StatusDisabled  Status = "disabled"
	StatusUnknown   Status = "unknown"
	StatusStarting  Status = "starting"
	StatusHealthy   Status = "healthy"
	StatusUnhealthy Status = "unhealthy"
)

// Statuses lists every status, in a stable order.
var Statuses = []Status{StatusDisabled, StatusUnknown, StatusStarting, StatusHealthy, StatusUnhealthy}

// Valid reports whether s is a status.
func (s Status) Valid() bool {
	for _, v := range Statuses {
		if s == v {
			return true
		}
	}
	return false
}

// Instant is a moment read from two clocks. Wall is the time of day: what
// is shown and stored. Mono is a monotonic reading, the time since an origin
// of the caller's clock, which no step of the wall clock moves: every
// duration the rules measure (the start period, flapping's window, a
// restart's hold-down, backoff and stable time, an incident's window) is a
// difference of Mono readings, so a wall clock stepped by NTP or an operator
// ends no grace early and stretches none. A wall time from outside
// (started_at) or kept across a restart (a snapshot) is placed on the
// monotonic clock once, by its wall distance from an Instant (Of).
type Instant struct {
	Wall time.Time
	Mono time.Duration
}

// IsZero reports whether i is no time at all.
func (i Instant) IsZero() bool { return i.Wall.IsZero() }

// Add is i moved by d on both clocks.
func (i Instant) Add(d time.Duration) Instant { return Instant{Wall: i.Wall.Add(d), Mono: i.Mono + d} }

// Of places the wall time t on i's monotonic clock by its distance from i
// on the wall clock; the zero time stays the zero Instant.
func (i Instant) Of(t time.Time) Instant {
	if t.IsZero() {
		return Instant{}
	}
	return Instant{Wall: t, Mono: i.Mono - i.Wall.Sub(t)}
}

// Config is what the state machine needs to know of an instance.
type Config struct {
	Policy    *Policy // nil or type none: disabled
	Lifecycle Lifecycle
	StartedAt time.Time // zero when unknown
}

// ConfigOf extracts the Config of an instance.
func ConfigOf(in Instance) Config {
	return Config{Policy: in.HealthCheck, Lifecycle: in.State, StartedAt: in.StartTime()}
}

// Mask is the status shown for an evaluated status under a configuration:
// disabled without a policy, unknown while inactive, starting while
// Initializing, the evaluation otherwise.
func Mask(c Config, eval Status) Status {
	switch {
	case !c.Policy.Enabled():
		return StatusDisabled
	case !c.Lifecycle.Active():
		return StatusUnknown
	case c.Lifecycle == Initializing:
		return StatusStarting
	case eval == "":
		return StatusStarting
	}
	return eval
}

// Transition is a change of the shown status.
type Transition struct {
	From      Status    `json:"from"`
	To        Status    `json:"to"`
	At        time.Time `json:"at"`
	Reason    Reason    `json:"reason"`
	LastError string    `json:"last_error"`
}

// State is the runtime health state of one instance.
type State struct {
	// every member is left out of a record when zero (a zero time, an
	// empty history, no restart yet): a record reads back the same either
	// way, and a snapshot, which every instance writes, is smaller
	Window               uint64    `json:"window,omitzero"`       // generation of the health window
	WindowStart          time.Time `json:"window_start,omitzero"` // origin of the start-period grace
	Eval                 Status    `json:"eval,omitzero"`         // starting, healthy or unhealthy, before masking
	Status               Status    `json:"status,omitzero"`       // shown status
	Since                time.Time `json:"since,omitzero"`
	GraceOver            bool      `json:"grace_over,omitzero"`
	ConsecutiveSuccesses int       `json:"consecutive_successes,omitzero"`
	ConsecutiveFailures  int       `json:"consecutive_failures,omitzero"`
	LastCheckedAt        time.Time `json:"last_checked_at,omitzero"`
	LastSuccessAt        time.Time `json:"last_success_at,omitzero"`
	LastFailureAt        time.Time `json:"last_failure_at,omitzero"`
	LastError            string    `json:"last_error,omitzero"`
	History              History   `json:"history,omitzero"`
	// acting on health: the restart bookkeeping and the flapping detector,
	// nil until there is something to hold (most instances never restart
	// nor flap, and a state is held by every instance's actor). A copy of a
	// State shares them: Clone before handing a copy to another goroutine.
	Restart *RestartState `json:"restart,omitzero"`
	Flap    *Flap         `json:"flap,omitzero"`

	// the monotonic readings of WindowStart and Since, on which the grace
	// and the restart rules are measured; live once they are set (a state
	// decoded from a snapshot has wall times only until its first Configure
	// or Observe places them, once: resume)
	windowMono, sinceMono time.Duration
	live                  bool
}

// UnmarshalJSON reads a stored state (a snapshot read back after a restart,
// or one handed over by another node) and refuses one the state machine
// cannot drive: a status that is none of the statuses, a counter out of
// range, the flapping ring's position outside the ring.
func (s *State) UnmarshalJSON(b []byte) error { return s.read(fromBytes(b)) }

// read decodes a state with read and checks it.
func (s *State) read(read func(any) error) error {
	type plain State
	var v plain
	if err := read(&v); err != nil {
		return err
	}
	if err := (*State)(&v).Check(); err != nil {
		return err
	}
	*s = State(v)
	return nil
}

// Check names the first field of a decoded state out of its range, and
// holds no restart bookkeeping nor flapping ring that holds nothing (an
// older record writes them out when empty). Every reader of a stored
// state calls it before handing the state to the state machine.
func (s *State) Check() error {
	if s.Restart != nil && s.Restart.IsZero() {
		s.Restart = nil
	}
	if s.Flap != nil && s.Flap.IsZero() {
		s.Flap = nil
	}
	counter := func(field string, n int) error {
		if n < 0 || n > math.MaxInt32 {
			return fieldErr(field, "must be between 0 and %d (got %d)", math.MaxInt32, n)
		}
		return nil
	}
	switch {
	case s.Status != "" && !s.Status.Valid():
		return fieldErr("state.status", "must be one of disabled, unknown, starting, healthy, unhealthy (got %q)",
			truncateForMessage(string(s.Status)))
	case s.Eval != "" && s.Eval != StatusStarting && s.Eval != StatusHealthy && s.Eval != StatusUnhealthy:
		return fieldErr("state.eval", "must be starting, healthy or unhealthy (got %q)", truncateForMessage(string(s.Eval)))
	case s.Flap != nil && (s.Flap.Next < 0 || s.Flap.Next >= FlapChanges):
		return fieldErr("state.flap.next", "must be between 0 and %d (got %d)", FlapChanges-1, s.Flap.Next)
	}
	if err := counter("state.consecutive_successes", s.ConsecutiveSuccesses); err != nil {
		return err
	}
	if err := counter("state.consecutive_failures", s.ConsecutiveFailures); err != nil {
		return err
	}
	return counter("state.restart.attempts", s.Restarts().Attempts)
}

// Progress is the part of a State whose loss in a crash would change what
// happens next: the window, the statuses, the grace, and the counters up to
// their thresholds. Counters past a threshold, times and history are
// evidence, not progress.
type Progress struct {
	Window    uint64
	Successes int32
	Failures  int32
	Eval      uint8 // index in Statuses
	Status    uint8 // index in Statuses
	GraceOver bool
}

// Progress returns the state's progress under policy p.
func (s *State) Progress(p *Policy) Progress {
	succ, fail := s.ConsecutiveSuccesses, s.ConsecutiveFailures
	if p != nil {
		succ, fail = min(succ, p.SuccessThreshold), min(fail, p.FailureThreshold)
	}
	return Progress{Window: s.Window, Eval: statusCode(s.Eval), Status: statusCode(s.Status), GraceOver: s.GraceOver,
		Successes: clamp32(succ), Failures: clamp32(fail)}
}

// statusCode is st's index in Statuses, or len(Statuses) for another value.
func statusCode(st Status) uint8 {
	for i, v := range Statuses {
		if v == st {
			return uint8(i)
		}
	}
	return uint8(len(Statuses))
}

// Configure applies a configuration change (registration when prev is the
// zero Config) at now. It reports the transition, if the shown status
// changed, and whether a fresh window opened: the caller then cancels any
// in-flight probe and probes at once.
//
// The grace of a fresh window runs from started_at when that is in the past
// (its distance from now on the wall clock, read here once, places it on
// the monotonic clock), else from now; a step of the wall clock later moves
// neither its start nor its end.
func (s *State) Configure(prev, next Config, now Instant) (tr Transition, changed, fresh bool) {
	s.resume(now)
	first := prev.Lifecycle == ""
	policyChanged := !prev.Policy.Equal(next.Policy)
	newStart := !next.StartedAt.IsZero() && !next.StartedAt.Equal(prev.StartedAt)
	activated := !prev.Lifecycle.Active() && next.Lifecycle.Active()
	reason := ReasonLifecycle
	switch {
	case first:
		reason = ReasonRegistered
	case policyChanged:
		reason = ReasonPolicyChanged
	case newStart:
		reason = ReasonNewWindow
	}
	if next.Policy.Enabled() && next.Lifecycle.Active() && (first || policyChanged || newStart || activated) {
		origin := now
		switch {
		case newStart || (first && !next.StartedAt.IsZero()):
			origin = now.Of(next.StartedAt)
		case policyChanged && !activated && !s.WindowStart.IsZero():
			origin = Instant{Wall: s.WindowStart, Mono: s.windowMono}
		}
		if origin.Mono > now.Mono {
			origin = now // a start in the future: the grace runs from now
		}
		s.open(next.Policy, origin)
		fresh = true
	}
	if prev.Policy.Enabled() && !next.Policy.Enabled() {
		// the policy is gone, and its evidence with it: a later policy
		// starts from nothing
		s.clearEvidence()
	}
	tr, changed = s.reshow(next, now, reason, "")
	return tr, changed, fresh
}

// clearEvidence forgets counters, results and their times, keeping the
// window generation and the shown status.
func (s *State) clearEvidence() {
	*s = State{Window: s.Window, Status: s.Status, Since: s.Since, sinceMono: s.sinceMono, live: s.live}
}

// resume places a decoded state's times on the monotonic clock, by their
// wall distance from now; a live state is left alone.
func (s *State) resume(now Instant) {
	if s.live {
		return
	}
	s.live = true
	s.windowMono = now.Of(s.WindowStart).Mono
	s.sinceMono = now.Of(s.Since).Mono
}

// Restored marks a state taken from a snapshot, which may come from another
// process or another clock: its times are placed on the monotonic clock of
// the first Instant it is given, by their wall times, as a decoded state's
// are.
func (s *State) Restored() {
	s.live = false
	if s.Flap != nil {
		s.Flap.live = false
	}
	if s.Restart != nil {
		s.Restart.live = false
	}
}

// Clone returns a copy of s that shares nothing it may change with s: its
// restart bookkeeping and flapping ring are copies of their own (the
// history copies on write by itself).
func (s *State) Clone() State {
	c := *s
	if s.Restart != nil {
		r := *s.Restart
		c.Restart = &r
	}
	if s.Flap != nil {
		f := *s.Flap
		c.Flap = &f
	}
	return c
}

// Restarts returns the restart bookkeeping (zero when none is held).
func (s *State) Restarts() RestartState {
	if s.Restart == nil {
		return RestartState{}
	}
	return *s.Restart
}

// RestartToChange returns the restart bookkeeping to step, held from now on.
func (s *State) RestartToChange() *RestartState {
	if s.Restart == nil {
		s.Restart = new(RestartState)
	}
	return s.Restart
}

// Flapping reports whether the instance flaps.
func (s *State) Flapping() bool { return s.Flap != nil && s.Flap.Flapping }

// FlapChange records a status change at now in the flapping ring; it
// reports whether the instance started flapping with it.
func (s *State) FlapChange(now Instant, window time.Duration) bool {
	if s.Flap == nil {
		s.Flap = new(Flap)
	}
	return s.Flap.Change(now, window)
}

// FlapForget drops the flapping ring once it can decide nothing any more
// (see Flap.stale): a steady instance, as most are, holds none.
func (s *State) FlapForget(now Instant, window time.Duration) {
	if s.Flap != nil && s.Flap.stale(now, window) {
		s.Flap = nil
	}
}

// FlapSettle reports whether a flapping instance has been steady for
// window at now, and if so it no longer flaps.
func (s *State) FlapSettle(now Instant, window time.Duration) bool {
	return s.Flap != nil && s.Flap.Settle(now, window)
}

// FlapSteadyAt is when a flapping instance stops flapping if its status
// does not change before (the zero Instant when it does not flap).
func (s *State) FlapSteadyAt(now Instant, window time.Duration) Instant {
	if s.Flap == nil {
		return Instant{}
	}
	return s.Flap.SteadyAt(now, window)
}

// StatusSince is when the shown status began, on both clocks.
func (s *State) StatusSince() Instant {
	if s.Since.IsZero() {
		return Instant{}
	}
	return Instant{Wall: s.Since, Mono: s.sinceMono}
}

func (s *State) open(p *Policy, origin Instant) {
	s.Window++
	s.WindowStart, s.windowMono = origin.Wall, origin.Mono
	s.Eval = StatusStarting
	s.GraceOver = p.StartPeriod == 0
	s.ConsecutiveSuccesses = 0
	s.ConsecutiveFailures = 0
}

func (s *State) reshow(c Config, now Instant, reason Reason, lastErr string) (Transition, bool) {
	shown := Mask(c, s.Eval)
	if shown == s.Status {
		return Transition{}, false
	}
	tr := Transition{From: s.Status, To: shown, At: now.Wall, Reason: reason, LastError: lastErr}
	if tr.From == "" {
		tr.From = StatusUnknown
	}
	s.Status = shown
	s.Since, s.sinceMono = now.Wall, now.Mono
	return tr, true
}

// InGrace reports whether a failure at now would fall inside the start-period
// grace and not count: less than start_period since the grace's origin, on
// the monotonic clock.
func (s *State) InGrace(p *Policy, now Instant) bool {
	s.resume(now)
	return s.Eval == StatusStarting && !s.GraceOver && now.Mono-s.windowMono < p.StartPeriod
}

// Observe applies one probe result, finished at now, that belongs to the
// current window. It records the result and reports the transition, if the
// shown status changed. Results observed while the configuration runs no
// probes are ignored.
func (s *State) Observe(c Config, r *Result, now Instant) (Transition, bool) {
	s.resume(now)
	p := c.Policy
	if !p.Enabled() || !c.Lifecycle.Active() {
		return Transition{}, false
	}
	if r.Outcome == Failure && r.Reason == ReasonAgentUnreachable && c.Lifecycle == Initializing {
		// the guest agent is not up yet while the VM boots: no evidence
		r.Outcome = Skipped
	}
	if r.Outcome != Skipped {
		r.Message = TruncateUTF8(r.Message, MaxLastError)
		r.Output = TailUTF8(r.Output, MaxOutput)
	}
	s.History.Add(*r)
	switch r.Outcome {
	case Success:
		s.LastCheckedAt = now.Wall
		s.LastSuccessAt = now.Wall
		s.LastError = ""
		s.ConsecutiveFailures = 0
		s.ConsecutiveSuccesses = saturatingInc(s.ConsecutiveSuccesses)
		if s.Eval != StatusHealthy && s.ConsecutiveSuccesses >= p.SuccessThreshold {
			s.Eval = StatusHealthy
			s.GraceOver = true
		}
		return s.reshow(c, now, "", "")
	case Failure:
		s.LastCheckedAt = now.Wall
		s.LastFailureAt = now.Wall
		s.LastError = r.Message
		if s.LastError == "" {
			s.LastError = string(r.Reason)
		}
		s.ConsecutiveSuccesses = 0
		if s.InGrace(p, now) {
			return Transition{}, false
		}
		if s.Eval == StatusStarting {
			s.GraceOver = true
		}
		s.ConsecutiveFailures = saturatingInc(s.ConsecutiveFailures)
		if s.Eval != StatusUnhealthy && s.ConsecutiveFailures >= p.FailureThreshold {
			s.Eval = StatusUnhealthy
		}
		return s.reshow(c, now, r.Reason, s.LastError)
	}
	return Transition{}, false
}

func saturatingInc(n int) int {
	if n == math.MaxInt32 {
		return n
	}
	return n + 1
}

// NextDelay is the pause after a probe before the next: start_interval while
// the shown status is starting, interval after.
func NextDelay(p *Policy, shown Status) time.Duration {
	if shown == StatusStarting {
		return p.StartInterval
	}
	return p.Interval
}

// Phase is a deterministic offset in [0, d) for id (FNV-1a), used to spread
// instances over an interval. It does not allocate.
func Phase(id string, d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	h := uint64(14695981039346656037)
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= 1099511628211
	}
	return time.Duration(h % uint64(d))
}

// View is the health_status of an instance as readers see it.
type View struct {
	Status               Status     `json:"status"`
	Since                *time.Time `json:"since"`
	ConsecutiveSuccesses int        `json:"consecutive_successes"`
	ConsecutiveFailures  int        `json:"consecutive_failures"`
	LastCheckedAt        *time.Time `json:"last_checked_at"`
	LastSuccessAt        *time.Time `json:"last_success_at"`
	LastFailureAt        *time.Time `json:"last_failure_at"`
	LastError            string     `json:"last_error"`
	NextCheckAt          *time.Time `json:"next_check_at"`
	// Flapping: the status changed too often lately (SPEC §8)
	Flapping bool `json:"flapping"`
	// Restart is the restart bookkeeping, when a restart policy is set
	Restart *RestartView `json:"restart,omitempty"`
	History []Result     `json:"history,omitempty"`
	// Reason says why the status is what it is when no probe decided it
	// (node_down: the node that owns the instance is down), and
	// LastKnownStatus what it was before.
	Reason          string `json:"reason,omitempty"`
	LastKnownStatus Status `json:"last_known_status,omitempty"`
}

// View renders the state for readers; nextCheck is zero when no probe is due.
func (s *State) View(nextCheck time.Time, withHistory bool) View {
	b := s.Brief(nextCheck)
	v := b.View()
	if withHistory {
		v.History = s.History.Results()
	}
	return v
}

// Brief is a View without history, in a form an actor can publish after
// every probe without allocating: counts and times as plain numbers.
type Brief struct {
	Status               Status
	ConsecutiveSuccesses int32
	ConsecutiveFailures  int32
	// unix nanoseconds; 0 for none
	Since, LastCheckedAt, LastSuccessAt, LastFailureAt, NextCheckAt int64
	LastError                                                       string
	Flapping                                                        bool
	// the restart bookkeeping, when a restart policy is set (HasRestart)
	HasRestart                   bool
	RestartAttempts              int32
	RestartLastAt, RestartNextAt int64
	RestartBlocked               string
}

// Brief is View(nextCheck, false) in compact form.
func (s *State) Brief(nextCheck time.Time) Brief {
	return Brief{Status: s.Status, ConsecutiveSuccesses: clamp32(s.ConsecutiveSuccesses),
		ConsecutiveFailures: clamp32(s.ConsecutiveFailures), Since: nanos(s.Since), LastCheckedAt: nanos(s.LastCheckedAt),
		LastSuccessAt: nanos(s.LastSuccessAt), LastFailureAt: nanos(s.LastFailureAt), NextCheckAt: nanos(nextCheck),
		LastError: s.LastError, Flapping: s.Flapping()}
}

// WithRestart adds the restart bookkeeping to a brief, for an instance with
// a restart policy.
func (b Brief) WithRestart(r RestartState) Brief {
	b.HasRestart = true
	b.RestartAttempts = clamp32(r.Attempts)
	b.RestartLastAt = nanos(r.LastAttemptAt)
	if r.Attempts > 0 {
		b.RestartNextAt = nanos(r.NextAttemptAt)
	}
	b.RestartBlocked = r.Blocked
	return b
}

// View renders the brief as readers see it; the five times share one
// allocation.
func (b *Brief) View() View {
	times := &[5]time.Time{unnanos(b.Since), unnanos(b.LastCheckedAt), unnanos(b.LastSuccessAt),
		unnanos(b.LastFailureAt), unnanos(b.NextCheckAt)}
	return View{
		Status:               b.Status,
		Since:                timeAt(times, 0),
		ConsecutiveSuccesses: int(b.ConsecutiveSuccesses),
		ConsecutiveFailures:  int(b.ConsecutiveFailures),
		LastCheckedAt:        timeAt(times, 1),
		LastSuccessAt:        timeAt(times, 2),
		LastFailureAt:        timeAt(times, 3),
		LastError:            b.LastError,
		NextCheckAt:          timeAt(times, 4),
		Flapping:             b.Flapping,
		Restart:              b.restart(),
	}
}

func (b *Brief) restart() *RestartView {
	if !b.HasRestart {
		return nil
	}
	v := &RestartView{Attempts: int(b.RestartAttempts), BlockedReason: b.RestartBlocked}
	if b.RestartLastAt != 0 {
		t := time.Unix(0, b.RestartLastAt).UTC()
		v.LastAttemptAt = &t
	}
	if b.RestartNextAt != 0 {
		t := time.Unix(0, b.RestartNextAt).UTC()
		v.NextAttemptAt = &t
	}
	return v
}

func clamp32(n int) int32 { return int32(min(max(n, 0), math.MaxInt32)) }

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func unnanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// timeAt points at times[i] in UTC, or is nil for the zero time.
func timeAt(times *[5]time.Time, i int) *time.Time {
	if times[i].IsZero() {
		return nil
	}
	times[i] = times[i].UTC()
	return &times[i]
}
