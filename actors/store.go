package actors

import (
	"context"
	"errors"
	"time"

	"github.com/vigilhq/vigil/health"
)

// SnapshotVersion is the schema version of Snapshot records.
const SnapshotVersion = 1

// Snapshot is the runtime state of one instance, as an actor hands it to the
// store: the health state, the configuration it was computed under (so a
// newer spec found at boot can be reconciled with it), and the next due probe.
type Snapshot struct {
	Version     int              `json:"v"`
	ID          string           `json:"id"`
	Lifecycle   health.Lifecycle `json:"lifecycle"`
	StartedAt   time.Time        `json:"started_at,omitzero"`
	Policy      *health.Policy   `json:"policy,omitempty"`
	State       health.State     `json:"state"`
	NextCheckAt time.Time        `json:"next_check_at,omitzero"`
}

// Config is the configuration the snapshot was computed under.
func (s *Snapshot) Config() health.Config {
	return health.Config{Policy: s.Policy, Lifecycle: s.Lifecycle, StartedAt: s.StartedAt}
}

// Event is one entry of the durable event log, with its sequence number: a
// status transition (Kind empty), or one of the kinds below.
type Event struct {
	Seq        uint64 `json:"seq"`
	InstanceID string `json:"instance_id,omitempty"`
	// Node is the node whose log the event is in, on a fleet's stream.
	Node string `json:"node,omitempty"`
	Kind string `json:"kind,omitempty"`
	health.Transition
	// What notifiers need of a transition: the instance's labels then,
	// and whether it was folded into something else — its flapping, a
	// silence, an incident (whose id it names).
	Labels   map[string]string `json:"labels,omitempty"`
	Flapping bool              `json:"flapping,omitempty"`
	Silenced bool              `json:"silenced,omitempty"`
	Incident string            `json:"incident,omitempty"`
	// Details of an event of a kind: an incident's counts and its
	// instances' common labels.
	Details map[string]any `json:"details,omitempty"`
}

// Kinds of events beside transitions.
const (
	KindTransition     = "transition"      // the name of Kind "" on the event stream
	KindFlapping       = "flapping"        // an instance started flapping (the transition that made it flap)
	KindFlappingEnded  = "flapping_ended"  // it has been steady for its window again: its current status
	KindIncidentOpened = "incident_opened" // a node's instances failing together
	KindIncidentClosed = "incident_closed"
	KindSilenceEnded   = "silence_ended" // an instance still unhealthy when its silence ended
)

// Name is the event's kind as the event stream names it.
func (ev *Event) Name() string {
	if ev.Kind == "" {
		return KindTransition
	}
	return ev.Kind
}

// ErrNotStored is returned by Store.Snapshot for an instance without one.
var ErrNotStored = errors.New("actors: no stored snapshot")

// Store is the durable storage the scheduler needs. The persistence package
// implements it on Badger; NewMemoryStore is an in-memory implementation.
type Store interface {
	// PutInstance stores a normalized instance and returns once it is
	// durable. Concurrent calls may share one sync.
	PutInstance(ctx context.Context, in health.Instance) error
	// DeleteInstance removes an instance, its snapshot and its pending
	// writes, and returns once that is durable.
	DeleteInstance(ctx context.Context, id string) error
	// Load calls fn for every stored instance with its last snapshot (nil if
	// none). Records that cannot be decoded are reported through the
	// returned error only if nothing else can load; otherwise they are
	// skipped (the store logs them).
	Load(ctx context.Context, fn func(in health.Instance, snap *Snapshot) error) error
	// Snapshot returns the newest snapshot of id, pending or stored, or
	// ErrNotStored.
	Snapshot(id string) (*Snapshot, error)
	// SaveSnapshot queues a snapshot; the newest per instance wins. It never
	// blocks on I/O. The store owns snap afterwards.
	SaveSnapshot(snap *Snapshot)
	// AppendTransition makes snap and the transition durable, assigns the
	// event its sequence number, and then calls publish with it. publish is
	// called in sequence order, never concurrently with itself, and never
	// before the event is durable. It does not block the caller on I/O. snap
	// is nil for an event of no instance's (an incident).
	AppendTransition(snap *Snapshot, ev Event, publish func(Event))
	// Persist makes snap durable and then calls done (from the store's own
	// goroutine, never before): for a decision that must not be lost once
	// acted on (a restart attempt). It does not block the caller on I/O.
	Persist(snap *Snapshot, done func())
	// Events returns up to limit events with a sequence number above after,
	// in order, and the oldest sequence number still retained.
	Events(after uint64, limit int) (events []Event, oldest uint64, err error)
	// LastSeq is the highest sequence number assigned.
	LastSeq() uint64
	// Flush returns once everything queued so far is durable.
	Flush(ctx context.Context) error
}
