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
	StartedAt   time.Time        `json:"started_at"`
	Policy      *health.Policy   `json:"policy,omitempty"`
	State       health.State     `json:"state"`
	NextCheckAt time.Time        `json:"next_check_at"`
}

// Config is the configuration the snapshot was computed under.
func (s *Snapshot) Config() health.Config {
	return health.Config{Policy: s.Policy, Lifecycle: s.Lifecycle, StartedAt: s.StartedAt}
}

// Event is one status transition with its sequence number.
type Event struct {
	Seq        uint64 `json:"seq"`
	InstanceID string `json:"instance_id"`
	// Node is the node whose log the event is in, on a fleet's stream.
	Node string `json:"node,omitempty"`
	health.Transition
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
	// before the event is durable. It does not block the caller on I/O.
	AppendTransition(snap *Snapshot, ev Event, publish func(Event))
	// Events returns up to limit events with a sequence number above after,
	// in order, and the oldest sequence number still retained.
	Events(after uint64, limit int) (events []Event, oldest uint64, err error)
	// LastSeq is the highest sequence number assigned.
	LastSeq() uint64
	// Flush returns once everything queued so far is durable.
	Flush(ctx context.Context) error
}
