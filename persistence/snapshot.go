package persistence

import (
	"bytes"
	"fmt"
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
		V:           int32(snap.Version),
		Id:          snap.ID,
		Lifecycle:   string(snap.Lifecycle),
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

// decodeSnapshotUnder is decodeSnapshot for a snapshot read with its
// instance's record: a snapshot whose policy is encoded as policyJSON (the
// record's) takes policy, the instance's, instead of decoding its own —
// each instance's snapshot has its own policy in nearly every store, and a
// start reads a million of them.
func decodeSnapshotUnder(v, policyJSON []byte, policy *health.Policy) (*actors.Snapshot, error) {
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
	switch {
	case len(m.Policy) == 0:
	case policy != nil && bytes.Equal(m.Policy, policyJSON):
		snap.Policy = policy
	default:
		var p health.Policy
		if err := decode(m.Policy, &p); err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		snap.Policy = &p
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
		Eval:                 string(st.Eval),
		Status:               string(st.Status),
		Since:                timestamp(st.Since),
		GraceOver:            st.GraceOver,
		ConsecutiveSuccesses: int64(st.ConsecutiveSuccesses),
		ConsecutiveFailures:  int64(st.ConsecutiveFailures),
		LastCheckedAt:        timestamp(st.LastCheckedAt),
		LastSuccessAt:        timestamp(st.LastSuccessAt),
		LastFailureAt:        timestamp(st.LastFailureAt),
		LastError:            st.LastError,
	}
	if n := st.History.Len(); n > 0 {
		rs := st.History.Results()
		m.History = make([]*record.Result, n)
		all := make([]record.Result, n) // one allocation for the lot
		for i := range rs {
			m.History[i] = resultRecord(&rs[i], &all[i])
		}
	}
	if r := st.Restart; r != nil && !r.IsZero() {
		m.Restart = &record.Restart{
			Attempts:      int64(r.Attempts),
			LastAttemptAt: timestamp(r.LastAttemptAt),
			NextAttemptAt: timestamp(r.NextAttemptAt),
			BlockedReason: r.Blocked,
			Pending:       r.Pending,
			Reason:        string(r.Reason),
			LastError:     r.LastError,
		}
	}
	if f := st.Flap; f != nil && !f.IsZero() {
		m.Flap = &record.Flap{Changes: f.Changes[:], Next: int64(f.Next), Flapping: f.Flapping}
	}
	return m
}

// resultRecord fills m with r.
func resultRecord(r *health.Result, m *record.Result) *record.Result {
	*m = record.Result{
		Outcome:         string(r.Outcome),
		Reason:          string(r.Reason),
		Message:         r.Message,
		Duration:        int64(r.Duration),
		HttpStatus:      int32(r.HTTPStatus),
		Output:          r.Output,
		OutputTruncated: r.Truncated,
		Connect:         int64(r.Phases.Connect),
		Tls:             int64(r.Phases.TLS),
		FirstByte:       int64(r.Phases.FirstByte),
	}
	if !r.Start.IsZero() {
		m.Start = r.Start.UnixNano() // as the history holds it
	}
	if r.ExitCode != nil {
		m.HasExitCode, m.ExitCode = true, int64(*r.ExitCode)
	}
	if !r.CertNotAfter.IsZero() {
		m.CertNotAfter = r.CertNotAfter.Unix()
	}
	return m
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
		ConsecutiveSuccesses: int(m.ConsecutiveSuccesses),
		ConsecutiveFailures:  int(m.ConsecutiveFailures),
		LastCheckedAt:        timeOf(m.LastCheckedAt),
		LastSuccessAt:        timeOf(m.LastSuccessAt),
		LastFailureAt:        timeOf(m.LastFailureAt),
		LastError:            m.LastError,
	}
	for _, r := range m.History {
		st.History.Add(resultOf(r))
	}
	if r := m.Restart; r != nil {
		st.Restart = &health.RestartState{
			Attempts:      int(r.Attempts),
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
		st.Flap = &health.Flap{Next: int(f.Next), Flapping: f.Flapping}
		copy(st.Flap.Changes[:], f.Changes)
	}
	return st.Check()
}

// resultOf is the result m holds.
func resultOf(m *record.Result) health.Result {
	r := health.Result{
		Outcome:    health.Outcome(m.Outcome),
		Reason:     health.Reason(m.Reason),
		Message:    m.Message,
		Duration:   health.Duration(m.Duration),
		HTTPStatus: int(m.HttpStatus),
		Output:     m.Output,
		Truncated:  m.OutputTruncated,
		Phases:     health.Phases{Connect: time.Duration(m.Connect), TLS: time.Duration(m.Tls), FirstByte: time.Duration(m.FirstByte)},
	}
	if m.Start != 0 {
		r.Start = time.Unix(0, m.Start).UTC()
	}
	if m.HasExitCode {
		code := int(m.ExitCode)
		r.ExitCode = &code
	}
	if m.CertNotAfter != 0 {
		r.CertNotAfter = time.Unix(m.CertNotAfter, 0).UTC()
	}
	return r
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
