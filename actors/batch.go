package actors

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vigilhq/vigil/health"
)

// BatchItem is one instance of a batch registration: its id and its spec,
// as a single Put takes them.
type BatchItem struct {
	ID   string
	Spec health.InstanceSpec
}

// BatchResult is what became of one item of a batch: created or replaced,
// or the error a single Put of it would have returned.
type BatchResult struct {
	Created bool
	Err     error
}

// batchStore is a Store that makes many instances durable in one commit
// (the Badger store: one write batch and one sync). A store without it is
// given the instances one PutInstance each, all at once, which a
// group-committing store still lands together.
type batchStore interface {
	PutInstances(ctx context.Context, ins []health.Instance) error
}

// PutMany creates or replaces many instances at once. Each item is checked
// by the rules of Put and fails alone: the others are registered. Every item
// that succeeds is durable when PutMany returns — the valid items of a batch
// are stored in one commit of the store, and the new ones get their actors
// in one round trip to the parent — and its actor has the spec. An id given
// twice fails its later items. Results are in the order of items.
func (s *Scheduler) PutMany(ctx context.Context, items []BatchItem) []BatchResult {
	out := make([]BatchResult, len(items))
	if s.closed.Load() {
		for i := range out {
			out[i].Err = ErrClosed
		}
		return out
	}
	type pending struct {
		i   int
		in  health.Instance
		e   *entry
		new bool
	}
	var work []pending
	first := make(map[string]int, len(items))
	for i, it := range items {
		if err := health.ValidateID(it.ID); err != nil {
			out[i].Err = err
			continue
		}
		if j, dup := first[it.ID]; dup {
			out[i].Err = &health.FieldError{Field: "id", Message: fmt.Sprintf("%s is the id of item %d too: an id may appear once in a batch", it.ID, j)}
			continue
		}
		first[it.ID] = i
		in, err := s.normalize(it.ID, it.Spec, nil)
		if err != nil {
			out[i].Err = err
			continue
		}
		work = append(work, pending{i: i, in: in})
	}
	if len(work) == 0 {
		return out
	}

	// Take every entry's lock. A batch holds many at once, so batches take
	// them one batch at a time (batchMu): a single change holds one lock
	// and never waits for another, so nothing can wait in a circle.
	s.batchMu.Lock()
	s.mu.Lock()
	for k := range work {
		p := &work[k]
		if e, ok := s.entries[p.in.ID]; ok {
			p.e = e
			continue
		}
		p.e, p.new = &entry{id: p.in.ID}, true
		p.e.mu.Lock()
		s.entries[p.in.ID] = p.e
		s.ids.insert(p.e)
	}
	s.mu.Unlock()
	for k := range work {
		p := &work[k]
		for !p.new {
			p.e.mu.Lock()
			if !p.e.gone {
				break
			}
			p.e.mu.Unlock() // removed meanwhile: look again
			s.mu.Lock()
			if e, ok := s.entries[p.in.ID]; ok {
				p.e = e
			} else {
				p.e, p.new = &entry{id: p.in.ID}, true
				p.e.mu.Lock()
				s.entries[p.in.ID] = p.e
				s.ids.insert(p.e)
			}
			s.mu.Unlock()
		}
	}
	s.batchMu.Unlock()

	ins := make([]health.Instance, len(work))
	for k, p := range work {
		ins[k] = p.in
	}
	if err := storageErr(s.putInstances(ctx, ins)); err != nil {
		for _, p := range work {
			out[p.i].Err = err
			if p.new {
				p.e.gone = true
				p.e.mu.Unlock()
				s.unregister(p.e.id, p.e)
			} else {
				p.e.mu.Unlock()
			}
		}
		return out
	}

	// durable: the new ones get their actors in one round trip, the
	// others their spec
	var born []*entry
	var bornAt []int
	var futures []*actor.Future
	var asked []int
	for k := range work {
		p := &work[k]
		in := p.in
		p.e.spec.Store(&in)
		if p.new {
			born, bornAt = append(born, p.e), append(bornAt, p.i)
			continue
		}
		if p.e.dead.Load() || p.e.pid.Load() == nil {
			_, err := s.ask(p.e, &configure{inst: &in}) // answers why
			out[p.i].Err = err
			p.e.mu.Unlock()
			continue
		}
		futures = append(futures, s.root.RequestFuture(p.e.pid.Load(), &configure{inst: &in}, s.opt.askTimeout))
		asked = append(asked, k)
	}
	for f, k := range asked {
		p := &work[k]
		out[p.i].Err = s.configured(p.e, futures[f])
		p.e.mu.Unlock()
	}
	for b, err := range s.spawnEach(born) {
		e, i := born[b], bornAt[b]
		if err != nil {
			e.gone = true
			e.mu.Unlock()
			s.unregister(e.id, e)
			out[i].Err = err
			continue
		}
		e.mu.Unlock()
		out[i].Created = true
	}
	return out
}

// configured is the answer of an actor to a configure asked with f, as ask
// would have returned it.
func (s *Scheduler) configured(e *entry, f *actor.Future) error {
	res, err := f.Result()
	switch {
	case errors.Is(err, actor.ErrDeadLetter):
		if e.dead.Load() {
			return ErrActorStopped
		}
		return ErrNotFound
	case errors.Is(err, actor.ErrTimeout):
		return ErrUnavailable
	case err != nil:
		return err
	}
	if err, ok := res.(error); ok {
		return err
	}
	return nil
}

// putInstances makes ins durable together: in one commit when the store
// can, else with concurrent PutInstance calls that it may group.
func (s *Scheduler) putInstances(ctx context.Context, ins []health.Instance) error {
	if bs, ok := s.opt.store.(batchStore); ok {
		return bs.PutInstances(ctx, ins)
	}
	errs := make([]error, len(ins))
	var wg sync.WaitGroup
	for i := range ins {
		wg.Go(func() { errs[i] = s.opt.store.PutInstance(ctx, ins[i]) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// spawnEach spawns the actors of many entries, in one round trip to each
// parent that has a share of them (the parents spawn at once), and says for
// each whether it was spawned.
func (s *Scheduler) spawnEach(entries []*entry) []error {
	errs := make([]error, len(entries))
	if len(entries) == 0 {
		return errs
	}
	// each parent's share, in the entries' order
	shares := make([][]int, len(s.parents))
	for i, e := range entries {
		k := s.parentOf(e.id)
		shares[k] = append(shares[k], i)
	}
	futures := make([]*actor.Future, len(s.parents))
	for k, share := range shares {
		if len(share) == 0 {
			continue
		}
		batch := &spawnChildren{ids: make([]string, len(share)), props: s.props}
		for j, i := range share {
			batch.ids[j] = entries[i].id
		}
		// the parents are local and only spawn: the bound is there to turn
		// a bug into an error, not to hurry a busy host at boot
		timeout := s.opt.askTimeout + time.Minute + time.Duration(len(share))*100*time.Microsecond
		futures[k] = s.root.RequestFuture(s.parents[k], batch, timeout)
	}
	for k, share := range shares {
		if len(share) == 0 {
			continue
		}
		res, err := futures[k].Result()
		if err != nil {
			for _, i := range share {
				errs[i] = fmt.Errorf("actors: spawn %d instances: %w", len(share), err)
			}
			continue
		}
		r := res.(*spawnedChildren)
		for j, i := range share {
			if r.errs[j] != nil {
				errs[i] = fmt.Errorf("actors: spawn %s: %w", entries[i].id, r.errs[j])
				continue
			}
			entries[i].pid.Store(r.pids[j])
		}
	}
	return errs
}
