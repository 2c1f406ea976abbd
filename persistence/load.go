package persistence

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/dgraph-io/badger/v4"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// maxSizeHint bounds the size a load makes its map of ids at from the
// stored count, which a damaged record may overstate.
const maxSizeHint = 1 << 21

// loadBatchSize is how many records a batch of a load carries from the
// reader to the decoders and on to the caller.
const loadBatchSize = 256

// loadBatch is a run of stored records in id order: their bytes, copied out of
// the transaction into one buffer, and what a decoder made of them.
type loadBatch struct {
	buf  []byte
	raw  []rawRecord
	out  []loadedRecord
	done chan struct{} // closed once out is filled
}

// rawRecord is where an instance record and its snapshot (if any) sit in
// their batch's buffer.
type rawRecord struct {
	id              string
	inst, snap, end int // offsets: the record is buf[inst:snap], the snapshot buf[snap:end]
	hasSnap         bool
}

// loadedRecord is a record as decoded and checked: an instance to load, or
// why it is skipped; its snapshot, or why that is.
type loadedRecord struct {
	in      health.Instance
	snap    *actors.Snapshot
	err     error // the record is skipped (ErrNewerSchema stops the load)
	snapErr error // the snapshot is skipped (ErrNewerSchema stops the load)
}

// Load calls fn for every stored instance, in id order, with its snapshot.
// An undecodable record is logged and skipped; a record from a newer schema
// stops the load with ErrNewerSchema.
//
// One goroutine reads the records in key order, copying a batch at a time
// out of the transaction; a decoder per CPU decodes and checks the batches;
// the caller's goroutine takes them back in order and calls fn. Decoding is
// most of a boot's work, and this spreads it over the host's cores.
func (s *Store) Load(ctx context.Context, fn func(health.Instance, *actors.Snapshot) error) error {
	workers := runtime.GOMAXPROCS(0)
	work := make(chan *loadBatch, workers)
	ordered := make(chan *loadBatch, 2*workers)
	// a decoded batch's buffer goes back to the reader: nothing decoded
	// refers to it, and a boot of a million records would otherwise make
	// gigabytes of garbage to copy them through
	spare := make(chan []byte, 4*workers)
	quit := make(chan struct{})
	var decoders sync.WaitGroup
	for range workers {
		decoders.Add(1)
		go func() {
			defer decoders.Done()
			var memo policyMemo
			for b := range work {
				b.decode(&memo)
				select {
				case spare <- b.buf[:0]:
				default:
				}
				b.buf = nil
			}
		}()
	}
	var (
		readErr error
		stored  = -1 // the count of specs the store recorded, when it did
		reader  = make(chan struct{})
		counted = make(chan struct{}) // stored is read
	)
	go func() {
		defer close(reader)
		defer decoders.Wait()
		defer close(work)
		defer close(ordered)
		defer func() {
			select {
			case <-counted:
			default:
				close(counted) // the transaction did not start
			}
		}()
		readErr = s.db.View(func(txn *badger.Txn) error {
			if item, err := txn.Get(keySpecs); err == nil {
				_ = item.Value(func(v []byte) error {
					if len(v) == 8 {
						stored = int(binary.BigEndian.Uint64(v))
					}
					return nil
				})
			}
			close(counted)
			return s.readRecords(ctx, txn, work, ordered, spare, quit)
		})
	}()
	<-counted
	s.mu.Lock()
	if len(s.known) == 0 && stored > 0 {
		// made at its size: a million ids would grow it twenty times
		s.known = make(map[string]bool, min(stored, maxSizeHint))
	}
	s.mu.Unlock()
	loaded, skipped, err := s.takeRecords(ordered, fn)
	close(quit)
	for range ordered { // let the reader end
	}
	<-reader
	if err == nil {
		err = readErr
	}
	if err != nil {
		return err
	}
	if skipped > 0 {
		s.log.Warn().Int("skipped", skipped).Msg("store_load_skipped_records")
	}
	s.mu.Lock()
	s.skipped = skipped
	if stored > loaded+skipped {
		s.missing = stored - loaded - skipped
	}
	s.mu.Unlock()
	if stored > loaded+skipped {
		s.log.Error().Int("expected", stored).Int("loaded", loaded).Int("skipped", skipped).
			Int("unreadable", stored-loaded-skipped).Str("data_dir", s.dir).
			Msg("store_records_unreadable")
	}
	return nil
}

// readRecords sends the instance records, each with its snapshot, in
// batches to the decoders and, in the same order, to the caller, each batch
// in a buffer from spare when one is there.
func (s *Store) readRecords(ctx context.Context, txn *badger.Txn, work, ordered chan<- *loadBatch, spare chan []byte, quit <-chan struct{}) error {
	// no prefetching: every value is in the tree (valueThreshold), read in
	// place, where a prefetch copies each in a goroutine of its own
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefixInstance})
	defer it.Close()
	sit := txn.NewIterator(badger.IteratorOptions{Prefix: prefixSnapshot})
	defer sit.Close()
	sit.Rewind()
	b := &loadBatch{}
	send := func() error {
		if len(b.raw) == 0 {
			return nil
		}
		b.done = make(chan struct{})
		size := cap(b.buf) // the batch is the decoders' once sent
		select {
		case ordered <- b:
		case <-quit:
			return errLoadStopped
		}
		select {
		case work <- b:
		case <-quit:
			return errLoadStopped
		}
		next := &loadBatch{}
		select {
		case next.buf = <-spare:
		default:
			next.buf = make([]byte, 0, size)
		}
		b = next
		return nil
	}
	for it.Rewind(); it.Valid(); it.Next() {
		if len(b.raw) == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		item := it.Item()
		id := string(item.Key()[len(prefixInstance):])
		r := rawRecord{id: id, inst: len(b.buf)}
		if err := item.Value(func(v []byte) error { b.buf = append(b.buf, v...); return nil }); err != nil {
			return fmt.Errorf("persistence: read instance %s: %w", id, err)
		}
		r.snap = len(b.buf)
		skey := key(prefixSnapshot, id)
		for sit.Valid() && bytes.Compare(sit.Item().Key(), skey) < 0 {
			sit.Next()
		}
		if sit.Valid() && bytes.Equal(sit.Item().Key(), skey) {
			if err := sit.Item().Value(func(v []byte) error { b.buf = append(b.buf, v...); return nil }); err != nil {
				return fmt.Errorf("persistence: read snapshot %s: %w", id, err)
			}
			r.hasSnap = true
		}
		r.end = len(b.buf)
		b.raw = append(b.raw, r)
		if len(b.raw) == loadBatchSize {
			if err := send(); err != nil {
				return err
			}
		}
	}
	return send()
}

// errLoadStopped ends the reader when the caller has stopped taking records.
var errLoadStopped = errors.New("persistence: load stopped")

// decode decodes and checks every record of the batch, with the decoder's
// memo of the last snapshot policy.
func (b *loadBatch) decode(memo *policyMemo) {
	defer close(b.done)
	b.out = make([]loadedRecord, len(b.raw))
	for i, r := range b.raw {
		o := &b.out[i]
		o.in, o.err = decodeInstance(r.id, b.buf[r.inst:r.snap])
		if o.err == nil && r.hasSnap {
			o.snap, o.snapErr = decodeStoredSnapshot(r.id, b.buf[r.snap:r.end], o.in.HealthCheck, memo)
		}
	}
}

// writtenRecord is an instance record as a load reads it: when the record
// keeps what the client wrote, the instance is normalized again from that,
// and of the stored normalized instance only the id is read.
type writtenRecord struct {
	V        int `json:"v"`
	Instance struct {
		ID string `json:"id"`
	} `json:"instance"`
	Spec jsontext.Value `json:"spec,omitempty"`
}

// decodeInstance decodes an instance record and normalizes its spec again:
// a stored spec must still be valid, and it is normalized from what the
// client wrote when that is kept.
func decodeInstance(id string, v []byte) (health.Instance, error) {
	var rec writtenRecord
	if err := decode(v, &rec); err != nil {
		return health.Instance{}, err
	}
	if err := checkVersion("instance", id, rec.V); err != nil {
		return health.Instance{}, err
	}
	if rec.Instance.ID != id {
		return health.Instance{}, fmt.Errorf("record id %q does not match its key", rec.Instance.ID)
	}
	if rec.Spec == nil {
		// a record of a build before the written spec was kept
		var old instanceRecord
		if err := decode(v, &old); err != nil {
			return health.Instance{}, err
		}
		return old.Instance.Spec().Normalize(id)
	}
	var spec health.InstanceSpec
	if err := decode(rec.Spec, &spec); err != nil {
		return health.Instance{}, err
	}
	// rec.Spec is a copy (jsontext.Value's decoder copies): the record's
	// buffer is reused, the instance keeps it
	return spec.NormalizeWritten(id, rec.Spec)
}

// takeRecords takes the decoded batches in order and calls fn for each
// record that is loaded, logging the skipped ones.
func (s *Store) takeRecords(ordered <-chan *loadBatch, fn func(health.Instance, *actors.Snapshot) error) (loaded, skipped int, err error) {
	for b := range ordered {
		<-b.done
		s.mu.Lock()
		for i := range b.out {
			if b.out[i].err == nil {
				s.known[b.raw[i].id] = true
			}
		}
		s.mu.Unlock()
		for i := range b.out {
			o, id := &b.out[i], b.raw[i].id
			if o.err != nil {
				if errors.Is(o.err, ErrNewerSchema) {
					return loaded, skipped, o.err
				}
				skipped++
				s.log.Error().Err(o.err).Str("instance_id", id).Msg("store_record_skipped")
				continue
			}
			if o.snapErr != nil {
				if errors.Is(o.snapErr, ErrNewerSchema) {
					return loaded, skipped, o.snapErr
				}
				s.log.Error().Err(o.snapErr).Str("instance_id", id).Msg("store_snapshot_skipped")
			}
			loaded++
			if err := fn(o.in, o.snap); err != nil {
				return loaded, skipped, err
			}
		}
	}
	return loaded, skipped, nil
}
