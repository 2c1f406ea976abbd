package persistence

import (
	"bytes"
	"fmt"
	"math"
	"reflect"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/persistence/record"
)

// A snapshot is written as a record.Snapshot (protobuf): every instance
// writes one at each checkpoint and a start reads one for every instance,
// and JSON spent most of both on the state's times and history. A snapshot
// written by an earlier build is JSON, which always starts with '{', a byte
// no record.Snapshot starts with (its first field's tag, 0x08, or another
// tag's); both read back.

// encodeSnapshot is snap as the store writes it.
func encodeSnapshot(snap *actors.Snapshot) ([]byte, error) {
	m := &record.Snapshot{
		V:           SchemaVersion,
		Id:          text(snap.ID),
		Lifecycle:   text(string(snap.Lifecycle)),
		StartedAt:   timestamp(snap.StartedAt),
		State:       stateRecord(&snap.State),
		NextCheckAt: timestamp(snap.NextCheckAt),
	}
	if snap.Policy != nil {
		p, err := encode(snap.Policy)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		m.Policy = p
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(m)
}

// decodeSnapshot decodes a stored snapshot, in either form, and checks it.
func decodeSnapshot(v []byte) (*actors.Snapshot, error) { return decodeSnapshotUnder(v, nil, nil) }

// decodeStoredSnapshot is decodeSnapshotUnder for the snapshot stored under
// id's key, which must be id's.
func decodeStoredSnapshot(id string, v []byte, policy *health.Policy, memo *policyMemo) (*actors.Snapshot, error) {
	snap, err := decodeSnapshotUnder(v, policy, memo)
	if err == nil && snap.ID != id {
		return nil, fmt.Errorf("snapshot id %q does not match its key", snap.ID)
	}
	return snap, err
}

// policyMemo is the last policy a decoder read from a snapshot, by its
// bytes: the instances of a fleet share a few policies, and their snapshots
// come one after the other at a start.
type policyMemo struct {
	bytes  []byte
	policy *health.Policy // never changed once decoded: snapshots share it
}

// decodeSnapshotUnder is decodeSnapshot for a snapshot read with its
// instance, whose policy is policy: the snapshot's policy is taken from
// memo when its bytes are the last ones decoded, and is the instance's own
// when the two are the same, as they are unless the spec changed after the
// snapshot — a million snapshots then hold a few policies, not a million.
func decodeSnapshotUnder(v []byte, policy *health.Policy, memo *policyMemo) (*actors.Snapshot, error) {
	if len(v) > 0 && v[0] == '{' {
		var snap actors.Snapshot
		if err := decode(v, &snap); err != nil {
			return nil, err
		}
		if err := checkVersion("snapshot", snap.ID, snap.Version); err != nil {
			return nil, err
		}
		return &snap, nil
	}
	var m record.Snapshot
	if err := proto.Unmarshal(v, &m); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if m.V < 1 {
		return nil, fmt.Errorf("snapshot: v: no schema version (got %d): not a snapshot this store wrote", m.V)
	}
	if err := checkVersion("snapshot", m.Id, int(m.V)); err != nil {
		return nil, err
	}
	snap := &actors.Snapshot{
		Version:     int(m.V),
		ID:          m.Id,
		Lifecycle:   health.Lifecycle(m.Lifecycle),
		StartedAt:   timeOf(m.StartedAt),
		NextCheckAt: timeOf(m.NextCheckAt),
	}
	if len(m.Policy) > 0 {
		var p *health.Policy
		if memo != nil && memo.policy != nil && bytes.Equal(m.Policy, memo.bytes) {
			p = memo.policy
		} else {
			p = new(health.Policy)
			if err := decode(m.Policy, p); err != nil {
				return nil, fmt.Errorf("policy: %w", err)
			}
			if memo != nil {
				memo.bytes, memo.policy = append(memo.bytes[:0], m.Policy...), p
			}
		}
		// deeply equal, not Policy.Equal, which holds every disabled
		// policy the same: the snapshot's is kept exactly
		if policy != nil && reflect.DeepEqual(p, policy) {
			p = policy
		}
		snap.Policy = p
	}
	if err := readState(m.State, &snap.State); err != nil {
		return nil, err
	}
	return snap, nil
}

// stateRecord is st as a snapshot writes it.
func stateRecord(st *health.State) *record.State {
	m := &record.State{
		Window:               st.Window,
		WindowStart:          timestamp(st.WindowStart),
		Eval:                 text(string(st.Eval)),
		Status:               text(string(st.Status)),
		Since:                timestamp(st.Since),
		GraceOver:            st.GraceOver,
		ConsecutiveSuccesses: int64(st.ConsecutiveSuccesses),
		ConsecutiveFailures:  int64(st.ConsecutiveFailures),
		LastCheckedAt:        timestamp(st.LastCheckedAt),
		LastSuccessAt:        timestamp(st.LastSuccessAt),
		LastFailureAt:        timestamp(st.LastFailureAt),
		LastError:            text(st.LastError),
	}
	if st.History.Len() > 0 {
		m.History = historyRecord(st.History.Results())
	}
	if r := st.Restart; r != nil && !r.IsZero() {
		m.Restart = &record.Restart{
			Attempts:      int64(r.Attempts),
			LastAttemptAt: timestamp(r.LastAttemptAt),
			NextAttemptAt: timestamp(r.NextAttemptAt),
			BlockedReason: text(r.Blocked),
			Pending:       r.Pending,
			Reason:        text(string(r.Reason)),
			LastError:     text(r.LastError),
		}
	}
	if f := st.Flap; f != nil && !f.IsZero() {
		m.Flap = &record.Flap{Changes: f.Changes[:], Next: int64(f.Next), Flapping: f.Flapping}
	}
	return m
}

// outcomes are the outcomes a history's column holds, by their number.
var outcomes = [...]health.Outcome{record.Outcome_OUTCOME_NONE: "", record.Outcome_OUTCOME_SUCCESS: health.Success,
	record.Outcome_OUTCOME_FAILURE: health.Failure, record.Outcome_OUTCOME_SKIPPED: health.Skipped}

// historyRecord is results, oldest first, by column: a column of zeros
// alone is left out.
func historyRecord(rs []health.Result) *record.History {
	n := len(rs)
	h := &record.History{Start: make([]int64, n), Duration: make([]int64, n), Outcome: make([]record.Outcome, n)}
	var reasons, https, exits, phases bool
	for i := range rs {
		r := &rs[i]
		if !r.Start.IsZero() {
			h.Start[i] = r.Start.UnixNano() // as the history holds it
		}
		h.Duration[i] = int64(r.Duration)
		for o, v := range outcomes {
			if v == r.Outcome && v != "" {
				h.Outcome[i] = record.Outcome(o)
			}
		}
		reasons = reasons || r.Reason != ""
		https = https || r.HTTPStatus != 0
		exits = exits || r.ExitCode != nil
		phases = phases || !r.Phases.IsZero()
		if r.Message != "" || r.Output != "" || r.Truncated || !r.CertNotAfter.IsZero() {
			x := &record.Text{Result: uint32(i), Message: text(r.Message), Output: text(r.Output), OutputTruncated: r.Truncated}
			if !r.CertNotAfter.IsZero() {
				x.CertNotAfter = r.CertNotAfter.Unix()
			}
			h.Text = append(h.Text, x)
		}
	}
	if reasons {
		h.Reason = make([]string, n)
		for i := range rs {
			h.Reason[i] = text(string(rs[i].Reason))
		}
	}
	if https {
		h.HttpStatus = make([]int32, n)
		for i := range rs {
			h.HttpStatus[i] = int32(rs[i].HTTPStatus)
		}
	}
	if exits {
		h.HasExitCode, h.ExitCode = make([]bool, n), make([]int64, n)
		for i := range rs {
			if c := rs[i].ExitCode; c != nil {
				h.HasExitCode[i], h.ExitCode[i] = true, int64(*c)
			}
		}
	}
	if phases {
		h.Connect, h.Tls, h.FirstByte = make([]int64, n), make([]int64, n), make([]int64, n)
		for i := range rs {
			p := rs[i].Phases
			h.Connect[i], h.Tls[i], h.FirstByte[i] = int64(p.Connect), int64(p.TLS), int64(p.FirstByte)
		}
	}
	return h
}

// readHistory adds the results h holds to hist, oldest first, refusing
// columns that do not hold one value a result.
func readHistory(h *record.History, hist *health.History) error {
	n := len(h.Start)
	for _, c := range []struct {
		name string
		len  int
	}{{"duration", len(h.Duration)}, {"outcome", len(h.Outcome)}, {"reason", len(h.Reason)}, {"http_status", len(h.HttpStatus)},
		{"has_exit_code", len(h.HasExitCode)}, {"exit_code", len(h.ExitCode)}, {"connect", len(h.Connect)}, {"tls", len(h.Tls)},
		{"first_byte", len(h.FirstByte)}} {
		if c.len != 0 && c.len != n {
			return fmt.Errorf("state.history.%s: must hold one value for each of the %d results (got %d)", c.name, n, c.len)
		}
	}
	var texts []*record.Text // by result, when any has text
	if len(h.Text) > 0 {
		texts = make([]*record.Text, n)
	}
	for _, x := range h.Text {
		if x.Result >= uint32(n) {
			return fmt.Errorf("state.history.text: result %d is not among the %d results", x.Result, n)
		}
		texts[x.Result] = x
	}
	// only the newest HistorySize are kept
	for i := max(n-health.HistorySize, 0); i < n; i++ {
		r := health.Result{Duration: health.Duration(at(h.Duration, i))}
		if h.Start[i] != 0 {
			r.Start = time.Unix(0, h.Start[i]).UTC()
		}
		if o := at(h.Outcome, i); o >= 0 && int(o) < len(outcomes) {
			r.Outcome = outcomes[o]
		}
		if len(h.Reason) > 0 {
			r.Reason = health.Reason(h.Reason[i])
		}
		r.HTTPStatus = int(at(h.HttpStatus, i))
		if at(h.HasExitCode, i) {
			code := int(at(h.ExitCode, i))
			r.ExitCode = &code
		}
		r.Phases = health.Phases{Connect: time.Duration(at(h.Connect, i)), TLS: time.Duration(at(h.Tls, i)),
			FirstByte: time.Duration(at(h.FirstByte, i))}
		if x := at(texts, i); x != nil {
			r.Message, r.Output, r.Truncated = x.Message, x.Output, x.OutputTruncated
			if x.CertNotAfter != 0 {
				r.CertNotAfter = time.Unix(x.CertNotAfter, 0).UTC()
			}
		}
		hist.Add(r)
	}
	return nil
}

// at is column c's value for result i: zero in a column left out.
func at[T any](c []T, i int) T {
	var zero T
	if len(c) == 0 {
		return zero
	}
	return c[i]
}

// readState sets *st from m and checks it, as a state read from JSON is.
func readState(m *record.State, st *health.State) error {
	if m == nil {
		return nil
	}
	*st = health.State{
		Window:               m.Window,
		WindowStart:          timeOf(m.WindowStart),
		Eval:                 health.Status(m.Eval),
		Status:               health.Status(m.Status),
		Since:                timeOf(m.Since),
		GraceOver:            m.GraceOver,
		ConsecutiveSuccesses: count(m.ConsecutiveSuccesses),
		ConsecutiveFailures:  count(m.ConsecutiveFailures),
		LastCheckedAt:        timeOf(m.LastCheckedAt),
		LastSuccessAt:        timeOf(m.LastSuccessAt),
		LastFailureAt:        timeOf(m.LastFailureAt),
		LastError:            m.LastError,
	}
	if m.History != nil {
		if err := readHistory(m.History, &st.History); err != nil {
			return err
		}
	}
	if r := m.Restart; r != nil {
		st.Restart = &health.RestartState{
			Attempts:      count(r.Attempts),
			LastAttemptAt: timeOf(r.LastAttemptAt),
			NextAttemptAt: timeOf(r.NextAttemptAt),
			Blocked:       r.BlockedReason,
			Pending:       r.Pending,
			Reason:        health.Reason(r.Reason),
			LastError:     r.LastError,
		}
	}
	if f := m.Flap; f != nil {
		if len(f.Changes) > health.FlapChanges {
			return fmt.Errorf("state.flap.changes: must hold at most %d changes (got %d)", health.FlapChanges, len(f.Changes))
		}
		st.Flap = &health.Flap{Next: count(f.Next), Flapping: f.Flapping}
		copy(st.Flap.Changes[:], f.Changes)
	}
	return st.Check()
}

// text is s as a record's string holds it: valid UTF-8, each run of bytes
// that is not replaced by U+FFFD (as JSON wrote it) — a probe's output is
// the guest's bytes, and protobuf refuses to write a string that is not.
func text(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// count is a stored count as an int, -1 for one out of an int32's range
// (which State.Check then refuses, naming it), on a host of any word size.
func count(n int64) int {
	if n < 0 || n > math.MaxInt32 {
		return -1
	}
	return int(n)
}

// timestamp is t as a record holds it: none for the zero time.
func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// timeOf is the time a record holds, in UTC; the zero time for none.
func timeOf(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}
