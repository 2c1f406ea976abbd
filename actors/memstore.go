package actors

import (
	"context"
	"sort"
	"sync"

	"github.com/vigilhq/vigil/health"
)

// MemoryEventRetention is how many events a MemoryStore keeps at least.
const MemoryEventRetention = 100_000

// MemoryStore is an in-memory Store: nothing survives the process. It is for
// tests and for embedders that persist elsewhere.
type MemoryStore struct {
	mu        sync.Mutex
	instances map[string]health.Instance
	snaps     map[string]*Snapshot
	events    []Event
	seq       uint64
}

// NewMemoryStore returns an empty in-memory store.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{instances: map[string]health.Instance{}, snaps: map[string]*Snapshot{}}
}

// PutInstance stores in.
func (m *MemoryStore) PutInstance(_ context.Context, in health.Instance) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.instances[in.ID] = in
	return nil
}

// DeleteInstance removes id and its snapshot.
func (m *MemoryStore) DeleteInstance(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.instances, id)
	delete(m.snaps, id)
	return nil
}

// Load calls fn for every instance in id order.
func (m *MemoryStore) Load(_ context.Context, fn func(health.Instance, *Snapshot) error) error {
	m.mu.Lock()
	ids := make([]string, 0, len(m.instances))
	for id := range m.instances {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	type rec struct {
		in   health.Instance
		snap *Snapshot
	}
	recs := make([]rec, len(ids))
	for i, id := range ids {
		recs[i] = rec{m.instances[id], m.snaps[id]}
	}
	m.mu.Unlock()
	for _, r := range recs {
		if err := fn(r.in, r.snap); err != nil {
			return err
		}
	}
	return nil
}

// Snapshot returns the newest snapshot of id.
func (m *MemoryStore) Snapshot(id string) (*Snapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.snaps[id]; ok {
		return s, nil
	}
	return nil, ErrNotStored
}

// SaveSnapshot keeps snap if its instance is still stored.
func (m *MemoryStore) SaveSnapshot(snap *Snapshot) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.saveLocked(snap)
}

func (m *MemoryStore) saveLocked(snap *Snapshot) {
	if snap == nil {
		return
	}
	if _, ok := m.instances[snap.ID]; ok {
		m.snaps[snap.ID] = snap
	}
}

// AppendTransition stores snap and the event, then publishes it.
func (m *MemoryStore) AppendTransition(snap *Snapshot, ev Event, publish func(Event)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.saveLocked(snap)
	m.seq++
	ev.Seq = m.seq
	m.events = append(m.events, ev)
	// trim in steps of a quarter, so appends stay amortized O(1)
	if len(m.events) > MemoryEventRetention+MemoryEventRetention/4 {
		m.events = append(m.events[:0:0], m.events[len(m.events)-MemoryEventRetention:]...)
	}
	if publish != nil {
		publish(ev)
	}
}

// Persist keeps snap, then calls done.
func (m *MemoryStore) Persist(snap *Snapshot, done func()) {
	m.mu.Lock()
	m.saveLocked(snap)
	m.mu.Unlock()
	if done != nil {
		done()
	}
}

// Events returns events after the given sequence number.
func (m *MemoryStore) Events(after uint64, limit int) ([]Event, uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	oldest := m.seq + 1
	if len(m.events) > 0 {
		oldest = m.events[0].Seq
	}
	i := sort.Search(len(m.events), func(i int) bool { return m.events[i].Seq > after })
	n := min(limit, len(m.events)-i)
	return append([]Event(nil), m.events[i:i+n]...), oldest, nil
}

// LastSeq is the highest sequence number assigned.
func (m *MemoryStore) LastSeq() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.seq
}

// Flush has nothing to do.
func (m *MemoryStore) Flush(context.Context) error { return nil }
