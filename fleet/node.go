// Package fleet makes many `vigil serve` processes, one per VM host, one
// fleet: etcd holds who is in it (a lease per node), which node owns which
// instance (a compare-and-swap per instance, its revision the fencing
// token) and the last status each owner published; protoactor-go's remote
// carries requests between nodes. Every node answers for every instance:
// its own from its scheduler, another node's by asking that node, and those
// of a node that is down with what the fleet last knew (unknown,
// node_down). An instance moves with its actor's whole state, and two nodes
// never probe it at once: the old owner stops before etcd's transaction
// changes the owner, and the new owner starts only when etcd says so.
//
// The package does not reach into the scheduler: a Node is given the
// actors.Scheduler of its host and routes the API's calls (Registry).
//
// Concurrency contract: a Node and its Registry are safe for concurrent use
// once Start has returned.
package fleet

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/remote"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// Defaults.
const (
	DefaultLeaseTTL  = 3 * time.Second
	DefaultPrefix    = "/vigil/"
	DefaultPeerWait  = 3 * time.Second // a request to another node
	etcdDialTimeout  = 3 * time.Second
	etcdOpTimeout    = 3 * time.Second
	aliveCheckPeriod = DefaultLeaseTTL
	// unreachableFor is how long a peer whose connection dropped is not
	// asked
	unreachableFor = time.Second
)

// Keys under the prefix.
const (
	keyMembers = "members/" // members/<node>: its addresses, for good
	keyAlive   = "alive/"   // alive/<node>: on the node's lease
	keyOwners  = "owners/"  // owners/<id>: the owning node
	keyStatus  = "status/"  // status/<id>: its last published status
)

var namePattern = regexp.MustCompile(`^[a-z0-9-]{1,63}$`)

// ValidName checks a node name: 1–63 of [a-z0-9-].
func ValidName(name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("--node %q must be 1-63 characters of a-z, 0-9 and -", name)
	}
	return nil
}

// Config is one node's place in the fleet.
type Config struct {
	Name       string   // this node
	Etcd       []string // etcd client URLs
	PeerListen string   // host:port for node-to-node traffic, advertised as it is
	PeerToken  string   // the fleet's shared secret for node-to-node traffic
	APIAddress string   // this node's API address, for /v1/nodes
	LeaseTTL   time.Duration
	Prefix     string // etcd key prefix (default /vigil/)
	Log        zerolog.Logger
	// Registerer, when set, gets the fleet's metrics.
	Registerer prometheus.Registerer
}

// Node is this host's vigil in the fleet.
type Node struct {
	cfg     Config
	log     zerolog.Logger
	etcd    *clientv3.Client
	cat     *catalog
	metrics *metrics
	system  *actor.ActorSystem
	remote  *remote.Remote
	root    *actor.RootContext
	sched   atomic.Pointer[actors.Scheduler]
	pub     *publisher

	bootOwned    map[string]bool // what etcd said this node owns, at Open
	refusedMu    sync.Mutex
	refused      []string // stored here but owned elsewhere: discarded at Start
	stagedMu     sync.Mutex
	staged       map[string]actors.Handoff // moves to here, until etcd says so
	movesMu      sync.Mutex
	moves        map[string]chan struct{} // moves out of here in progress
	unresolvedMu sync.Mutex
	unresolved   map[string]unresolvedMove // moves whose outcome etcd has not told yet

	// peers whose connection dropped: asked again only after the time set
	unreachableMu sync.Mutex
	unreachable   map[string]time.Time // peer address → until

	joined atomic.Bool
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Open connects to etcd, reads the fleet (waiting for etcd as long as ctx
// allows: a node cannot know what it owns without it) and starts listening
// for other nodes. Call Admit for the scheduler's boot, then Start.
func Open(ctx context.Context, cfg Config) (*Node, error) {
	if err := ValidName(cfg.Name); err != nil {
		return nil, err
	}
	if len(cfg.Etcd) == 0 {
		return nil, errors.New("fleet: --etcd needs at least one client URL")
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	host, portText, err := net.SplitHostPort(cfg.PeerListen)
	if err != nil {
		return nil, fmt.Errorf("--peer-listen %q must be host:port: %w", cfg.PeerListen, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port <= 0 || port > 65535 || host == "" {
		return nil, fmt.Errorf("--peer-listen %q must be host:port with a host to advertise and a port", cfg.PeerListen)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.Etcd, DialTimeout: etcdDialTimeout, Logger: zap.NewNop(),
		// a node must notice a dead etcd connection quickly, and find etcd
		// again within a second of its return (gRPC's default backoff
		// grows to two minutes)
		DialKeepAliveTime: 2 * time.Second, DialKeepAliveTimeout: 2 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{MinConnectTimeout: time.Second,
			Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}})}})
	if err != nil {
		return nil, fmt.Errorf("fleet: etcd %v: %w", cfg.Etcd, err)
	}
	nctx, cancel := context.WithCancel(context.Background())
	n := &Node{cfg: cfg, log: cfg.Log.With().Str("component", "fleet").Logger(), etcd: cli, cat: newCatalog(),
		staged: map[string]actors.Handoff{}, moves: map[string]chan struct{}{}, unresolved: map[string]unresolvedMove{},
		bootOwned: map[string]bool{}, unreachable: map[string]time.Time{}, ctx: nctx, cancel: cancel}
	n.metrics = newMetrics(n, cfg.Registerer)
	if err := n.load(ctx); err != nil {
		cancel()
		_ = cli.Close()
		return nil, err
	}
	if err := n.listen(host, port); err != nil {
		cancel()
		_ = cli.Close()
		return nil, err
	}
	n.pub = newPublisher(n)
	return n, nil
}

// Observer is what the host's scheduler tells of its transitions, so that
// the fleet knows each instance's last status (actors.WithObserver).
func (n *Node) Observer() actors.Observer { return n.pub }

// Name is this node's name.
func (n *Node) Name() string { return n.cfg.Name }

func (n *Node) key(parts ...string) string { return n.cfg.Prefix + strings.Join(parts, "") }

// op bounds one etcd call and times it.
func (n *Node) op(name string) (context.Context, func()) {
	ctx, cancel := context.WithTimeout(n.ctx, etcdOpTimeout)
	began := time.Now()
	return ctx, func() {
		cancel()
		n.metrics.etcd.WithLabelValues(name).Observe(time.Since(began).Seconds())
	}
}

// load reads the whole fleet from etcd into the catalog, retrying while etcd
// is unreachable.
func (n *Node) load(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		octx, done := context.WithTimeout(ctx, etcdOpTimeout)
		resp, err := n.etcd.Get(octx, n.cfg.Prefix, clientv3.WithPrefix())
		done()
		if err == nil {
			now := time.Now()
			for _, kv := range resp.Kvs {
				n.apply(string(kv.Key), kv.Value, false, kv.ModRevision, now)
			}
			n.cat.rev = resp.Header.Revision
			for _, id := range n.cat.ownedBy(n.cfg.Name) {
				n.bootOwned[id] = true
			}
			n.log.Info().Int("instances", n.cat.byID.Len()).Int("owned", len(n.bootOwned)).Int64("revision", resp.Header.Revision).Msg("fleet_loaded")
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("fleet: reading the fleet from etcd %v: %w", n.cfg.Etcd, err)
		}
		if attempt%5 == 0 {
			n.log.Warn().Err(err).Strs("etcd", n.cfg.Etcd).Msg("etcd_unreachable")
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// apply records one key of the fleet in the catalog (deleted: its value is
// gone) as of etcd revision rev. It reports whether an owner key changed
// what the catalog knew (an older revision than it holds does not).
func (n *Node) apply(key string, value []byte, deleted bool, rev int64, now time.Time) (ownerChanged bool) {
	rest, ok := strings.CutPrefix(key, n.cfg.Prefix)
	if !ok {
		return false
	}
	switch {
	case strings.HasPrefix(rest, keyOwners):
		id := strings.TrimPrefix(rest, keyOwners)
		owner := string(value)
		if deleted {
			owner = ""
		}
		return n.cat.setOwner(id, owner, rev)
	case strings.HasPrefix(rest, keyStatus):
		id := strings.TrimPrefix(rest, keyStatus)
		if deleted {
			n.cat.setStatus(id, "", time.Time{}, nil)
			return false
		}
		var s statusRecord
		if json.Unmarshal(value, &s) == nil {
			n.cat.setStatus(id, s.Status, s.Since, s.Labels)
		}
	case strings.HasPrefix(rest, keyMembers):
		var m member
		if !deleted && json.Unmarshal(value, &m) == nil {
			n.cat.setMember(m, now)
		}
	case strings.HasPrefix(rest, keyAlive):
		name := strings.TrimPrefix(rest, keyAlive)
		if n.cat.setUp(name, !deleted, now) {
			ev := n.log.Info()
			msg := "node_up"
			if deleted {
				ev, msg = n.log.Warn(), "node_down"
			}
			ev.Str("node", name).Msg(msg)
		}
	}
	return false
}

// statusRecord is the value of status/<id>: the last status and the labels
// the fleet filters pages by.
type statusRecord struct {
	Status health.Status     `json:"status"`
	Since  time.Time         `json:"since"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Admit is the scheduler's admission at boot (actors.WithAdmit): an
// instance stored here gets an actor if etcd says this node owns it, or
// nobody does (Start claims it); one another node owns moved away while
// this node was down, and is discarded.
func (n *Node) Admit(in health.Instance) bool {
	if n.bootOwned[in.ID] {
		return true
	}
	if r, ok := n.cat.get(in.ID); ok && r.owner != "" {
		n.refusedMu.Lock()
		n.refused = append(n.refused, in.ID)
		n.refusedMu.Unlock()
		return false
	}
	return true
}

// Start joins the fleet with the host's scheduler: it claims what it
// stores and nobody owns, forgets what it was said to own but does not
// store, registers the node, and follows the fleet from then on.
func (n *Node) Start(ctx context.Context, sched *actors.Scheduler) error {
	n.sched.Store(sched)
	n.refusedMu.Lock()
	refused := n.refused
	n.refusedMu.Unlock()
	for _, id := range refused {
		if err := sched.Discard(ctx, id); err != nil {
			n.log.Warn().Err(err).Str("instance_id", id).Msg("fleet_discard_failed")
		} else {
			n.log.Info().Str("instance_id", id).Msg("fleet_moved_away_while_down")
		}
	}
	local := map[string]bool{}
	for cursor := ""; ; {
		page, next := sched.List(actors.Filter{}, cursor, 1000)
		for _, in := range page {
			local[in.ID] = true
			if !n.bootOwned[in.ID] {
				if err := n.claim(ctx, in.ID); err != nil {
					n.log.Warn().Err(err).Str("instance_id", in.ID).Msg("fleet_claim_failed")
				}
			}
			n.pub.publish(in.ID, in.Health.Status, sinceOf(in.Health))
		}
		if next == "" {
			break
		}
		cursor = next
	}
	for id := range n.bootOwned {
		if !local[id] {
			n.release(ctx, id) // registered here once, never made durable, or lost
		}
	}
	if err := n.putMember(ctx); err != nil {
		return err
	}
	n.wg.Add(3)
	go n.membership()
	go n.watch()
	go n.pub.run()
	n.wg.Add(1)
	go n.resolveMoves()
	return nil
}

// claim makes this node the owner of an instance nobody owns. An instance
// another node owns is an *Error (409) naming it.
func (n *Node) claim(ctx context.Context, id string) error {
	octx, done := n.op("claim")
	defer done()
	k := n.key(keyOwners, id)
	resp, err := n.etcd.Txn(octx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, n.cfg.Name)).Else(clientv3.OpGet(k)).Commit()
	if err != nil {
		return unavailable("etcd did not answer: the ownership of %s cannot be recorded: %v", id, err)
	}
	if resp.Succeeded {
		n.cat.setOwner(id, n.cfg.Name, resp.Header.Revision)
		return nil
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		owner := string(kvs[0].Value)
		n.cat.setOwner(id, owner, kvs[0].ModRevision)
		if owner == n.cfg.Name {
			return nil
		}
		return conflict(owner, id)
	}
	return unavailable("the ownership of %s changed while it was claimed; retry", id)
}

// release gives up the ownership of an instance this node owns.
func (n *Node) release(ctx context.Context, id string) {
	octx, done := n.op("release")
	defer done()
	k := n.key(keyOwners, id)
	resp, err := n.etcd.Txn(octx).If(clientv3.Compare(clientv3.Value(k), "=", n.cfg.Name)).
		Then(clientv3.OpDelete(k), clientv3.OpDelete(n.key(keyStatus, id))).Commit()
	if err != nil {
		n.log.Warn().Err(err).Str("instance_id", id).Msg("fleet_release_failed")
		return
	}
	if resp.Succeeded {
		n.cat.setOwner(id, "", resp.Header.Revision)
	}
}

func (n *Node) putMember(ctx context.Context) error {
	b, _ := json.Marshal(member{Name: n.cfg.Name, Peer: n.cfg.PeerListen, API: n.cfg.APIAddress})
	for {
		octx, done := n.op("member")
		_, err := n.etcd.Put(octx, n.key(keyMembers, n.cfg.Name), string(b))
		done()
		if err == nil {
			return nil
		}
		n.log.Warn().Err(err).Msg("etcd_unreachable")
		select {
		case <-ctx.Done():
			return fmt.Errorf("fleet: registering node %s: %w", n.cfg.Name, err)
		case <-time.After(time.Second):
		}
	}
}

// membership keeps this node's alive key on a lease kept alive by an etcd
// session. When the session ends (etcd was away longer than the lease, or
// the lease was lost) it starts a new one and registers again, and once a
// lease period it checks that its key is really there, on its lease: a node
// must never run on outside its own fleet's view of itself.
func (n *Node) membership() {
	defer n.wg.Done()
	key := n.key(keyAlive, n.cfg.Name)
	val, _ := json.Marshal(map[string]any{"since": time.Now().UTC()})
	backoff := 100 * time.Millisecond
	for n.ctx.Err() == nil {
		sess, err := concurrency.NewSession(n.etcd, concurrency.WithTTL(int(n.cfg.LeaseTTL.Seconds())), concurrency.WithContext(n.ctx))
		if err == nil {
			octx, done := n.op("alive")
			_, err = n.etcd.Put(octx, key, string(val), clientv3.WithLease(sess.Lease()))
			done()
			if err != nil {
				_ = sess.Close()
			}
		}
		if err != nil {
			if n.ctx.Err() != nil {
				return
			}
			n.log.Warn().Err(err).Msg("fleet_join_failed")
			select {
			case <-n.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if !n.joined.Swap(true) {
			n.log.Info().Str("node", n.cfg.Name).Int64("lease", int64(sess.Lease())).Msg("fleet_joined")
		} else {
			n.log.Info().Str("node", n.cfg.Name).Int64("lease", int64(sess.Lease())).Msg("fleet_rejoined")
		}
		n.keepAlive(sess, key)
		if n.ctx.Err() != nil {
			// leaving: revoke the lease so that the others see it at once
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, _ = n.etcd.Revoke(ctx, sess.Lease())
			cancel()
			return
		}
		_ = sess.Close()
	}
}

// keepAlive returns when the session ends or the alive key is gone.
func (n *Node) keepAlive(sess *concurrency.Session, key string) {
	t := time.NewTicker(aliveCheckPeriod)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-sess.Done():
			n.log.Warn().Msg("fleet_session_lost")
			return
		case <-t.C:
			octx, done := n.op("alive_check")
			resp, err := n.etcd.Get(octx, key)
			done()
			if err == nil && (len(resp.Kvs) == 0 || resp.Kvs[0].Lease != int64(sess.Lease())) {
				n.log.Warn().Msg("fleet_alive_key_missing")
				return
			}
		}
	}
}

// watch follows every change of the fleet from the revision the catalog
// holds. A compacted revision (this node was away too long) reloads it all.
func (n *Node) watch() {
	defer n.wg.Done()
	for n.ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(n.ctx))
		ch := n.etcd.Watch(wctx, n.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithRev(n.cat.rev+1), clientv3.WithPrevKV())
		for resp := range ch {
			if err := resp.Err(); err != nil {
				if resp.CompactRevision != 0 {
					n.log.Warn().Int64("compacted", resp.CompactRevision).Msg("fleet_watch_compacted")
					_ = n.load(n.ctx)
				} else {
					n.log.Warn().Err(err).Msg("fleet_watch_interrupted")
				}
				break
			}
			now := time.Now()
			for _, ev := range resp.Events {
				key := string(ev.Kv.Key)
				applied := n.apply(key, ev.Kv.Value, ev.Type == clientv3.EventTypeDelete, ev.Kv.ModRevision, now)
				if applied && ev.Type == clientv3.EventTypePut && strings.HasPrefix(key, n.key(keyOwners)) {
					n.ownerChanged(strings.TrimPrefix(key, n.key(keyOwners)), string(ev.Kv.Value))
				}
			}
			n.cat.mu.Lock()
			n.cat.rev = resp.Header.Revision
			n.cat.mu.Unlock()
		}
		cancel()
		select {
		case <-n.ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ownerChanged acts on a new owner of an instance: the target of a move
// starts it once etcd says it owns it, and the old owner forgets its copy.
func (n *Node) ownerChanged(id, owner string) {
	sched := n.sched.Load()
	if sched == nil {
		return
	}
	if owner == n.cfg.Name {
		n.stagedMu.Lock()
		h, ok := n.staged[id]
		delete(n.staged, id)
		n.stagedMu.Unlock()
		if ok {
			go n.activate(sched, h)
		}
		return
	}
	// another node owns it now: whatever this node still holds of it is
	// a copy of the past
	if _, ok := sched.Peek(id); ok {
		n.log.Warn().Str("instance_id", id).Str("owner", owner).Msg("fleet_owned_elsewhere")
		if _, err := sched.Detach(n.ctx, id); err == nil {
			_ = sched.Discard(n.ctx, id)
		}
	}
}

// activate starts a handed-over instance here.
func (n *Node) activate(sched *actors.Scheduler, h actors.Handoff) {
	info, err := sched.AttachStaged(n.ctx, h)
	if err != nil {
		n.log.Error().Err(err).Str("instance_id", h.Instance.ID).Msg("fleet_activate_failed")
		return
	}
	n.pub.publish(info.ID, info.Health.Status, sinceOf(info.Health))
	n.log.Info().Str("instance_id", h.Instance.ID).Msg("fleet_instance_arrived")
}

func sinceOf(v health.View) time.Time {
	if v.Since == nil {
		return time.Time{}
	}
	return *v.Since
}

// Ready reports whether the node has joined the fleet.
func (n *Node) Ready() bool { return n.joined.Load() }

// Close leaves the fleet: the lease is revoked (the others see this node
// down at once), requests from others end.
func (n *Node) Close() error {
	n.cancel()
	n.wg.Wait()
	if n.remote != nil {
		n.remote.Shutdown(false)
	}
	n.system.Shutdown()
	return n.etcd.Close()
}

// listen starts the remote actor system on host:port with the gateway
// actor that serves other nodes' requests.
func (n *Node) listen(host string, port int) (err error) {
	n.system = actor.NewActorSystem(
		actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return actors.Slog(n.cfg.Log) }),
		actor.WithDeadLetterThrottleCount(3), actor.WithDeadLetterThrottleInterval(time.Minute),
		actor.WithDeadLetterRequestLogging(false))
	n.root = n.system.Root
	auth := tokenAuth(n.cfg.PeerToken)
	cfg := remote.Configure(host, port,
		remote.WithServerOptions(grpc.ChainStreamInterceptor(auth.check), grpc.ChainUnaryInterceptor(auth.checkUnary)),
		remote.WithDialOptions(grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(auth)))
	// remote panics when it cannot listen: the port is checked first
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("--peer-listen %s: %w", net.JoinHostPort(host, strconv.Itoa(port)), err)
	}
	_ = l.Close()
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("--peer-listen %s: %v", net.JoinHostPort(host, strconv.Itoa(port)), v)
		}
	}()
	n.remote = remote.NewRemote(n.system, cfg)
	n.remote.Start()
	// a peer whose connection drops is not waited for until its lease says
	// whether it is gone: requests fail at once for a while, answered with
	// what the fleet knows (the event stream's handler only hands off)
	n.system.EventStream.Subscribe(func(ev any) {
		switch e := ev.(type) {
		case *remote.EndpointTerminatedEvent:
			n.unreachableMu.Lock()
			n.unreachable[e.Address] = time.Now().Add(unreachableFor)
			n.unreachableMu.Unlock()
		case *remote.EndpointConnectedEvent:
			n.unreachableMu.Lock()
			delete(n.unreachable, e.Address)
			n.unreachableMu.Unlock()
		}
	})
	_, err = n.root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return &gateway{n: n} }), gatewayName)
	return err
}

// tokenAuth authenticates node-to-node traffic with the fleet's secret: it
// sends it with every call and requires it on every call it serves.
type tokenAuth string

func (t tokenAuth) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	if t == "" {
		return nil, nil
	}
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

// RequireTransportSecurity is false: the secret authenticates a peer on a
// loopback or private network; mTLS is for networks that need privacy too.
func (t tokenAuth) RequireTransportSecurity() bool { return false }

func (t tokenAuth) ok(ctx context.Context) error {
	if t == "" {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if subtle.ConstantTimeCompare([]byte(v), []byte("Bearer "+string(t))) == 1 {
			return nil
		}
	}
	return status.Error(16, "missing or wrong peer token") // codes.Unauthenticated
}

func (t tokenAuth) check(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := t.ok(ss.Context()); err != nil {
		return err
	}
	return handler(srv, ss)
}

func (t tokenAuth) checkUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := t.ok(ctx); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}
