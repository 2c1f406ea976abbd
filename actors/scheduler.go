package actors

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"

	"github.com/vigilhq/vigil/clock"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/input"
	"github.com/vigilhq/vigil/probes"
)

// Errors of the embedding API.
var (
	ErrNotFound     = errors.New("actors: no such instance")
	ErrClosed       = errors.New("actors: scheduler is closed")
	ErrUnavailable  = errors.New("actors: instance actor did not answer in time")
	ErrActorStopped = errors.New("actors: instance actor stopped after repeated failures")
	ErrLagged       = errors.New("actors: subscriber fell too far behind; re-list and subscribe again")
	// ErrStorage wraps a change the store could not make durable (a full
	// disk, a failing write): nothing was changed, and it may be retried.
	ErrStorage = errors.New("actors: the change could not be made durable")
)

// Defaults of the options.
const (
	DefaultProbeBudget      = 1024
	DefaultAskTimeout       = 5 * time.Second
	DefaultSubscriberBuffer = 1024
	DefaultCheckpoint       = 30 * time.Second
	// DefaultStopEvidenceUpTo: a stop saves every instance's evidence
	// (times, history, counters past their thresholds) with its progress on
	// a host of up to this many instances; on a larger one, progress alone
	// (its evidence is as fresh as its last checkpoint, as after a crash),
	// so that the stop ends within its budget
	DefaultStopEvidenceUpTo = 200_000
)

const (
	// workerIdle is how long a probe worker waits for its next probe.
	workerIdle = 10 * time.Second
	// actorThroughput is how many messages an instance actor handles before
	// it yields the goroutine it borrowed.
	actorThroughput = 300
	// defaultWaitFloor: shorter waits for a worker or a slot are noise
	defaultWaitFloor = 10 * time.Millisecond
)

// ProberFactory builds the prober for an instance; the default is probes.New.
type ProberFactory func(in health.Instance) (probes.Prober, error)

// Observer is told about every probe as it starts and ends, and about every
// transition once it is durable. Probe calls come from probe goroutines and
// Transitioned from the store's publisher; none may block.
type Observer interface {
	ProbeStarted(id string, typ health.Type, due, started time.Time)
	ProbeFinished(id string, typ health.Type, r health.Result)
	Transitioned(ev Event)
}

// NopObserver observes nothing; embed it to implement part of Observer.
type NopObserver struct{}

// ProbeStarted does nothing.
func (NopObserver) ProbeStarted(string, health.Type, time.Time, time.Time) {}

// ProbeFinished does nothing.
func (NopObserver) ProbeFinished(string, health.Type, health.Result) {}

// Transitioned does nothing.
func (NopObserver) Transitioned(Event) {}

// Tee is an Observer that tells each of obs in turn.
func Tee(obs ...Observer) Observer { return tee(obs) }

type tee []Observer

func (t tee) ProbeStarted(id string, typ health.Type, due, started time.Time) {
	for _, o := range t {
		o.ProbeStarted(id, typ, due, started)
	}
}

func (t tee) ProbeFinished(id string, typ health.Type, r health.Result) {
	for _, o := range t {
		o.ProbeFinished(id, typ, r)
	}
}

func (t tee) Transitioned(ev Event) {
	for _, o := range t {
		o.Transitioned(ev)
	}
}

type options struct {
	log        zerolog.Logger
	clock      clock.Clock
	store      Store
	budget     int
	askTimeout time.Duration
	factory    ProberFactory
	validate   func(health.Instance) error
	observer   Observer
	checkpoint time.Duration
	// waitFloor is how long a probe may wait for a worker or a budget slot
	// before the wait counts as lateness (see finishProbe)
	waitFloor time.Duration
	admit     func(health.Instance) bool
	restarter Restarter
	silencer  Silencer
	incidents health.IncidentRules
	holdDown  time.Duration
	// stopEvidenceUpTo: see DefaultStopEvidenceUpTo
	stopEvidenceUpTo int
}

// DefaultRestartHoldDown is how long an instance is unhealthy, at least,
// before a restart: time for the node to see whether many instances fail
// together (an incident, whose restarts hold).
const DefaultRestartHoldDown = 5 * time.Second

// WithRestartHoldDown sets the least time unhealthy before a restart
// (default 5 s).
func WithRestartHoldDown(d time.Duration) Option { return func(o *options) { o.holdDown = d } }

// RestartRequest is one restart attempt for the VM manager: the instance,
// the attempt's number (the same when an attempt is sent again after a
// crash: the VM manager can tell them apart), why, and where to POST it.
// Done is called once, with whether the VM manager took it.
type RestartRequest struct {
	Instance  string
	Attempt   int
	URL       string
	Reason    health.Reason
	LastError string
	Done      func(delivered bool)
}

// Restarter delivers restart attempts; Restart must not block.
type Restarter interface {
	Restart(r RestartRequest)
}

// Silencer says whether an instance's notifications and restarts hold.
type Silencer interface {
	Silenced(id string, labels map[string]string, at time.Time) bool
}

// WithRestarter sets what delivers restart attempts; without one, restart
// policies do nothing.
func WithRestarter(r Restarter) Option { return func(o *options) { o.restarter = r } }

// WithSilencer sets the silences.
func WithSilencer(s Silencer) Option { return func(o *options) { o.silencer = s } }

// WithIncidentRules replaces the incident rules (default
// health.DefaultIncidentRules).
func WithIncidentRules(r health.IncidentRules) Option { return func(o *options) { o.incidents = r } }

// withWaitFloor sets the wait floor; tests on a fake clock make it large, as
// the real wait would move their exact times.
func withWaitFloor(d time.Duration) Option { return func(o *options) { o.waitFloor = d } }

// WithStopEvidenceUpTo sets up to how many instances a stop saves their
// evidence with their progress (DefaultStopEvidenceUpTo).
func WithStopEvidenceUpTo(n int) Option { return func(o *options) { o.stopEvidenceUpTo = n } }

// Option configures a Scheduler.
type Option func(*options)

// WithLogger sets the logger; protoactor's own log output goes to it too.
func WithLogger(l zerolog.Logger) Option { return func(o *options) { o.log = l } }

// WithClock sets the clock that timers and timestamps come from.
func WithClock(c clock.Clock) Option { return func(o *options) { o.clock = c } }

// WithStore sets the durable store; the default is a MemoryStore. The caller
// keeps ownership: Close flushes it but does not close it.
func WithStore(s Store) Option { return func(o *options) { o.store = s } }

// WithProbeBudget caps probes in flight host-wide (default 1024).
func WithProbeBudget(n int) Option { return func(o *options) { o.budget = n } }

// WithAskTimeout bounds each request to an instance actor (default 5s).
func WithAskTimeout(d time.Duration) Option { return func(o *options) { o.askTimeout = d } }

// WithProberFactory replaces how probers are built (default probes.New).
func WithProberFactory(f ProberFactory) Option { return func(o *options) { o.factory = f } }

// WithValidator replaces the check of what health's rules cannot decide
// (default probes.Validate: an http condition must compile). Put and every
// change run it on the normalized instance before anything is stored; its
// error is the caller's (a *health.FieldError names the field).
func WithValidator(v func(health.Instance) error) Option { return func(o *options) { o.validate = v } }

// WithObserver registers an Observer of probe starts and ends.
func WithObserver(ob Observer) Option { return func(o *options) { o.observer = ob } }

// WithAdmit decides at boot which stored instances get an actor; the others
// stay stored, untouched, until Discard or Attach. A fleet node admits the
// instances etcd says it owns.
func WithAdmit(admit func(in health.Instance) bool) Option {
	return func(o *options) { o.admit = admit }
}

// WithCheckpoint sets how often an instance whose counters changed without a
// transition hands a snapshot to the store (default 30s).
func WithCheckpoint(d time.Duration) Option { return func(o *options) { o.checkpoint = d } }

// Info is an instance with its health status, as readers see it. Node is
// the node that owns it, in a fleet.
type Info struct {
	health.Instance
	Node   string      `json:"node,omitempty"`
	Health health.View `json:"health_status"`
}

// Scheduler runs one supervised actor per instance. Build it with New.
type Scheduler struct {
	opt    options
	log    zerolog.Logger
	system *actor.ActorSystem
	root   *actor.RootContext
	// parents spawn, supervise and stop the instance actors, each a share
	// of them by id: a host's million actors are spawned at a start and
	// stopped at a stop on every CPU, not on one parent's goroutine
	parents   []*actor.PID
	shareSeed maphash.Seed
	// each closed once its parent has stopped: every instance actor of its
	// share has stopped (and queued what it saves) before it
	parentsStopped []chan struct{}
	budget         *budget
	workers        *workers     // probes in flight run here
	props          *actor.Props // of every instance actor
	closed         atomic.Bool
	shared         *clock.Shared // the default clock, closed with the scheduler
	leanStop       atomic.Bool   // the stop saves progress alone (see DefaultStopEvidenceUpTo)

	mu      sync.RWMutex
	entries map[string]*entry
	ids     idIndex // the entries in id order
	// batchMu is held by a PutMany while it takes its entries' locks, so
	// that two batches never wait on each other's (batch.go)
	batchMu sync.Mutex

	counts [5]atomic.Int64 // by status, indexed like health.Statuses
	late   lateness        // how late probes start, for Behind

	subsMu sync.Mutex
	subs   map[*Subscription]struct{}

	incMu     sync.Mutex
	incidents health.Incidents
	pastInc   []health.Incident // the most recent closed ones, newest last
	incOpen   atomic.Bool
	incClosed atomic.Pointer[health.Instant] // when the last incident closed; nil for never
}

// entry is the registry's record of one instance, shared by the scheduler
// and the instance's actor.
type entry struct {
	id string
	mu sync.Mutex // serializes changes of this instance's spec
	// the actor, once spawned (while mu is held by whoever spawns it)
	pid  atomic.Pointer[actor.PID]
	spec atomic.Pointer[health.Instance]
	// the actor's mailbox, set as it is spawned, before its first message;
	// its timer wakes it
	mailbox *mailbox
	pubMu   sync.Mutex // guards pub
	pub     published  // set by the actor
	boot    *Snapshot  // consumed by the first incarnation
	// handoff: boot is the state of an actor handed over from another node;
	// resume exactly at its next check, not at a phase of the interval
	handoff bool
	gone    bool // removed; guarded by mu
	dead    atomic.Bool
}

// published is what an instance's actor last published: the spec it applied
// and the status.
type published struct {
	spec  *health.Instance
	brief health.Brief
}

// published returns what the actor last published, if it has.
func (e *entry) published() (published, bool) {
	e.pubMu.Lock()
	p := e.pub
	e.pubMu.Unlock()
	return p, p.spec != nil
}

func (p *published) info() Info { return Info{Instance: *p.spec, Health: p.brief.View()} }

// New builds a scheduler, loads every stored instance and spawns its actor.
func New(ctx context.Context, opts ...Option) (*Scheduler, error) {
	o := options{log: zerolog.Nop(), budget: DefaultProbeBudget,
		askTimeout: DefaultAskTimeout, factory: probes.New, validate: probes.Validate, checkpoint: DefaultCheckpoint, waitFloor: defaultWaitFloor,
		incidents: health.DefaultIncidentRules, holdDown: DefaultRestartHoldDown, stopEvidenceUpTo: DefaultStopEvidenceUpTo}
	for _, f := range opts {
		f(&o)
	}
	if o.store == nil {
		o.store = NewMemoryStore()
	}
	if o.budget < 1 {
		return nil, fmt.Errorf("actors: probe budget must be at least 1 (got %d)", o.budget)
	}
	var shared *clock.Shared
	if o.clock == nil {
		// one heap of timers for every actor instead of a runtime timer each
		shared = clock.NewShared()
		o.clock = shared
	}
	s := &Scheduler{opt: o, log: o.log, budget: newBudget(o.budget), entries: map[string]*entry{}, ids: newIDIndex(),
		subs: map[*Subscription]struct{}{}, shared: shared, incidents: health.Incidents{Rules: o.incidents}}
	s.workers = newWorkers(workerIdle, s.runJob)
	// Instance actors run on the goroutine that sends to them (the timer,
	// the probe's worker, the asking request) instead of a new goroutine per
	// message: their handlers never block, and a probe then costs at most
	// one goroutine hand-off (none for a TCP probe that settles at once)
	// instead of three goroutines. Their mailbox is one object that
	// allocates nothing per message (mailbox.go).
	s.props = actor.PropsFromProducer(func() actor.Actor { return &instanceActor{s: s} },
		actor.WithDispatcher(actor.NewSynchronizedDispatcher(actorThroughput)),
		actor.WithMailbox(func() actor.Mailbox { return newMailbox(s) }))
	slogger := Slog(o.log)
	s.system = actor.NewActorSystem(
		actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return slogger }),
		actor.WithDeadLetterThrottleCount(3),
		actor.WithDeadLetterThrottleInterval(time.Minute),
		actor.WithDeadLetterRequestLogging(false),
	)
	s.root = s.system.Root
	strategy := &restartStrategy{base: 100 * time.Millisecond, max: 10 * time.Second, limit: 10, window: time.Minute,
		log: o.log, stopped: s.childGaveUp}
	s.shareSeed = maphash.MakeSeed()
	for k := range parentCount() {
		stopped := make(chan struct{})
		parent, err := s.root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return &parentActor{stopped: stopped} },
			actor.WithSupervisor(strategy)), fmt.Sprintf("instances-%d", k))
		if err != nil {
			s.shutdownSystem()
			return nil, fmt.Errorf("actors: spawn parent: %w", err)
		}
		s.parents, s.parentsStopped = append(s.parents, parent), append(s.parentsStopped, stopped)
	}

	var loaded []*entry
	began := time.Now()
	err := o.store.Load(ctx, func(in health.Instance, snap *Snapshot) error {
		if o.admit != nil && !o.admit(in) {
			return nil
		}
		e := &entry{id: in.ID, boot: snap}
		e.spec.Store(&in)
		loaded = append(loaded, e)
		return nil
	})
	if err != nil {
		s.shutdownSystem()
		return nil, fmt.Errorf("actors: load instances: %w", err)
	}
	read := time.Now()
	s.mu.Lock()
	if len(s.entries) == 0 {
		// made at its size: a million entries would grow it twenty times
		s.entries = make(map[string]*entry, len(loaded))
	}
	for _, e := range loaded {
		s.entries[e.id] = e
		s.ids.insert(e)
	}
	s.mu.Unlock()
	if err := s.spawnAll(loaded); err != nil {
		s.shutdownSystem()
		return nil, err
	}
	// how long the start's parts took, as the stop logs its own
	s.log.Info().Int("instances", len(loaded)).Int("probe_budget", o.budget).Dur("load_ms", read.Sub(began)).
		Dur("spawn_ms", time.Since(read)).Msg("scheduler_started")
	return s, nil
}

// spawnAll spawns the actors of entries (see spawnEach), or says why one
// was not.
func (s *Scheduler) spawnAll(entries []*entry) error {
	for _, err := range s.spawnEach(entries) {
		if err != nil {
			return err
		}
	}
	return nil
}

// parentOf is the index of the parent whose share id is in.
func (s *Scheduler) parentOf(id string) int {
	if len(s.parents) == 1 {
		return 0
	}
	return int(maphash.String(s.shareSeed, id) % uint64(len(s.parents)))
}

func (s *Scheduler) childGaveUp(pid *actor.PID) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, e := range s.entries {
		if p := e.pid.Load(); p != nil && p.Equal(pid) {
			e.dead.Store(true)
		}
	}
}

// lookup returns the live entry of id, or nil.
func (s *Scheduler) lookup(id string) *entry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.entries[id]
}

// spawned returns the entry of id once its actor is spawned: an entry being
// registered is waited for (its registration holds its lock), one whose
// registration failed is nil.
func (s *Scheduler) spawned(id string) *entry {
	e := s.lookup(id)
	if e == nil || e.pid.Load() != nil {
		return e
	}
	e.mu.Lock()
	gone := e.gone
	e.mu.Unlock()
	if gone || e.pid.Load() == nil {
		return nil
	}
	return e
}

// entryOf is the registry entry of an instance actor's PID (named
// parent/id), if there is one.
func (s *Scheduler) entryOf(pid *actor.PID) *entry {
	parent, id, ok := strings.Cut(pid.Id, "/")
	if !ok || !slices.ContainsFunc(s.parents, func(p *actor.PID) bool { return p.Id == parent }) {
		return nil
	}
	return s.lookup(id)
}

// Put creates or replaces an instance. It returns once the spec is durable
// and the actor has applied it. created reports whether the id was new.
func (s *Scheduler) Put(ctx context.Context, id string, spec health.InstanceSpec) (Info, bool, error) {
	in, err := s.normalize(id, spec, nil)
	if err != nil {
		return Info{}, false, err
	}
	return s.apply(ctx, id, func(*health.Instance) (health.Instance, error) { return in, nil }, true)
}

// Update changes an existing instance: change receives a copy of the current
// normalized instance and returns the new spec, which is validated.
func (s *Scheduler) Update(ctx context.Context, id string, change func(cur health.InstanceSpec) (health.InstanceSpec, error)) (Info, error) {
	info, _, err := s.apply(ctx, id, func(cur *health.Instance) (health.Instance, error) {
		next, err := change(cur.Spec())
		if err != nil {
			return health.Instance{}, err
		}
		return s.normalize(id, next, cur.HealthCheck)
	}, false)
	return info, err
}

// normalize validates and normalizes a spec by health's rules and, when
// its policy is new (not prev), the validator's: a lifecycle change is
// never refused for a policy that was accepted before.
func (s *Scheduler) normalize(id string, spec health.InstanceSpec, prev *health.Policy) (health.Instance, error) {
	in, err := spec.Normalize(id)
	if err == nil && s.opt.validate != nil && (prev == nil || !prev.Equal(in.HealthCheck)) {
		err = s.opt.validate(in)
	}
	return in, err
}

// Patch applies a JSON merge patch (RFC 7396) to the instance's spec as it
// was written, under the instance's lock: derived defaults follow the
// fields they derive from, and a patch that leaves the spec invalid changes
// nothing (an *input.Error names the field).
func (s *Scheduler) Patch(ctx context.Context, id string, patch []byte) (Info, error) {
	return s.Update(ctx, id, func(cur health.InstanceSpec) (health.InstanceSpec, error) {
		return input.MergePatch(cur, patch)
	})
}

// SetState changes an instance's lifecycle state and, when startedAt is not
// nil, its started_at.
func (s *Scheduler) SetState(ctx context.Context, id string, state health.Lifecycle, startedAt *time.Time) (Info, error) {
	return s.Update(ctx, id, func(cur health.InstanceSpec) (health.InstanceSpec, error) {
		cur.State = state
		if startedAt != nil {
			cur.StartedAt = startedAt
		}
		return cur, nil
	})
}

func (s *Scheduler) apply(ctx context.Context, id string, build func(cur *health.Instance) (health.Instance, error), create bool) (Info, bool, error) {
	if err := health.ValidateID(id); err != nil {
		return Info{}, false, err
	}
	for {
		if s.closed.Load() {
			return Info{}, false, ErrClosed
		}
		s.mu.Lock()
		e, exists := s.entries[id]
		if !exists {
			if !create {
				s.mu.Unlock()
				return Info{}, false, ErrNotFound
			}
			e = &entry{id: id}
			e.mu.Lock()
			s.entries[id] = e
			s.ids.insert(e)
			s.mu.Unlock()
			in, err := build(nil)
			if err == nil {
				err = storageErr(s.opt.store.PutInstance(ctx, in))
			}
			if err == nil {
				e.spec.Store(&in)
				err = s.spawnAll([]*entry{e})
			}
			if err != nil {
				e.gone = true
				e.mu.Unlock()
				s.unregister(id, e)
				return Info{}, false, err
			}
			e.mu.Unlock()
			info, err := s.ask(e, &getInfo{})
			return info, true, err
		}
		s.mu.Unlock()
		e.mu.Lock()
		if e.gone {
			e.mu.Unlock()
			continue // removed meanwhile: look again
		}
		in, err := build(e.spec.Load())
		if err == nil {
			err = storageErr(s.opt.store.PutInstance(ctx, in))
		}
		if err != nil {
			e.mu.Unlock()
			return Info{}, false, err
		}
		e.spec.Store(&in)
		info, err := s.ask(e, &configure{inst: &in})
		e.mu.Unlock()
		return info, false, err
	}
}

func (s *Scheduler) unregister(id string, e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.entries[id] != e {
		return
	}
	delete(s.entries, id)
	s.ids.remove(e)
	if p, ok := e.published(); ok {
		s.count(p.brief.Status, -1)
	}
}

// Remove stops watching an instance and deletes its data.
func (s *Scheduler) Remove(ctx context.Context, id string) error {
	if s.closed.Load() {
		return ErrClosed
	}
	e := s.lookup(id)
	if e == nil {
		return ErrNotFound
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.gone {
		return ErrNotFound
	}
	if err := s.opt.store.DeleteInstance(ctx, id); err != nil {
		return storageErr(err)
	}
	e.gone = true
	if pid := e.pid.Load(); pid != nil {
		_ = s.root.StopFuture(pid).Wait()
	}
	// a snapshot queued by the stopping actor must not outlive the delete
	if err := s.opt.store.DeleteInstance(ctx, id); err != nil {
		return err
	}
	s.unregister(id, e)
	s.log.Info().Str("instance_id", id).Msg("instance_removed")
	return nil
}

func (s *Scheduler) ask(e *entry, msg any) (Info, error) {
	res, err := s.askRaw(e, msg, s.opt.askTimeout)
	if err != nil {
		return Info{}, err
	}
	return *res.(*Info), nil
}

func (s *Scheduler) askRaw(e *entry, msg any, timeout time.Duration) (any, error) {
	if e.dead.Load() {
		return nil, ErrActorStopped
	}
	pid := e.pid.Load()
	if pid == nil {
		return nil, ErrNotFound // never spawned: its registration failed
	}
	res, err := s.root.RequestFuture(pid, msg, timeout).Result()
	switch {
	case errors.Is(err, actor.ErrDeadLetter):
		if e.dead.Load() {
			return nil, ErrActorStopped
		}
		return nil, ErrNotFound
	case errors.Is(err, actor.ErrTimeout):
		return nil, ErrUnavailable
	case err != nil:
		return nil, err
	}
	if err, ok := res.(error); ok {
		return nil, err
	}
	return res, nil
}

// Get returns one instance with its health status and history, asking its
// actor.
func (s *Scheduler) Get(ctx context.Context, id string) (Info, error) {
	if s.closed.Load() {
		return Info{}, ErrClosed
	}
	e := s.spawned(id)
	if e == nil {
		return Info{}, ErrNotFound
	}
	return s.ask(e, &getInfo{history: true})
}

// Peek returns the last published Info of an instance without asking its
// actor (no history).
func (s *Scheduler) Peek(id string) (Info, bool) {
	e := s.lookup(id)
	if e == nil {
		return Info{}, false
	}
	if p, ok := e.published(); ok {
		return p.info(), true
	}
	return Info{}, false
}

// Filter selects instances: any of Statuses (all when empty), every label
// of Labels, and ids that start with Prefix (all when empty).
type Filter struct {
	Statuses []health.Status
	Labels   map[string]string
	// Prefix is found by binary search in the sorted ids: a list with a
	// prefix reads only the ids that have it.
	Prefix string
}

// List returns up to limit published Infos in id order, starting after the
// id cursor, keeping those the filter selects. next is the cursor of the
// following page, or "" at the end.
func (s *Scheduler) List(f Filter, cursor string, limit int) (page []Info, next string) {
	if limit <= 0 {
		return nil, ""
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	s.ids.ascend(f.Prefix, cursor, func(e *entry) bool {
		p, ok := e.published()
		if !ok || !statusIn(p.brief.Status, f.Statuses) || !health.MatchLabels(p.spec.Labels, f.Labels) {
			return true
		}
		if len(page) == limit {
			next = page[len(page)-1].ID
			return false
		}
		page = append(page, p.info())
		return true
	})
	return page, next
}

// Briefs calls fn with the id and published brief of every instance the
// filter selects, in id order, until fn returns false. It copies nothing
// but the brief, so a caller can order or count all instances cheaply;
// fn runs under the registry's read lock and must not call the Scheduler.
func (s *Scheduler) Briefs(f Filter, fn func(id string, b *health.Brief) bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	s.ids.ascend(f.Prefix, "", func(e *entry) bool {
		p, ok := e.published()
		if !ok || !statusIn(p.brief.Status, f.Statuses) || !health.MatchLabels(p.spec.Labels, f.Labels) {
			return true
		}
		return fn(e.id, &p.brief)
	})
}

func statusIn(st health.Status, set []health.Status) bool {
	if len(set) == 0 {
		return true
	}
	for _, s := range set {
		if s == st {
			return true
		}
	}
	return false
}

// Summary counts instances by status.
func (s *Scheduler) Summary() map[health.Status]int {
	out := make(map[health.Status]int, len(health.Statuses))
	for i, st := range health.Statuses {
		out[st] = int(s.counts[i].Load())
	}
	return out
}

// Len is the number of registered instances.
func (s *Scheduler) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.entries)
}

// Ready reports whether every registered instance has a live actor that has
// loaded its state and published its status.
func (s *Scheduler) Ready() bool {
	if s.closed.Load() {
		return false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, e := range s.entries {
		if _, ok := e.published(); e.pid.Load() == nil || e.dead.Load() || !ok {
			return false
		}
	}
	return true
}

// InFlight is the number of probes holding a budget slot.
func (s *Scheduler) InFlight() int { return s.budget.inFlight(s.opt.budget) }

// Behind reports whether probing runs behind its schedule: over the last
// second, more than BehindShare of the probes started more than BehindLate
// after they were due (a stall, a burst, a host busy with other work).
func (s *Scheduler) Behind() bool { return s.late.behind(s.opt.clock.Mono()) }

func (s *Scheduler) count(st health.Status, d int64) {
	for i, v := range health.Statuses {
		if v == st {
			s.counts[i].Add(d)
			return
		}
	}
}

// ProbeNow runs a probe at once, or joins the one in flight, and returns its
// result with the status after it. An instance that runs no probes (inactive
// or disabled) answers a skipped result at once.
func (s *Scheduler) ProbeNow(ctx context.Context, id string) (health.Result, Info, error) {
	if s.closed.Load() {
		return health.Result{}, Info{}, ErrClosed
	}
	e := s.spawned(id)
	if e == nil {
		return health.Result{}, Info{}, ErrNotFound
	}
	timeout := s.opt.askTimeout
	if p := e.spec.Load().HealthCheck; p != nil {
		timeout += p.Timeout
	}
	res, err := s.askRaw(e, &probeNow{}, timeout)
	if err != nil {
		return health.Result{}, Info{}, err
	}
	r := res.(*probeNowReply)
	return r.result, r.info, nil
}

// Subscribe returns a subscription to transitions published from now on.
// buffer bounds how far it may fall behind (default 1024): past that its
// channel closes and Err returns ErrLagged.
func (s *Scheduler) Subscribe(buffer int) *Subscription {
	if buffer <= 0 {
		buffer = DefaultSubscriberBuffer
	}
	sub := &Subscription{ch: make(chan Event, buffer), s: s}
	sub.C = sub.ch
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	if s.closed.Load() {
		sub.closeLocked(ErrClosed)
		return sub
	}
	s.subs[sub] = struct{}{}
	return sub
}

// Events returns up to limit durable transitions with a sequence number above
// after, in order, and the oldest sequence number the store still retains.
func (s *Scheduler) Events(after uint64, limit int) ([]Event, uint64, error) {
	return s.opt.store.Events(after, limit)
}

// LastSeq is the sequence number of the newest durable transition.
func (s *Scheduler) LastSeq() uint64 { return s.opt.store.LastSeq() }

// publish fans a durable event out to subscribers without blocking.
func (s *Scheduler) publish(ev Event) {
	if ob := s.opt.observer; ob != nil {
		ob.Transitioned(ev)
	}
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	for sub := range s.subs {
		select {
		case sub.ch <- ev:
		default:
			s.log.Warn().Uint64("seq", ev.Seq).Msg("subscriber_lagged")
			sub.closeLocked(ErrLagged)
			delete(s.subs, sub)
		}
	}
}

// Subscription receives transitions in sequence order on C. C closes when the
// subscriber falls behind (Err is ErrLagged), when it is closed (Err is nil)
// or when the scheduler closes (Err is ErrClosed).
type Subscription struct {
	C      <-chan Event
	ch     chan Event
	s      *Scheduler
	err    error // guarded by s.subsMu
	closed bool  // guarded by s.subsMu
}

// Err tells why C closed.
func (sub *Subscription) Err() error {
	sub.s.subsMu.Lock()
	defer sub.s.subsMu.Unlock()
	return sub.err
}

// Close ends the subscription.
func (sub *Subscription) Close() {
	sub.s.subsMu.Lock()
	defer sub.s.subsMu.Unlock()
	delete(sub.s.subs, sub)
	sub.closeLocked(nil)
}

func (sub *Subscription) closeLocked(err error) {
	if sub.closed {
		return
	}
	sub.closed = true
	sub.err = err
	close(sub.ch)
}

// Close stops every timer, cancels every probe, stops every actor and flushes
// the store, in that order. It does not close the store.
func (s *Scheduler) Close(ctx context.Context) error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	// stopping the parents stops each instance actor; an instance actor stops
	// its timer, cancels its probe and queues what it saves when it is told
	// to stop. The wait is the caller's budget (a million actors take longer
	// than protoactor's own stop future waits), so that the flush below
	// covers every actor's last snapshot.
	began := time.Now()
	s.leanStop.Store(s.Len() > s.opt.stopEvidenceUpTo)
	for _, p := range s.parents {
		s.root.Stop(p)
	}
wait:
	for _, stopped := range s.parentsStopped {
		select {
		case <-stopped:
		case <-ctx.Done():
			s.log.Warn().Err(ctx.Err()).Msg("stop_actors")
			break wait
		}
	}
	actorsStopped := time.Now()
	if !s.workers.close(ctx.Done()) {
		return fmt.Errorf("actors: waiting for probes to end: %w", ctx.Err())
	}
	probesEnded := time.Now()
	err := s.opt.store.Flush(ctx)
	flushed := time.Now()
	s.shutdownSystem()
	s.subsMu.Lock()
	for sub := range s.subs {
		sub.closeLocked(ErrClosed)
		delete(s.subs, sub)
	}
	s.subsMu.Unlock()
	// how long each part of the stop took, to see which grows with a host's
	// instances
	s.log.Info().Bool("progress_only", s.leanStop.Load()).Dur("actors_ms", actorsStopped.Sub(began)).Dur("probes_ms", probesEnded.Sub(actorsStopped)).
		Dur("flush_ms", flushed.Sub(probesEnded)).Dur("took_ms", time.Since(began)).Msg("scheduler_closed")
	return err
}

func (s *Scheduler) shutdownSystem() {
	s.system.Shutdown()
	if s.shared != nil {
		s.shared.Close()
	}
}

// Handoff is an instance and its runtime state as one node hands it to
// another: the spec (with what the client wrote) and the snapshot its actor
// took as it stopped, whose NextCheckAt is when its next probe is due.
type Handoff struct {
	Instance health.Instance
	Snapshot *Snapshot
}

// ErrExists is returned by Attach for an instance that has an actor.
var ErrExists = errors.New("actors: the instance is already running here")

// Detach stops an instance's actor and returns its state, leaving its data
// in the store: a probe in flight finishes first (its result is part of the
// state), then the instance is no longer listed, probed or counted, and
// nothing of it runs once Detach returns. Attach brings it back; Discard deletes what is
// stored.
func (s *Scheduler) Detach(ctx context.Context, id string) (Handoff, error) {
	if s.closed.Load() {
		return Handoff{}, ErrClosed
	}
	e := s.lookup(id)
	if e == nil {
		return Handoff{}, ErrNotFound
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.gone {
		return Handoff{}, ErrNotFound
	}
	timeout := s.opt.askTimeout // and the probe in flight, which finishes first
	if p := e.spec.Load().HealthCheck; p != nil {
		timeout += p.Timeout
	}
	res, err := s.askRaw(e, &handoff{}, timeout)
	if err != nil {
		return Handoff{}, err
	}
	snap := res.(*Snapshot)
	e.gone = true
	_ = s.root.StopFuture(e.pid.Load()).Wait()
	s.unregister(id, e)
	in := *e.spec.Load()
	s.log.Info().Str("instance_id", id).Msg("instance_detached")
	return Handoff{Instance: in, Snapshot: snap}, nil
}

// Stage stores a handed-over instance durably without giving it an actor.
func (s *Scheduler) Stage(ctx context.Context, h Handoff) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if s.lookup(h.Instance.ID) != nil {
		return ErrExists
	}
	if err := s.opt.store.PutInstance(ctx, h.Instance); err != nil {
		return err
	}
	if h.Snapshot != nil {
		s.opt.store.SaveSnapshot(h.Snapshot)
	}
	return s.opt.store.Flush(ctx)
}

// Attach stores a handed-over instance and gives it an actor, which resumes
// from the snapshot: the same window, counters, status and history, with the
// next probe at the snapshot's NextCheckAt (at once when that has passed).
// Attaching emits no transition.
func (s *Scheduler) Attach(ctx context.Context, h Handoff) (Info, error) {
	if err := health.ValidateID(h.Instance.ID); err != nil {
		return Info{}, err
	}
	if err := s.Stage(ctx, h); err != nil {
		return Info{}, err
	}
	return s.AttachStaged(ctx, h)
}

// AttachStaged is Attach of an instance that Stage has already stored.
func (s *Scheduler) AttachStaged(ctx context.Context, h Handoff) (Info, error) {
	id := h.Instance.ID
	if s.closed.Load() {
		return Info{}, ErrClosed
	}
	s.mu.Lock()
	if _, exists := s.entries[id]; exists {
		s.mu.Unlock()
		return Info{}, ErrExists
	}
	in := h.Instance
	e := &entry{id: id, boot: h.Snapshot, handoff: true}
	e.spec.Store(&in)
	e.mu.Lock()
	s.entries[id] = e
	s.ids.insert(e)
	s.mu.Unlock()
	err := s.spawnAll([]*entry{e})
	if err != nil {
		e.gone = true
		e.mu.Unlock()
		s.unregister(id, e)
		return Info{}, err
	}
	e.mu.Unlock()
	s.log.Info().Str("instance_id", id).Msg("instance_attached")
	return s.ask(e, &getInfo{})
}

// Discard deletes the stored data of an instance that has no actor here (a
// staged one, or one detached for good).
func (s *Scheduler) Discard(ctx context.Context, id string) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if s.lookup(id) != nil {
		return ErrExists
	}
	return s.opt.store.DeleteInstance(ctx, id)
}

// append makes an event durable (with the instance's snapshot, when it is
// an instance's) and then logs and publishes it.
func (s *Scheduler) append(snap *Snapshot, ev Event) {
	log := s.log
	s.opt.store.AppendTransition(snap, ev, func(ev Event) {
		l := log.Info().Uint64("seq", ev.Seq)
		if ev.InstanceID != "" {
			l = l.Str("instance_id", ev.InstanceID)
		}
		if ev.Kind == "" {
			l.Str("from", string(ev.From)).Str("to", string(ev.To)).Str("reason", string(ev.Reason)).
				Str("last_error", ev.LastError).Bool("flapping", ev.Flapping).Msg("health_transition")
		} else {
			l.Str("incident", ev.Incident).Msg(ev.Kind)
		}
		s.publish(ev)
	})
}

func (s *Scheduler) silenced(in *health.Instance, at time.Time) bool {
	return s.opt.silencer != nil && s.opt.silencer.Silenced(in.ID, in.Labels, at)
}

func (s *Scheduler) incidentOpen() bool { return s.incOpen.Load() }

// incidentClosedAt is when the last incident closed (zero for none).
func (s *Scheduler) incidentClosedAt() health.Instant {
	if at := s.incClosed.Load(); at != nil {
		return *at
	}
	return health.Instant{}
}

// observeIncident feeds a transition into or out of unhealthy to the
// node's incident detector; it returns the id of the incident a transition
// into unhealthy folds into. Opening or closing one is an event of its own;
// closing one looks again at the restarts it held.
func (s *Scheduler) observeIncident(id string, tr health.Transition, now health.Instant) string {
	counts := s.Summary()
	unhealthy := counts[health.StatusUnhealthy]
	toUnhealthy := tr.To == health.StatusUnhealthy
	// the counts are published after the transition: count it in
	if toUnhealthy {
		unhealthy++
	} else {
		unhealthy--
	}
	active := counts[health.StatusStarting] + counts[health.StatusHealthy] + counts[health.StatusUnhealthy]
	s.incMu.Lock()
	inc, opened, closed := s.incidents.Observe(id, toUnhealthy, active, max(unhealthy, 0), now)
	var copied health.Incident
	if inc != nil {
		copied = *inc
	}
	if closed {
		s.pastInc = append(s.pastInc, copied)
		if len(s.pastInc) > maxPastIncidents {
			s.pastInc = s.pastInc[1:]
		}
	}
	s.incMu.Unlock()
	switch {
	case opened:
		s.incOpen.Store(true)
		details := map[string]any{"active": copied.Active, "unhealthy": copied.Peak, "instances": copied.Instances,
			"common_labels": s.commonLabels(health.StatusUnhealthy)}
		s.append(nil, Event{Kind: KindIncidentOpened, Incident: copied.ID, Details: details,
			Transition: health.Transition{From: health.StatusHealthy, To: health.StatusUnhealthy, At: now.Wall}})
		s.log.Warn().Str("incident", copied.ID).Int("active", copied.Active).Int("unhealthy", copied.Peak).Msg("incident_opened")
	case closed:
		s.incOpen.Store(false)
		s.incClosed.Store(&now)
		s.append(nil, Event{Kind: KindIncidentClosed, Incident: copied.ID,
			Details:    map[string]any{"instances": copied.Instances, "peak_unhealthy": copied.Peak},
			Transition: health.Transition{From: health.StatusUnhealthy, To: health.StatusHealthy, At: now.Wall}})
		go s.Recheck(s.idsWithStatus(health.StatusUnhealthy), false)
	}
	if inc != nil && toUnhealthy {
		return copied.ID
	}
	return ""
}

// maxPastIncidents is how many closed incidents Incidents keeps.
const maxPastIncidents = 100

// Incidents returns the open incident, if any, and the most recent closed
// ones, newest first.
func (s *Scheduler) Incidents() []health.Incident {
	s.incMu.Lock()
	defer s.incMu.Unlock()
	var out []health.Incident
	if inc := s.incidents.Open(); inc != nil {
		out = append(out, *inc)
	}
	for i := len(s.pastInc) - 1; i >= 0; i-- {
		out = append(out, s.pastInc[i])
	}
	return out
}

// commonLabels are the labels every instance with a status shares.
func (s *Scheduler) commonLabels(st health.Status) map[string]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var common map[string]string
	s.ids.ascend("", "", func(e *entry) bool {
		p, ok := e.published()
		if !ok || p.brief.Status != st {
			return true
		}
		if common == nil {
			common = make(map[string]string, len(p.spec.Labels))
			for k, v := range p.spec.Labels {
				common[k] = v
			}
			return true
		}
		for k, v := range common {
			if p.spec.Labels[k] != v {
				delete(common, k)
			}
		}
		return len(common) > 0
	})
	if common == nil {
		common = map[string]string{}
	}
	return common
}

func (s *Scheduler) idsWithStatus(st health.Status) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var ids []string
	s.ids.ascend("", "", func(e *entry) bool {
		if p, ok := e.published(); ok && p.brief.Status == st {
			ids = append(ids, e.id)
		}
		return true
	})
	return ids
}

// Recheck asks instances to look at their restart rules again (a hold
// ended); with silenceEnded, those still unhealthy are notified once.
func (s *Scheduler) Recheck(ids []string, silenceEnded bool) {
	msg := &recheck{silenceEnded: silenceEnded}
	for _, id := range ids {
		if e := s.lookup(id); e != nil {
			if pid := e.pid.Load(); pid != nil {
				s.root.Send(pid, msg)
			}
		}
	}
}

// storageErr marks an error of a durable write as ErrStorage (a context
// that ended is left as it is).
func storageErr(err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrStorage, err)
}

// StoreHealth reports why the store cannot write now, when it knows (nil
// when it can or cannot tell).
func (s *Scheduler) StoreHealth() error {
	if h, ok := s.opt.store.(interface{ Health() error }); ok {
		return h.Health()
	}
	return nil
}

// Ping checks that the actor system still dispatches: a round trip to each
// parent actor. It is what a watchdog asks.
func (s *Scheduler) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return ErrClosed
	}
	timeout := s.opt.askTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if timeout <= 0 {
		return context.DeadlineExceeded
	}
	futures := make([]*actor.Future, len(s.parents))
	for k, p := range s.parents {
		futures[k] = s.root.RequestFuture(p, &ping{}, timeout)
	}
	for _, f := range futures {
		if _, err := f.Result(); err != nil {
			return fmt.Errorf("actors: the actor system did not answer: %w", err)
		}
	}
	return nil
}

// parentCount is how many parents share the instance actors: one a CPU, up
// to 8.
func parentCount() int { return min(runtime.GOMAXPROCS(0), 8) }

// parentActor spawns and supervises its share of the instance actors.
type parentActor struct {
	stopped chan struct{} // closed when it has stopped, after its children
}

type ping struct{}

type spawnChildren struct {
	ids   []string
	props *actor.Props
}

type spawnedChildren struct {
	pids []*actor.PID
	errs []error
}

func (p *parentActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *spawnChildren:
		out := &spawnedChildren{pids: make([]*actor.PID, len(m.ids)), errs: make([]error, len(m.ids))}
		for i, id := range m.ids {
			out.pids[i], out.errs[i] = ctx.SpawnNamed(m.props, id)
		}
		ctx.Respond(out)
	case *ping:
		ctx.Respond(m)
	case *actor.Stopped:
		close(p.stopped)
	}
}
