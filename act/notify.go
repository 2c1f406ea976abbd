// Package act is what vigil does about health beyond reporting it:
// notifiers that get every matching event of the durable log as a signed
// CloudEvent, at least once and in order (each instance's; overall with one
// lane), however long a receiver is away;
// restart attempts delivered to the VM manager; and silences, during which
// notifications and restarts hold. None of it ever slows probing: delivery
// reads the log after the fact, each notifier on goroutines of its own, and a
// restart attempt is queued by the instance's actor and sent here.
//
// Concurrency contract: a Notifiers, a Restarter and a Silences are safe for
// concurrent use once built; Close stops their goroutines.
package act

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/maphash"
	"math/rand/v2"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	"github.com/rs/zerolog"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// Delivery's bounds.
const (
	RetryFirst     = time.Second
	RetryMax       = 5 * time.Minute
	AttemptTimeout = 5 * time.Second
	cursorEvery    = 200 * time.Millisecond // a delivered position is queued with the store's commits this often at most
	readPage       = 256
	maxNotifiers   = 64
	maxSecret      = 256
	maxParallel    = 64
	// inFlight bounds the events a notifier has taken from the log and not
	// yet delivered (its position is the last before the first of them)
	inFlight         = 1024
	SignatureHeader  = "X-Vigil-Signature"
	EventTypePrefix  = "io.vigil."
	ContentTypeEvent = "application/cloudevents+json"
)

// KV is the durable records act keeps (persistence.Store has them).
type KV interface {
	PutMeta(ctx context.Context, key string, value []byte) error
	// QueueMeta stores a record with the store's next commit, without
	// waiting for it (a position whose loss only repeats deliveries).
	QueueMeta(key string, value []byte)
	DeleteMeta(ctx context.Context, key string) error
	Meta(prefix string, fn func(key string, value []byte) error) error
}

// Log is the durable event log notifiers read (actors.Scheduler is one).
type Log interface {
	Events(after uint64, limit int) ([]actors.Event, uint64, error)
	LastSeq() uint64
	Subscribe(buffer int) *actors.Subscription
}

// Match selects the events a notifier gets: those of instances with every
// label of Labels, and transitions only to a status of To (all when empty).
type Match struct {
	Labels map[string]string `json:"labels,omitempty"`
	To     []health.Status   `json:"to,omitempty"`
}

// NotifierSpec is a notifier as a client writes it.
type NotifierSpec struct {
	URL    string `json:"url"`
	Secret string `json:"secret,omitempty"`
	Match  Match  `json:"match"`
	// Parallel is how many instances' events are delivered at once: 1 (the
	// default, 0) sends one event at a time, in order overall; above 1,
	// events of different instances are in flight together, each
	// instance's in order (a receiver far away, or slow to answer, takes a
	// burst of transitions that many times sooner).
	Parallel int `json:"parallel,omitempty"`
}

// lanes is how many events of different instances are in flight at once.
func (s *NotifierSpec) lanes() int { return max(1, s.Parallel) }

var namePattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Error is a notifier or silence that cannot be: Field names what.
type Error struct {
	Field, Message string
}

func (e *Error) Error() string { return e.Message }

func invalid(field, format string, args ...any) error {
	return &Error{Field: field, Message: fmt.Sprintf(format, args...)}
}

// ErrNotFound is a notifier or silence that does not exist.
var ErrNotFound = errors.New("act: no such notifier or silence")

// Validate checks a notifier's name and spec; errors name the field.
func (s *NotifierSpec) Validate(name string) error {
	if !namePattern.MatchString(name) {
		return invalid("name", "name must be 1-64 characters of A-Z a-z 0-9 . _ - (got %q)", name)
	}
	u, err := url.Parse(s.URL)
	if s.URL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return invalid("url", "url must be an http or https URL that receives the events")
	}
	if len(s.Secret) > maxSecret {
		return invalid("secret", "secret must be at most %d bytes", maxSecret)
	}
	if s.Parallel < 0 || s.Parallel > maxParallel {
		return invalid("parallel", "parallel must be between 1 and %d, or 0 or absent for 1 (got %d)", maxParallel, s.Parallel)
	}
	if err := health.ValidateLabels(s.Match.Labels); err != nil {
		var fe *health.FieldError
		if errors.As(err, &fe) {
			return invalid("match."+fe.Field, "match.%s", fe.Error())
		}
		return err
	}
	for i, st := range s.Match.To {
		if !st.Valid() {
			return invalid(fmt.Sprintf("match.to[%d]", i), "match.to[%d] must be one of disabled, unknown, starting, healthy, unhealthy (got %q)", i, st)
		}
	}
	return nil
}

// NotifierView is a notifier as GET shows it: no secret, and where its
// delivery stands.
type NotifierView struct {
	Name            string     `json:"name"`
	URL             string     `json:"url"`
	SecretSet       bool       `json:"secret_set"`
	Match           Match      `json:"match"`
	Parallel        int        `json:"parallel"`
	Position        uint64     `json:"position"` // the last event delivered (or passed over)
	Backlog         uint64     `json:"backlog"`  // events after it
	Delivered       uint64     `json:"delivered"`
	LastDeliveredAt *time.Time `json:"last_delivered_at"`
	Attempts        int        `json:"attempts"` // of the event being delivered
	LastError       string     `json:"last_error"`
	NextAttemptAt   *time.Time `json:"next_attempt_at"`
}

// Option tunes Notifiers.
type Option func(*Notifiers)

// WithRetry sets the first and the longest pause between attempts to
// deliver one event (default 1 s and 5 min).
func WithRetry(first, longest time.Duration) Option {
	return func(n *Notifiers) { n.retryFirst, n.retryMax = first, longest }
}

// Notifiers delivers the event log to every notifier.
type Notifiers struct {
	retryFirst, retryMax time.Duration

	kv   KV
	log  Log
	node string
	lg   zerolog.Logger
	http *http.Client

	mu       sync.Mutex
	byName   map[string]*notifier
	closed   bool
	wg       sync.WaitGroup
	ctx      context.Context
	cancel   context.CancelFunc
	newEvent chan struct{} // closed and replaced when an event arrives
	sub      *actors.Subscription
	rendered renderedEvents
}

// notifier is one notifier's delivery: its loop (deliver) and its lanes
// share the fields under mu and the in-flight ring; the rest is fixed.
type notifier struct {
	name string
	spec NotifierSpec
	stop chan struct{}
	done chan struct{}
	// ctx ends when the notifier stops (or all of them do): an attempt in
	// flight is abandoned
	ctx    context.Context
	cancel context.CancelFunc
	// live events as the log publishes them: a notifier that is caught up
	// takes the next one from here instead of reading the store; one that
	// finds a gap (it fell behind, this overflowed) reads the log
	live   chan actors.Event
	mu     sync.Mutex
	view   NotifierView
	posted uint64 // position made durable
	// failing is open while the attempts of one lane (failingLane) fail:
	// the other lanes wait for it to be closed, so that a receiver that is
	// down gets one event's retries, backing off, not one per lane
	failing     chan struct{}
	failingLane *lane
}

// lane delivers, one at a time and in order, the events of the instances
// hashed to it.
type lane struct {
	events chan actors.Event
	// the signature's HMAC, reset for each body: the lane's own
	mac hash.Hash
}

// transport is net/http's default one without asking for gzip (a
// receiver's answer is read for its status only), keeping a connection
// idle for each lane a notifier may have (net/http keeps two a host).
func transport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DisableCompression = true
	t.MaxIdleConnsPerHost = maxParallel
	t.MaxIdleConns = 0 // no limit beyond a host's: the notifiers bound them
	return t
}

// liveBuffer bounds how far a caught-up notifier's live events may run ahead.
const liveBuffer = 1024

const (
	keyNotifier = "notifier/"
	keyCursor   = "cursor/"
)

// NewNotifiers loads the stored notifiers and starts delivering. node names
// the events' source.
func NewNotifiers(kv KV, log Log, node string, lg zerolog.Logger, opts ...Option) (*Notifiers, error) {
	ctx, cancel := context.WithCancel(context.Background())
	n := &Notifiers{retryFirst: RetryFirst, retryMax: RetryMax, kv: kv, log: log, node: node, lg: lg.With().Str("component", "notify").Logger(),
		http:   &http.Client{Transport: transport(), CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		byName: map[string]*notifier{}, ctx: ctx, cancel: cancel, newEvent: make(chan struct{})}
	cursors := map[string]uint64{}
	err := kv.Meta(keyCursor, func(key string, value []byte) error {
		seq, err := strconv.ParseUint(string(value), 10, 64)
		if err == nil {
			cursors[strings.TrimPrefix(key, keyCursor)] = seq
		}
		return nil
	})
	if err != nil {
		cancel()
		return nil, err
	}
	for _, o := range opts {
		o(n)
	}
	var specs []struct {
		name string
		spec NotifierSpec
	}
	err = kv.Meta(keyNotifier, func(key string, value []byte) error {
		var s NotifierSpec
		if err := json.Unmarshal(value, &s); err != nil {
			n.lg.Error().Err(err).Str("notifier", key).Msg("notifier_record_skipped")
			return nil
		}
		specs = append(specs, struct {
			name string
			spec NotifierSpec
		}{strings.TrimPrefix(key, keyNotifier), s})
		return nil
	})
	if err != nil {
		cancel()
		return nil, err
	}
	n.sub = log.Subscribe(1024)
	n.wg.Add(1)
	go n.follow()
	for _, s := range specs {
		n.start(s.name, s.spec, cursors[s.name])
	}
	return n, nil
}

// follow wakes the delivery loops when events arrive.
func (n *Notifiers) follow() {
	defer n.wg.Done()
	for {
		select {
		case <-n.ctx.Done():
			return
		case ev, ok := <-n.sub.C:
			if !ok {
				if errors.Is(n.sub.Err(), actors.ErrLagged) {
					n.sub = n.log.Subscribe(1024)
					continue
				}
				return
			}
			n.mu.Lock()
			for _, nt := range n.byName {
				select {
				case nt.live <- ev:
				default: // it is behind: it reads the log
				}
			}
			close(n.newEvent)
			n.newEvent = make(chan struct{})
			n.mu.Unlock()
		}
	}
}

func (n *Notifiers) waitEvent() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.newEvent
}

func (n *Notifiers) start(name string, spec NotifierSpec, pos uint64) {
	ctx, cancel := context.WithCancel(n.ctx)
	nt := &notifier{name: name, spec: spec, stop: make(chan struct{}), done: make(chan struct{}), posted: pos, ctx: ctx, cancel: cancel,
		live: make(chan actors.Event, liveBuffer),
		view: NotifierView{Name: name, URL: spec.URL, SecretSet: spec.Secret != "", Match: spec.Match, Parallel: spec.lanes(), Position: pos}}
	n.mu.Lock()
	n.byName[name] = nt
	n.mu.Unlock()
	n.wg.Add(1)
	go n.deliver(nt, pos)
}

// Put creates or replaces a notifier. A new one starts at the newest event
// (it gets what happens from now on); a replaced one keeps its position.
func (n *Notifiers) Put(ctx context.Context, name string, spec NotifierSpec) (NotifierView, bool, error) {
	if err := spec.Validate(name); err != nil {
		return NotifierView{}, false, err
	}
	n.mu.Lock()
	old, exists := n.byName[name]
	count := len(n.byName)
	n.mu.Unlock()
	if !exists && count >= maxNotifiers {
		return NotifierView{}, false, invalid("name", "at most %d notifiers", maxNotifiers)
	}
	pos := n.log.LastSeq()
	b, _ := json.Marshal(spec)
	if !exists {
		if err := n.kv.PutMeta(ctx, keyCursor+name, []byte(strconv.FormatUint(pos, 10))); err != nil {
			return NotifierView{}, false, err
		}
	}
	if err := n.kv.PutMeta(ctx, keyNotifier+name, b); err != nil {
		return NotifierView{}, false, err
	}
	if exists {
		// a replaced notifier goes on from where the old one stopped: its
		// lanes deliver until then, and its stop saves that position
		n.stopOne(old)
		old.mu.Lock()
		pos = old.view.Position
		old.mu.Unlock()
	}
	n.start(name, spec, pos)
	v, _ := n.Get(name)
	return v, !exists, nil
}

// Delete removes a notifier and its position.
func (n *Notifiers) Delete(ctx context.Context, name string) error {
	n.mu.Lock()
	nt, ok := n.byName[name]
	delete(n.byName, name)
	n.mu.Unlock()
	if !ok {
		return ErrNotFound
	}
	n.stopOne(nt)
	if err := n.kv.DeleteMeta(ctx, keyNotifier+name); err != nil {
		return err
	}
	return n.kv.DeleteMeta(ctx, keyCursor+name)
}

func (n *Notifiers) stopOne(nt *notifier) {
	close(nt.stop)
	nt.cancel()
	<-nt.done
}

// Get shows one notifier.
func (n *Notifiers) Get(name string) (NotifierView, bool) {
	n.mu.Lock()
	nt, ok := n.byName[name]
	n.mu.Unlock()
	if !ok {
		return NotifierView{}, false
	}
	nt.mu.Lock()
	v := nt.view
	nt.mu.Unlock()
	if last := n.log.LastSeq(); last > v.Position {
		v.Backlog = last - v.Position
	}
	return v, true
}

// List shows every notifier, by name.
func (n *Notifiers) List() []NotifierView {
	n.mu.Lock()
	names := make([]string, 0, len(n.byName))
	for name := range n.byName {
		names = append(names, name)
	}
	n.mu.Unlock()
	sort.Strings(names)
	out := make([]NotifierView, 0, len(names))
	for _, name := range names {
		if v, ok := n.Get(name); ok {
			out = append(out, v)
		}
	}
	return out
}

// Close stops delivery and makes every position durable.
func (n *Notifiers) Close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.closed = true
	all := make([]*notifier, 0, len(n.byName))
	for _, nt := range n.byName {
		all = append(all, nt)
	}
	n.mu.Unlock()
	for _, nt := range all {
		n.stopOne(nt)
	}
	n.cancel()
	n.sub.Close()
	n.wg.Wait()
	n.http.CloseIdleConnections()
}

// deliver is one notifier's loop: read the log after the last event taken
// from it, hand each matching event to the lane of its instance, which sends
// it until the receiver takes it (retrying with backoff), and move the
// position over each event once it and every one before it are delivered
// (or passed over). The position is made durable after delivery, so a crash
// repeats an event at most, never loses one.
func (n *Notifiers) deliver(nt *notifier, pos uint64) {
	defer n.wg.Done()
	defer close(nt.done)
	flight := newInflight(pos)
	lanes := make([]*lane, nt.spec.lanes())
	var running sync.WaitGroup
	for i := range lanes {
		lanes[i] = &lane{events: make(chan actors.Event, inFlight)}
		running.Add(1)
		go func(l *lane) {
			defer running.Done()
			n.runLane(nt, l, flight)
		}(lanes[i])
	}
	defer func() {
		running.Wait()
		n.savePosition(nt, flight.position())
	}()
	own := &lane{} // the reset's, sent by this loop
	read := pos    // the last event taken from the log
	lastSaved := time.Now()
	// one, the next: false when the notifier stops
	one := func(ev actors.Event) bool {
		matches := nt.spec.Match.matches(&ev)
		if !flight.add(ev.Seq, !matches, nt.stop) {
			return false
		}
		if matches {
			select {
			case lanes[laneOf(ev.InstanceID, len(lanes))].events <- ev:
			case <-nt.stop:
				return false
			}
		} else {
			n.moved(nt, flight)
		}
		read = ev.Seq
		if time.Since(lastSaved) >= cursorEvery {
			n.queuePosition(nt, flight.position())
			lastSaved = time.Now()
		}
		return true
	}
	for {
		select {
		case <-nt.stop:
			return
		default:
		}
		wait := n.waitEvent()
		if ev, ok := n.nextLive(nt, read); ok {
			if !one(ev) {
				return
			}
			continue
		}
		evs, oldest, err := n.log.Events(read, readPage)
		if err != nil {
			n.setError(nt, err)
			if !n.sleep(nt, time.Second) {
				return
			}
			continue
		}
		if oldest > read+1 {
			// the log no longer has what comes after read: once what is in
			// flight is delivered, one reset event
			if !flight.drain(nt.stop) {
				return
			}
			reset := actors.Event{Kind: "reset", Details: map[string]any{"requested_seq": read, "oldest_seq": oldest}}
			if !n.send(nt, own, reset, fmt.Sprintf("%s-reset-%d", n.node, oldest)) {
				return
			}
			read = oldest - 1
			flight.skipTo(read)
			n.savePosition(nt, read)
			continue
		}
		if len(evs) == 0 {
			// caught up with the log: once the lanes have delivered what
			// they hold, the position is synced and the loop waits for
			// the next event; until then it rides on the store's commits
			// every cursorEvery, as while events flow
			emptied := flight.emptied()
			idle := time.Second
			select {
			case <-emptied:
				n.savePosition(nt, flight.position())
				emptied = nil // nothing held: only a new event wakes it
			default:
				n.queuePosition(nt, flight.position())
				idle = cursorEvery
			}
			lastSaved = time.Now()
			select {
			case <-nt.stop:
				return
			case <-wait:
			case <-emptied:
			case <-time.After(idle):
			}
			continue
		}
		for _, ev := range evs {
			if !one(ev) {
				return
			}
		}
	}
}

// runLane sends the lane's events in turn until the notifier stops.
func (n *Notifiers) runLane(nt *notifier, l *lane, flight *inflight) {
	for {
		select {
		case <-nt.stop:
			return
		case ev := <-l.events:
			if !n.send(nt, l, ev, "") {
				return
			}
			flight.delivered(ev.Seq)
			n.moved(nt, flight)
		}
	}
}

// moved shows the notifier's position as it is now.
func (n *Notifiers) moved(nt *notifier, flight *inflight) {
	pos := flight.position()
	nt.mu.Lock()
	nt.view.Position = max(nt.view.Position, pos)
	nt.mu.Unlock()
}

// laneSeed hashes instance ids to lanes.
var laneSeed = maphash.MakeSeed()

// laneOf is the lane of an instance's events (events of none share one).
func laneOf(id string, lanes int) int {
	if lanes == 1 {
		return 0
	}
	return int(maphash.String(laneSeed, id) % uint64(lanes))
}

// inflight is a notifier's events taken from the log and not yet
// delivered, in order, each marked once delivered or passed over; the
// position is the last event of the marked run at the front. Its slots
// bound the events held.
type inflight struct {
	mu    sync.Mutex
	seqs  []uint64 // a ring of inFlight, from head, n of them
	taken []bool   // delivered or passed over
	head  int
	n     int
	pos   uint64
	slots chan struct{}
	empty chan struct{} // closed when n falls to 0, for a drain
}

func newInflight(pos uint64) *inflight {
	return &inflight{seqs: make([]uint64, inFlight), taken: make([]bool, inFlight), pos: pos,
		slots: make(chan struct{}, inFlight)}
}

// add takes a slot for event seq (waiting while all are taken, false when
// stop closes first) and holds it, delivered already when passed.
func (f *inflight) add(seq uint64, passed bool, stop <-chan struct{}) bool {
	select {
	case f.slots <- struct{}{}:
	case <-stop:
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	i := (f.head + f.n) % inFlight
	f.seqs[i], f.taken[i] = seq, passed
	f.n++
	f.advance()
	return true
}

// delivered marks event seq delivered.
func (f *inflight) delivered(seq uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// the ring holds seqs in increasing order
	k := sort.Search(f.n, func(k int) bool { return f.seqs[(f.head+k)%inFlight] >= seq })
	if k < f.n && f.seqs[(f.head+k)%inFlight] == seq {
		f.taken[(f.head+k)%inFlight] = true
	}
	f.advance()
}

// advance moves the position over the delivered run at the front, giving
// its slots back.
func (f *inflight) advance() {
	for f.n > 0 && f.taken[f.head] {
		f.pos = f.seqs[f.head]
		f.head = (f.head + 1) % inFlight
		f.n--
		<-f.slots
	}
	if f.n == 0 && f.empty != nil {
		close(f.empty)
		f.empty = nil
	}
}

func (f *inflight) position() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pos
}

// emptied is closed once nothing is held (at once when nothing is).
func (f *inflight) emptied() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		return closedChan
	}
	if f.empty == nil {
		f.empty = make(chan struct{})
	}
	return f.empty
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// drain waits until every event held is delivered; false when stop closes
// first.
func (f *inflight) drain(stop <-chan struct{}) bool {
	select {
	case <-f.emptied():
		return true
	case <-stop:
		return false
	}
}

// skipTo moves the position to pos, with nothing held (after a drain).
func (f *inflight) skipTo(pos uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pos = pos
}

// nextLive takes the event after pos from the live events, when it is
// there; events at or before pos (the log gave them already) are passed
// over, and a later one means a gap the log must fill.
func (n *Notifiers) nextLive(nt *notifier, pos uint64) (actors.Event, bool) {
	for {
		select {
		case ev := <-nt.live:
			switch {
			case ev.Seq <= pos:
				continue
			case ev.Seq == pos+1:
				return ev, true
			}
			return actors.Event{}, false // a gap: read the log from pos
		default:
			return actors.Event{}, false
		}
	}
}

// queuePosition keeps a position with the store's next commit: while
// events flow, keeping it costs no commit (and sync) of its own; caught up
// and stopped, the loop saves it and waits (savePosition).
func (n *Notifiers) queuePosition(nt *notifier, pos uint64) {
	n.kv.QueueMeta(keyCursor+nt.name, strconv.AppendUint(nil, pos, 10))
}

// savePosition makes a position durable, when it moved.
func (n *Notifiers) savePosition(nt *notifier, pos uint64) {
	nt.mu.Lock()
	nt.view.Position = max(nt.view.Position, pos)
	same := nt.posted == pos
	nt.mu.Unlock()
	if same {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.kv.PutMeta(ctx, keyCursor+nt.name, []byte(strconv.FormatUint(pos, 10))); err != nil {
		n.lg.Warn().Err(err).Str("notifier", nt.name).Msg("notifier_position_not_saved")
		return
	}
	nt.mu.Lock()
	nt.posted = pos
	nt.mu.Unlock()
}

func (n *Notifiers) sleep(nt *notifier, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-nt.stop:
		return false
	case <-t.C:
		return true
	}
}

func (n *Notifiers) setError(nt *notifier, err error) {
	nt.mu.Lock()
	nt.view.LastError = health.TruncateUTF8(err.Error(), health.MaxLastError)
	nt.mu.Unlock()
}

// send posts one event until the receiver takes it (a 2xx), backing off
// exponentially with jitter from RetryFirst to RetryMax; it returns false
// when the notifier stops first.
func (n *Notifiers) send(nt *notifier, l *lane, ev actors.Event, id string) bool {
	body, err := n.render(ev, id)
	if err != nil {
		n.lg.Error().Err(err).Str("notifier", nt.name).Uint64("seq", ev.Seq).Msg("notifier_event_skipped")
		return true
	}
	backoff := n.retryFirst
	for attempt := 1; ; attempt++ {
		if !n.awaitFailing(nt, l) {
			return false
		}
		nt.mu.Lock()
		nt.view.Attempts = attempt
		nt.mu.Unlock()
		err := n.post(nt, l, body)
		if err == nil {
			now := time.Now().UTC()
			nt.mu.Lock()
			if nt.failingLane == l {
				close(nt.failing)
				nt.failing, nt.failingLane = nil, nil
			}
			nt.view.Delivered++
			nt.view.LastDeliveredAt = &now
			if nt.failing == nil {
				nt.view.Attempts, nt.view.LastError, nt.view.NextAttemptAt = 0, "", nil
			}
			nt.mu.Unlock()
			return true
		}
		// full jitter over the upper half: retries of many notifiers spread
		wait := backoff/2 + rand.N(backoff/2+1)
		next := time.Now().Add(wait).UTC()
		nt.mu.Lock()
		if nt.failing == nil {
			nt.failing, nt.failingLane = make(chan struct{}), l
		}
		nt.view.LastError = health.TruncateUTF8(err.Error(), health.MaxLastError)
		nt.view.NextAttemptAt = &next
		nt.mu.Unlock()
		if attempt == 1 || attempt%10 == 0 {
			n.lg.Warn().Err(err).Str("notifier", nt.name).Uint64("seq", ev.Seq).Int("attempt", attempt).Msg("notifier_delivery_failed")
		}
		if !n.sleep(nt, wait) {
			return false
		}
		backoff = min(backoff*2, n.retryMax)
	}
}

// awaitFailing waits while another lane's attempts fail; false when the
// notifier stops first.
func (n *Notifiers) awaitFailing(nt *notifier, l *lane) bool {
	for {
		nt.mu.Lock()
		failing, by := nt.failing, nt.failingLane
		nt.mu.Unlock()
		if failing == nil || by == l {
			return true
		}
		select {
		case <-failing:
		case <-nt.stop:
			return false
		}
	}
}

func (n *Notifiers) post(nt *notifier, l *lane, body []byte) error {
	ctx, cancel := context.WithTimeout(nt.ctx, AttemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, nt.spec.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	// canonical keys, values shared by every request (net/http only reads
	// them)
	req.Header = http.Header{"Content-Type": contentTypeEvent, "User-Agent": userAgent}
	if nt.spec.Secret != "" {
		req.Header[SignatureHeader] = []string{l.sign(nt.spec.Secret, body)}
	}
	resp, err := n.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("the receiver answered %s", resp.Status)
	}
	return nil
}

// render is the CloudEvent of ev with the id id (for an event of the log,
// empty: its node and seq, made only when it is rendered). An event of the log is
// the same for every notifier (its id is the node and its seq), so it is
// rendered once and kept for the others, which read the log at much the
// same place: the last renderedKept of them, by seq.
func (n *Notifiers) render(ev actors.Event, id string) ([]byte, error) {
	if ev.Seq == 0 || ev.Kind == "reset" {
		return CloudEvent(ev, id, n.node)
	}
	r := &n.rendered
	r.mu.Lock()
	body, ok := r.bySeq[ev.Seq]
	r.mu.Unlock()
	if ok {
		return body, nil
	}
	if id == "" {
		id = n.node + "-" + strconv.FormatUint(ev.Seq, 10)
	}
	body, err := CloudEvent(ev, id, n.node)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.bySeq == nil {
		r.bySeq = make(map[uint64][]byte, renderedKept)
	}
	if _, ok := r.bySeq[ev.Seq]; !ok {
		if len(r.order) == renderedKept {
			delete(r.bySeq, r.order[r.next])
			r.order[r.next] = ev.Seq
			r.next = (r.next + 1) % renderedKept
		} else {
			r.order = append(r.order, ev.Seq)
		}
		r.bySeq[ev.Seq] = body
	}
	return body, nil
}

// renderedKept bounds the rendered events kept for the other notifiers.
const renderedKept = 4096

// renderedEvents are the last events rendered, by seq; the bodies are
// read only once kept.
type renderedEvents struct {
	mu    sync.Mutex
	bySeq map[uint64][]byte
	order []uint64 // the seqs kept, a ring once full; next is the oldest
	next  int
}

var (
	contentTypeEvent = []string{ContentTypeEvent}
	userAgent        = []string{"vigil-notifier/1"}
)

// sign is Sign(secret, body) with the lane's HMAC, reset for each body;
// only the lane's goroutine calls it.
func (l *lane) sign(secret string, body []byte) string {
	if l.mac == nil {
		l.mac = hmac.New(sha256.New, []byte(secret))
	}
	l.mac.Reset()
	return signature(l.mac, body)
}

// signature is sha256=<hex of mac over body>, for a mac fresh or reset.
func signature(mac hash.Hash, body []byte) string {
	mac.Write(body)
	var sum [sha256.Size]byte
	var out [len("sha256=") + 2*sha256.Size]byte
	copy(out[:], "sha256=")
	hex.Encode(out[len("sha256="):], mac.Sum(sum[:0]))
	return string(out[:])
}

// Sign is the signature of a body: sha256=<hex of HMAC-SHA256(secret, body)>.
func Sign(secret string, body []byte) string {
	return signature(hmac.New(sha256.New, []byte(secret)), body)
}

// CloudEvent renders an event of the log as a CloudEvents 1.0 structured
// JSON event: its type io.vigil.<kind> (transition, flapping, ...), its
// subject the instance, its data the event as the API shows it.
func CloudEvent(ev actors.Event, id, node string) ([]byte, error) {
	ce := cloudevents.New(cloudevents.CloudEventsVersionV1)
	ce.SetID(id)
	ce.SetSource("vigil://" + node)
	kind := ev.Name()
	ce.SetType(EventTypePrefix + kind)
	if ev.InstanceID != "" {
		ce.SetSubject(ev.InstanceID)
	}
	at := ev.At
	if at.IsZero() {
		at = time.Now()
	}
	ce.SetTime(at.UTC())
	if err := ce.SetData("application/json", ev); err != nil {
		return nil, err
	}
	if err := ce.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(ce)
}

// matches reports whether the notifier gets this event: an instance's
// events need its labels; a transition folded into its flapping, a silence
// or an incident is not sent (the flapping, flapping_ended, silence_ended
// and incident events are); an incident's labels are its instances'
// common labels.
func (m *Match) matches(ev *actors.Event) bool {
	labels := ev.Labels
	if ev.Kind == actors.KindIncidentOpened || ev.Kind == actors.KindIncidentClosed {
		labels = map[string]string{}
		if common, ok := ev.Details["common_labels"].(map[string]string); ok {
			labels = common
		} else if common, ok := ev.Details["common_labels"].(map[string]any); ok {
			for k, v := range common {
				labels[k], _ = v.(string)
			}
		}
	}
	if !health.MatchLabels(labels, m.Labels) {
		return false
	}
	switch ev.Kind {
	case "":
		if ev.Flapping || ev.Silenced || ev.Incident != "" {
			return false
		}
		if len(m.To) == 0 {
			return true
		}
		for _, st := range m.To {
			if st == ev.To {
				return true
			}
		}
		return false
	case actors.KindFlapping, actors.KindFlappingEnded:
		return !ev.Silenced
	}
	return true
}
