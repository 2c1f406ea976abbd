// Package persistence is vigil's durable store on Badger: instance specs,
// runtime snapshots and the transition event log. It implements actors.Store.
//
// One writer goroutine owns every write. Spec changes and transitions queue to
// it and are group-committed: everything queued goes into one write batch and
// one sync, then spec writers are released and transitions are published in
// sequence order. Snapshots are coalesced per instance (latest wins) and
// flushed with the next batch, at least every FlushInterval.
//
// Concurrency contract: every exported method is safe for concurrent use.
// SaveSnapshot and AppendTransition never block on I/O.
package persistence

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"
	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	jsonv1 "github.com/go-json-experiment/json/v1"
	"github.com/rs/zerolog"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// SchemaVersion is the version of every record this build writes.
const SchemaVersion = 1

// Defaults.
const (
	FlushInterval     = 250 * time.Millisecond
	EventRetention    = 100_000
	EventRetentionAge = 24 * time.Hour
	GCInterval        = 5 * time.Minute
)

// Sizes of Badger's files, and the free space they need.
const (
	memTableSize     = 8 << 20
	valueLogFileSize = 32 << 20
	baseTableSize    = 2 << 20
	valueThreshold   = 1 << 20 // Badger's largest: every value is in the tree, and iterators read it in place (no prefetching)
	// FreeFloor is the free space the store keeps: what Badger may write
	// into the sparse files it maps — the memtables' logs (each mapped at
	// twice the memtable size, three at most), the current value log (up to
	// its size) and the tables a flush or compaction builds — and a margin.
	FreeFloor = 3*2*memTableSize + valueLogFileSize + 3*4*baseTableSize + 16<<20
)

// freeSpace is the space an unprivileged writer may use in dir.
func freeSpace(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil // Bsize is uint32 on some systems
}

// Key prefixes.
var (
	prefixInstance = []byte("i/")
	prefixSnapshot = []byte("s/")
	prefixEvent    = []byte("e/")
	prefixMeta     = []byte("x/")
	keySeq         = []byte("m/seq")
	// keySpecs counts the instance records, written with every change of
	// them: a load that finds fewer knows that some could not be read
	keySpecs = []byte("m/specs")
)

// ErrNewerSchema is returned when a record was written by a newer vigil.
var ErrNewerSchema = errors.New("persistence: record written by a newer vigil")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("persistence: store is closed")

// ErrDiskFull is a commit refused because the data directory's file system
// has less free space than the store needs to write without faulting:
// Badger writes its logs through memory maps of sparse files, and a page the
// file system cannot allocate kills the process instead of failing a write.
var ErrDiskFull = errors.New("persistence: not enough free space in the data directory")

// Options tune a Store.
type Options struct {
	Logger zerolog.Logger
	// BadgerLogger receives Badger's own log (default: Logger).
	BadgerLogger  *zerolog.Logger
	FlushInterval time.Duration // default 250ms
	Retention     int           // events kept at least (default 100 000)
	RetentionAge  time.Duration // events kept at least this long (default 24h)
	GCInterval    time.Duration // value-log GC and event pruning (default 5m)
	Now           func() time.Time
	// MinFree is the free space below which nothing is written (default:
	// what Badger may write into the holes of its mapped files, FreeFloor).
	MinFree int64
	// FreeSpace reports the free bytes of the data directory (default:
	// statfs); tests replace it.
	FreeSpace func(dir string) (int64, error)
}

// instanceRecord is a stored instance: normalized, and as the client wrote
// it (Spec; absent in records of builds before it was kept), which is what
// a later merge patch applies to.
type instanceRecord struct {
	V        int             `json:"v"`
	Instance health.Instance `json:"instance"`
	Spec     jsontext.Value  `json:"spec,omitempty"`
}

type eventRecord struct {
	V int `json:"v"`
	actors.Event
}

type specOp struct {
	put  *health.Instance
	rec  []byte // put's record, encoded by the caller (off the writer's goroutine)
	del  string
	meta *metaOp
	// done receives the commit's error; several ops may share one; nil
	// for a record queued without a wait (QueueMeta)
	done chan error
}

// metaOp writes or deletes one record of the store's other users (notifiers
// and their cursors, silences): keys under prefixMeta.
type metaOp struct {
	key   string
	value []byte // nil deletes
}

type transitionOp struct {
	ev      actors.Event
	publish func(actors.Event)
}

type persistOp struct {
	snap *actors.Snapshot
	done func()
}

// Store is a Badger-backed actors.Store.
type Store struct {
	db      *badger.DB
	dir     string
	opt     Options
	log     zerolog.Logger
	wake    chan struct{}
	stop    chan struct{}
	metrics *storeMetrics
	done    chan struct{}

	mu          sync.Mutex
	closed      bool
	known       map[string]bool // ids with a spec (snapshots of others are dropped)
	snaps       map[string]*actors.Snapshot
	specs       []specOp
	transitions []transitionOp
	persists    []persistOp
	flushes     []chan error
	writing     map[string]*actors.Snapshot // snapshots in the batch being written
	seq         uint64                      // last assigned sequence number
	oldest      uint64                      // oldest retained sequence number
	unhealthy   error                       // the last commit's failure, until one succeeds
	missing     int                         // instance records the last load could not read
	skipped     int                         // instance records the last load read but refused
}

// Unreadable is how many instance records the load found counted but could
// not read (a damaged table); they are reported at start.
func (s *Store) Unreadable() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.missing
}

// tableRef is how Badger's errors name a table: by its number.
var tableRef = regexp.MustCompile(`\btable (\d+)\b`)

// hostErrors are the errors of a data directory's host, not of its files:
// what to do about each. A directory that cannot be opened for one of them
// is not damaged, and nothing in it needs moving.
var hostErrors = []struct {
	errno syscall.Errno
	what  string
}{
	{syscall.ENFILE, "the host has too many files open"}, // before EMFILE, whose text starts its own
	{syscall.EMFILE, "vigil may not open enough files: raise its limit (LimitNOFILE= in its unit, ulimit -n)"},
	{syscall.EACCES, "vigil may not read or write it: check the owner and the permissions of the directory and its files"},
	{syscall.EPERM, "vigil may not read or write it: check the owner and the permissions of the directory and its files"},
	{syscall.EROFS, "its file system is mounted read-only"},
	{syscall.ENOSPC, "its disk is full: free some space on it"},
	{syscall.EDQUOT, "its disk quota is used up"},
	{syscall.ENOTDIR, "the path is not a directory (it, or a directory above it, is a file)"},
	{syscall.ENOMEM, "the host is out of memory"},
}

// hostError is what to do about err when it is one of hostErrors: found
// through the chain, or in the text (Badger formats some errors with %v).
func hostError(err error) (string, bool) {
	var errno syscall.Errno
	wrapped := errors.As(err, &errno)
	msg := err.Error()
	for _, h := range hostErrors {
		if wrapped && errno == h.errno || strings.Contains(msg, h.errno.Error()) {
			return h.what, true
		}
	}
	return "", false
}

// filesMargin is how many files beside the data directory's own a store
// needs to be able to open: the directory itself at each sync, new tables
// and logs, the process's listeners and standard streams.
const filesMargin = 64

// roomForFiles refuses a limit on open files below what the data
// directory's files and filesMargin need: Badger keeps every file open,
// and ends the process itself when it cannot open the directory again in
// the middle of its start.
func roomForFiles(dir string) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return nil // nothing known to check against
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil // a new directory, or one Badger's open explains
	}
	if need := uint64(len(entries)) + filesMargin; lim.Cur < need {
		return fmt.Errorf("persistence: the data directory %s holds %d files, and vigil may open only %d files at once: "+
			"raise its limit to at least %d (LimitNOFILE= in its unit, ulimit -n); the directory is not damaged", dir, len(entries), lim.Cur, need)
	}
	return nil
}

// damagedDir explains a data directory Badger cannot open at all, naming
// the file when Badger's error names one only by its number. An error of
// the host rather than of the files says what to fix instead.
func damagedDir(dir string, err error) error {
	if what, ok := hostError(err); ok {
		return fmt.Errorf("persistence: the data directory %s cannot be opened: %w. Its files are not damaged: %s; "+
			"vigil starts with everything it had once that is fixed", dir, err, what)
	}
	file := ""
	if m := tableRef.FindStringSubmatch(err.Error()); m != nil {
		if n, perr := strconv.ParseUint(m[1], 10, 64); perr == nil {
			file = fmt.Sprintf(" (the table %s)", filepath.Join(dir, fmt.Sprintf("%06d.sst", n)))
		}
	} else if strings.Contains(strings.ToLower(err.Error()), "manifest") {
		file = fmt.Sprintf(" (the file %s)", filepath.Join(dir, "MANIFEST"))
	}
	return fmt.Errorf("persistence: the data directory %s cannot be opened: %w%s. Its files (MANIFEST, *.sst, *.vlog, *.mem) are damaged: "+
		"move the directory aside and start vigil with an empty one (the VM manager registers its instances again), or restore it from a backup", dir, err, file)
}

var _ actors.Store = (*Store)(nil)

// Open opens (or creates) the store in dir. A directory held by another
// process is an error that names it.
func Open(dir string, opt Options) (*Store, error) {
	if opt.FlushInterval <= 0 {
		opt.FlushInterval = FlushInterval
	}
	if opt.Retention <= 0 {
		opt.Retention = EventRetention
	}
	if opt.RetentionAge <= 0 {
		opt.RetentionAge = EventRetentionAge
	}
	if opt.GCInterval <= 0 {
		opt.GCInterval = GCInterval
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.MinFree <= 0 {
		opt.MinFree = FreeFloor
	}
	if opt.FreeSpace == nil {
		opt.FreeSpace = freeSpace
	}
	badgerLog := opt.Logger
	if opt.BadgerLogger != nil {
		badgerLog = *opt.BadgerLogger
	}
	bo := badger.DefaultOptions(dir).
		WithLogger(badgerLogger{badgerLog}).
		WithSyncWrites(false).
		// small caches: writes are small and batched, reads happen at boot
		// (one sequential scan) and for event streams; every byte here is Go
		// heap that also raises the garbage collector's target
		WithMemTableSize(memTableSize).
		WithNumMemtables(2).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(8 << 20).
		WithValueLogFileSize(valueLogFileSize).
		WithBaseTableSize(baseTableSize).
		// every record of up to 1 MiB (a spec's body is at most that) in
		// the tree, none in the value log: a spec never depends on the
		// value log, which a power loss may leave torn
		WithValueThreshold(valueThreshold).
		WithNumCompactors(2).
		WithMetricsEnabled(false)
	if err := roomForFiles(dir); err != nil {
		return nil, err
	}
	db, err := badger.Open(bo)
	if err != nil {
		if strings.Contains(err.Error(), "Cannot acquire directory lock") {
			return nil, fmt.Errorf("persistence: data directory %s is in use by another process: %w", dir, err)
		}
		if _, statErr := os.Stat(dir); statErr != nil {
			return nil, fmt.Errorf("persistence: open data directory %s: %w", dir, err)
		}
		return nil, damagedDir(dir, err)
	}
	s := &Store{db: db, dir: dir, opt: opt, log: opt.Logger, wake: make(chan struct{}, 1), stop: make(chan struct{}),
		done: make(chan struct{}), metrics: newStoreMetrics(), known: map[string]bool{}, snaps: map[string]*actors.Snapshot{}}
	if err := s.loadSeq(); err != nil {
		_ = db.Close()
		return nil, err
	}
	go s.writer()
	return s, nil
}

func eventKey(seq uint64) []byte {
	k := make([]byte, len(prefixEvent)+8)
	copy(k, prefixEvent)
	binary.BigEndian.PutUint64(k[len(prefixEvent):], seq)
	return k
}

// eventSeq is the sequence number in an event's key; ok is false for a key
// under the events' prefix that is not one the store writes (a damaged
// record), which is left alone.
func eventSeq(k []byte) (seq uint64, ok bool) {
	if len(k) != len(prefixEvent)+8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(k[len(prefixEvent):]), true
}

func key(prefix []byte, id string) []byte { return append(append([]byte(nil), prefix...), id...) }

// loadSeq recovers the sequence counter: the larger of the stored counter and
// the newest event, so numbers continue after a restart and are never reused.
func (s *Store) loadSeq() error {
	return s.db.View(func(txn *badger.Txn) error {
		if item, err := txn.Get(keySeq); err == nil {
			if err := item.Value(func(v []byte) error {
				if len(v) == 8 {
					s.seq = binary.BigEndian.Uint64(v)
				}
				return nil
			}); err != nil {
				return err
			}
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("persistence: read sequence: %w", err)
		}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefixEvent})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if seq, ok := eventSeq(it.Item().Key()); ok {
				s.oldest = seq
				break
			}
		}
		rit := txn.NewIterator(badger.IteratorOptions{Prefix: prefixEvent, Reverse: true})
		defer rit.Close()
		for rit.Seek(eventKey(^uint64(0))); rit.Valid(); rit.Next() {
			if seq, ok := eventSeq(rit.Item().Key()); ok {
				s.seq = max(s.seq, seq)
				break
			}
		}
		if s.oldest == 0 {
			s.oldest = s.seq + 1
		}
		return nil
	})
}

func (s *Store) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// PutInstance stores in and returns once it is synced.
func (s *Store) PutInstance(ctx context.Context, in health.Instance) error {
	return s.PutInstances(ctx, []health.Instance{in})
}

// PutInstances stores every instance of ins and returns once they are
// synced: they are queued together, so they land in one commit (one write
// batch, one sync) with whatever else is queued — a batch registration
// costs one sync, not one per instance.
func (s *Store) PutInstances(ctx context.Context, ins []health.Instance) error {
	if len(ins) == 0 {
		return nil
	}
	done := make(chan error, len(ins))
	ops := make([]specOp, len(ins))
	for i := range ins {
		rec, err := encode(instanceRecord{V: SchemaVersion, Instance: ins[i], Spec: ins[i].Written})
		if err != nil {
			return fmt.Errorf("persistence: encode instance %s: %w", ins[i].ID, err)
		}
		in := ins[i]
		ops[i] = specOp{put: &in, rec: rec, done: done}
	}
	return s.spec(ctx, ops...)
}

// DeleteInstance removes an instance, its snapshot and its queued snapshot,
// and returns once that is synced.
func (s *Store) DeleteInstance(ctx context.Context, id string) error {
	return s.spec(ctx, specOp{del: id, done: make(chan error, 1)})
}

// spec queues ops, which share one done channel, in one commit, and waits
// for it.
func (s *Store) spec(ctx context.Context, ops ...specOp) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	for _, op := range ops {
		switch {
		case op.put != nil:
			s.known[op.put.ID] = true
		case op.meta != nil:
		default:
			delete(s.known, op.del)
			delete(s.snaps, op.del)
			delete(s.writing, op.del)
		}
	}
	s.specs = append(s.specs, ops...)
	s.mu.Unlock()
	s.signal()
	var first error
	for range ops {
		select {
		case err := <-ops[0].done:
			first = cmp.Or(first, err)
		case <-ctx.Done():
			// the writes stay queued and land; the caller just stops waiting
			return ctx.Err()
		}
	}
	return first
}

// PutMeta stores a record of another component (a notifier, a cursor, a
// silence) under key, and returns once it is synced.
func (s *Store) PutMeta(ctx context.Context, key string, value []byte) error {
	if value == nil {
		value = []byte{}
	}
	return s.spec(ctx, specOp{meta: &metaOp{key: key, value: value}, done: make(chan error, 1)})
}

// QueueMeta stores a record under key with the next commit — the writer's
// next flush, within FlushInterval — without waking the writer or waiting:
// for a record whose loss in a crash only repeats work (a notifier's
// position), so that keeping it costs no commit of its own. A commit that
// fails drops it; a later QueueMeta or PutMeta of the key writes a newer
// value.
func (s *Store) QueueMeta(key string, value []byte) {
	if value == nil {
		value = []byte{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.specs = append(s.specs, specOp{meta: &metaOp{key: key, value: value}})
}

// DeleteMeta deletes the record under key, and returns once that is synced.
func (s *Store) DeleteMeta(ctx context.Context, key string) error {
	return s.spec(ctx, specOp{meta: &metaOp{key: key}, done: make(chan error, 1)})
}

// Meta calls fn for every record whose key starts with prefix, in key order.
func (s *Store) Meta(prefix string, fn func(key string, value []byte) error) error {
	return s.db.View(func(txn *badger.Txn) error {
		p := key(prefixMeta, prefix)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			if err := fn(string(it.Item().Key()[len(prefixMeta):]), v); err != nil {
				return err
			}
		}
		return nil
	})
}

// SaveSnapshot queues snap; the newest per instance wins.
func (s *Store) SaveSnapshot(snap *actors.Snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed && s.known[snap.ID] {
		s.snaps[snap.ID] = snap
	}
}

// AppendTransition queues snap and the event; the writer makes both durable,
// in one batch, assigns the sequence number and then calls publish. The
// snapshot joins the others queued, the newest per instance: however long
// the writes fail, what waits is every transition and one snapshot per
// instance.
func (s *Store) AppendTransition(snap *actors.Snapshot, ev actors.Event, publish func(actors.Event)) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	if snap != nil && s.known[snap.ID] {
		s.snaps[snap.ID] = snap // newer than any queued
		for i := range s.persists {
			if p := &s.persists[i]; p.snap != nil && p.snap.ID == snap.ID {
				p.snap = nil
			}
		}
	}
	s.transitions = append(s.transitions, transitionOp{ev: ev, publish: publish})
	s.mu.Unlock()
	s.signal()
}

// Persist queues snap for the next commit and calls done once it is
// synced; a snapshot of a deleted instance is dropped, done still called.
func (s *Store) Persist(snap *actors.Snapshot, done func()) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	if s.known[snap.ID] {
		// this one is newer than any queued before it: those are not written
		delete(s.snaps, snap.ID)
		for i := range s.persists {
			if p := &s.persists[i]; p.snap != nil && p.snap.ID == snap.ID {
				p.snap = nil
			}
		}
	} else {
		snap = nil
	}
	s.persists = append(s.persists, persistOp{snap: snap, done: done})
	s.mu.Unlock()
	s.signal()
}

// Flush returns once everything queued before it is durable.
func (s *Store) Flush(ctx context.Context) error {
	ch := make(chan error, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.flushes = append(s.flushes, ch)
	s.mu.Unlock()
	s.signal()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close flushes what is queued, stops the writer and closes Badger.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	<-s.done
	return s.db.Close()
}

func (s *Store) writer() {
	defer close(s.done)
	flush := time.NewTicker(s.opt.FlushInterval)
	defer flush.Stop()
	gc := time.NewTicker(s.opt.GCInterval)
	defer gc.Stop()
	for {
		select {
		case <-s.wake:
			s.commit()
		case <-flush.C:
			s.commit()
		case <-gc.C:
			s.prune()
			s.gcValueLog()
		case <-s.stop:
			s.commit()
			return
		}
	}
}

// commit writes everything queued in one batch and one sync.
func (s *Store) commit() {
	s.mu.Lock()
	specs, transitions, snaps, flushes, persists := s.specs, s.transitions, s.snaps, s.flushes, s.persists
	if len(specs) == 0 && len(transitions) == 0 && len(snaps) == 0 && len(flushes) == 0 && len(persists) == 0 {
		s.mu.Unlock()
		return
	}
	s.specs, s.transitions, s.flushes, s.persists = nil, nil, nil, nil
	for _, p := range persists {
		if p.snap != nil {
			snaps[p.snap.ID] = p.snap // newer than a coalesced one, which it replaces
		}
	}
	s.snaps = map[string]*actors.Snapshot{}
	seq := s.seq
	for i := range transitions {
		seq++
		transitions[i].ev.Seq = seq
	}
	writing := make(map[string]*actors.Snapshot, len(snaps))
	for id, snap := range snaps {
		writing[id] = snap
	}
	s.writing = writing
	// the count of instance records once this batch lands: known changes
	// when a spec is queued, and every queued spec is in this batch
	specCount := -1 // unchanged
	for _, op := range specs {
		if op.meta == nil {
			specCount = len(s.known)
			break
		}
	}
	s.mu.Unlock()

	began := time.Now()
	err := s.roomToWrite()
	if err == nil {
		err = s.write(specs, transitions, snaps, seq, specCount)
	}
	s.setHealth(err)
	s.metrics.commitTimes.Observe(time.Since(began).Seconds())
	if err != nil {
		s.metrics.failures.Inc()
		ev := s.log.Error()
		if errors.Is(err, ErrDiskFull) {
			ev = s.log.Debug() // store_unavailable said so once; this repeats every flush until space returns
		}
		ev.Err(err).Int("specs", len(specs)).Int("transitions", len(transitions)).Msg("store_commit_failed")
		// put the runtime state back so the next commit retries it
		s.mu.Lock()
		for id, snap := range snaps {
			if _, newer := s.snaps[id]; !newer && s.known[id] {
				s.snaps[id] = snap
			}
		}
		for i := range transitions {
			transitions[i].ev.Seq = 0
		}
		s.transitions = append(transitions, s.transitions...)
		s.persists = append(persists, s.persists...)
		s.writing = nil
		s.unqueueSpecsLocked(specs)
		s.mu.Unlock()
	} else {
		s.metrics.commits.Inc()
		s.metrics.specs.Add(float64(len(specs)))
		s.metrics.events.Add(float64(len(transitions)))
		s.metrics.snapshots.Add(float64(len(snaps)))
		s.mu.Lock()
		s.seq = seq
		s.writing = nil
		s.mu.Unlock()
		for _, t := range transitions {
			if t.publish != nil {
				t.publish(t.ev)
			}
		}
		for _, p := range persists {
			if p.done != nil {
				p.done()
			}
		}
	}
	for _, op := range specs {
		if op.done != nil { // a queued record has no one waiting
			op.done <- err
		}
	}
	for _, ch := range flushes {
		ch <- err
	}
}

// unqueueSpecsLocked sets known back to what is on disk for the ids of
// specs that failed to land (their callers get the error), unless a spec
// queued since changed them again.
func (s *Store) unqueueSpecsLocked(failed []specOp) {
	since := map[string]bool{}
	for _, op := range s.specs {
		if op.put != nil {
			since[op.put.ID] = true
		} else if op.meta == nil {
			since[op.del] = true
		}
	}
	_ = s.db.View(func(txn *badger.Txn) error {
		for _, op := range failed {
			id := op.del
			if op.put != nil {
				id = op.put.ID
			}
			if op.meta != nil || since[id] {
				continue
			}
			if _, err := txn.Get(key(prefixInstance, id)); err == nil {
				s.known[id] = true
			} else {
				delete(s.known, id)
			}
		}
		return nil
	})
}

func (s *Store) write(specs []specOp, transitions []transitionOp, snaps map[string]*actors.Snapshot, seq uint64, specCount int) error {
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, op := range specs {
		if m := op.meta; m != nil {
			k := key(prefixMeta, m.key)
			var err error
			if m.value == nil {
				err = wb.Delete(k)
			} else {
				err = wb.Set(k, m.value)
			}
			if err != nil {
				return err
			}
			continue
		}
		if op.put != nil {
			if err := wb.Set(key(prefixInstance, op.put.ID), op.rec); err != nil {
				return err
			}
			continue
		}
		if err := wb.Delete(key(prefixInstance, op.del)); err != nil {
			return err
		}
		if err := wb.Delete(key(prefixSnapshot, op.del)); err != nil {
			return err
		}
	}
	putSnap := func(snap *actors.Snapshot) error {
		b, err := encodeSnapshot(snap) // of this schema version, whatever snap.Version says
		if err != nil {
			// a snapshot is evidence: one that cannot be written is
			// left out, never the batch's specs and transitions with it
			s.log.Error().Err(err).Str("instance_id", snap.ID).Msg("store_snapshot_not_written")
			return nil
		}
		return wb.Set(key(prefixSnapshot, snap.ID), b)
	}
	for _, snap := range snaps {
		if err := putSnap(snap); err != nil {
			return err
		}
	}
	for _, t := range transitions {
		b, err := encode(eventRecord{V: SchemaVersion, Event: t.ev})
		if err != nil {
			return fmt.Errorf("encode event %d: %w", t.ev.Seq, err)
		}
		if err := wb.Set(eventKey(t.ev.Seq), b); err != nil {
			return err
		}
	}
	if len(transitions) > 0 {
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], seq)
		if err := wb.Set(keySeq, v[:]); err != nil {
			return err
		}
	}
	if specCount >= 0 {
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], uint64(specCount))
		if err := wb.Set(keySpecs, v[:]); err != nil {
			return err
		}
	}
	if err := wb.Flush(); err != nil {
		return err
	}
	return s.db.Sync()
}

// Snapshot returns the newest snapshot of id, queued or stored.
func (s *Store) Snapshot(id string) (*actors.Snapshot, error) {
	s.mu.Lock()
	if snap, ok := s.snaps[id]; ok {
		s.mu.Unlock()
		return snap, nil
	}
	if snap, ok := s.writing[id]; ok {
		s.mu.Unlock()
		return snap, nil
	}
	s.mu.Unlock()
	var snap *actors.Snapshot
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key(prefixSnapshot, id))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			var derr error
			snap, derr = decodeStoredSnapshot(id, v, nil, nil)
			return derr
		})
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, actors.ErrNotStored
	}
	return snap, err
}

// checkVersion refuses a record of a newer schema: the kind of record and
// its id (none for an event) name it.
func checkVersion(kind, id string, v int) error {
	if v > SchemaVersion {
		what := kind
		if id != "" {
			what += " " + id
		}
		return fmt.Errorf("%w: %s has schema version %d, this vigil reads up to %d; upgrade vigil", ErrNewerSchema, what, v, SchemaVersion)
	}
	return nil
}

// Events returns up to limit events after the given sequence number, and the
// oldest sequence number retained.
func (s *Store) Events(after uint64, limit int) ([]actors.Event, uint64, error) {
	s.mu.Lock()
	oldest := s.oldest
	s.mu.Unlock()
	var out []actors.Event
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefixEvent})
		defer it.Close()
		for it.Seek(eventKey(after + 1)); it.Valid() && len(out) < limit; it.Next() {
			if _, ok := eventSeq(it.Item().Key()); !ok {
				continue
			}
			var rec eventRecord
			if err := it.Item().Value(func(v []byte) error { return decode(v, &rec) }); err != nil {
				s.log.Error().Err(err).Bytes("key", it.Item().Key()).Msg("store_event_skipped")
				continue
			}
			if err := checkVersion("event", "", rec.V); err != nil {
				return err
			}
			out = append(out, rec.Event)
		}
		return nil
	})
	return out, oldest, err
}

// LastSeq is the highest sequence number made durable.
func (s *Store) LastSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq
}

// prune deletes events that are both older than RetentionAge and beyond the
// newest Retention events.
func (s *Store) prune() {
	if s.roomToWrite() != nil {
		return
	}
	s.mu.Lock()
	last, oldest := s.seq, s.oldest
	s.mu.Unlock()
	if last < uint64(s.opt.Retention) || last-uint64(s.opt.Retention) < oldest {
		return
	}
	limit := last - uint64(s.opt.Retention) // delete seq <= limit when old enough
	cutoff := s.opt.Now().Add(-s.opt.RetentionAge)
	var doomed [][]byte
	newOldest := oldest
	_ = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefixEvent})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			seq, ok := eventSeq(it.Item().Key())
			if !ok {
				continue
			}
			if seq > limit {
				break
			}
			var rec eventRecord
			if err := it.Item().Value(func(v []byte) error { return decode(v, &rec) }); err == nil && rec.At.After(cutoff) {
				break
			}
			doomed = append(doomed, it.Item().KeyCopy(nil))
			newOldest = seq + 1
		}
		return nil
	})
	if len(doomed) == 0 {
		return
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range doomed {
		if err := wb.Delete(k); err != nil {
			s.log.Error().Err(err).Msg("store_prune_failed")
			return
		}
	}
	if err := wb.Flush(); err != nil {
		s.log.Error().Err(err).Msg("store_prune_failed")
		return
	}
	s.mu.Lock()
	s.oldest = newOldest
	s.mu.Unlock()
	s.log.Info().Int("events", len(doomed)).Uint64("oldest_seq", newOldest).Msg("store_events_pruned")
}

// roomToWrite refuses a commit that could fill the file system (see
// ErrDiskFull).
func (s *Store) roomToWrite() error {
	free, err := s.opt.FreeSpace(s.dir)
	if err != nil {
		return nil // a file system that cannot say: Badger's errors will
	}
	if free < s.opt.MinFree {
		return fmt.Errorf("%w: %d MiB free in %s, the store needs %d MiB", ErrDiskFull, free>>20, s.dir, s.opt.MinFree>>20)
	}
	return nil
}

// setHealth records how the last commit went; Health reports it.
func (s *Store) setHealth(err error) {
	s.mu.Lock()
	was := s.unhealthy
	s.unhealthy = err
	s.mu.Unlock()
	switch {
	case err != nil && was == nil:
		s.log.Error().Err(err).Msg("store_unavailable")
	case err == nil && was != nil:
		s.log.Info().Msg("store_available")
	}
}

// Health reports why the store cannot write now (nil when it can): the
// last commit's error, until one succeeds.
func (s *Store) Health() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unhealthy
}

func (s *Store) gcValueLog() {
	if s.roomToWrite() != nil {
		return // rewriting value logs writes too
	}
	for i := 0; i < 16; i++ {
		if err := s.db.RunValueLogGC(0.5); err != nil {
			return
		}
	}
}

// badgerLogger routes Badger's log into zerolog as badger_log events with
// Badger's text as their detail; its chatty Info and Debug output goes to
// Debug.
type badgerLogger struct{ l zerolog.Logger }

func (b badgerLogger) log(ev *zerolog.Event, f string, a []any) {
	ev.Str("detail", strings.TrimSpace(fmt.Sprintf(f, a...))).Msg("badger_log")
}

func (b badgerLogger) Errorf(f string, a ...any)   { b.log(b.l.Error(), f, a) }
func (b badgerLogger) Warningf(f string, a ...any) { b.log(b.l.Warn(), f, a) }
func (b badgerLogger) Infof(f string, a ...any)    { b.log(b.l.Debug(), f, a) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.log(b.l.Debug(), f, a) }

// recordOptions are encoding/json's semantics (field names, omitempty, the
// same output; the same values and refusals read back), through json v2: its
// encoder streams what the health types write with MarshalJSONTo instead of
// compacting what each MarshalJSON returned again at every level (≈ 1.7 ×
// faster for a snapshot, which every instance writes every checkpoint), and
// its decoder hands them tokens for UnmarshalJSONFrom instead of bytes each
// level validates again (≈ 2 × faster for a record, which a start reads for
// every instance).
var recordOptions = jsonv1.DefaultOptionsV1()

// encode is a record as the store writes it.
func encode(v any) ([]byte, error) { return jsonv2.Marshal(v, recordOptions) }

// decode reads a record as encoding/json does.
func decode(b []byte, v any) error { return jsonv2.Unmarshal(b, v, recordOptions) }
