package fleet

import (
	"context"
	"errors"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/fleet/peer"
	"github.com/vigilhq/vigil/health"
)

// Registry is the API's registry on a fleet node: every call about one
// instance is served by the node that owns it, wherever it arrives; lists,
// summaries and the event stream are this node's own unless the API asks
// for the fleet's.
type Registry struct{ n *Node }

// Registry returns the node's registry for the API.
func (n *Node) Registry() *Registry { return &Registry{n: n} }

func (r *Registry) sched() *actors.Scheduler { return r.n.sched.Load() }

// Reasons of a status the fleet answers for a node it cannot ask: down
// (its lease expired) or unreachable (its connection dropped, its lease not
// expired yet).
const (
	NodeReason  = "node_down"
	Unreachable = "node_unreachable"
)

// owner returns the node that owns id, "" for none. The catalog answers
// first; when it knows nothing, etcd does (a registration on another node
// may not have reached this node's watch yet). A move of id out of this
// node is waited for.
func (n *Node) owner(ctx context.Context, id string) (string, error) {
	n.waitMove(ctx, id)
	if r, ok := n.cat.get(id); ok && r.owner != "" {
		return r.owner, nil
	}
	octx, done := n.op("owner")
	defer done()
	resp, err := n.etcd.Get(octx, n.key(keyOwners, id))
	if err != nil {
		return "", unavailable("etcd did not answer who owns %s: %v", id, err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

// waitMove waits (a few seconds at most) for a move of id out of this node.
func (n *Node) waitMove(ctx context.Context, id string) {
	n.movesMu.Lock()
	done, moving := n.moves[id]
	n.movesMu.Unlock()
	if !moving {
		return
	}
	select {
	case <-done:
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
	}
}

// Put creates or replaces an instance this node owns, or claims one nobody
// owns. An instance another node owns is a conflict (409) naming it: the
// VM manager registers an instance with its own host, and ownership
// changes only by a move.
func (r *Registry) Put(ctx context.Context, id string, spec health.InstanceSpec) (actors.Info, bool, error) {
	n := r.n
	if _, err := spec.Normalize(id); err != nil {
		return actors.Info{}, false, err // refused before anything is claimed
	}
	owner, err := n.owner(ctx, id)
	if err != nil {
		return actors.Info{}, false, err
	}
	claimed := false
	switch owner {
	case n.cfg.Name:
	case "":
		if err := n.claim(ctx, id); err != nil {
			return actors.Info{}, false, err
		}
		claimed = true
	default:
		return actors.Info{}, false, conflict(owner, id)
	}
	info, created, err := r.sched().Put(ctx, id, spec)
	if err != nil {
		if _, stored := r.sched().Peek(id); claimed && !stored {
			n.release(context.WithoutCancel(ctx), id)
		}
		return actors.Info{}, false, err
	}
	info.Node = n.cfg.Name
	return info, created, nil
}

// Patch applies a merge patch where the instance lives.
func (r *Registry) Patch(ctx context.Context, id string, patch []byte) (actors.Info, error) {
	var info actors.Info
	err := r.route(ctx, id, "patch", func(s *actors.Scheduler) (err error) {
		info, err = s.Patch(ctx, id, patch)
		return err
	}, func(owner string) error {
		return r.n.call(ctx, owner, "patch", &peer.Patch{Id: id, Patch: patch}, &info)
	})
	if err == nil && info.Node == "" {
		info.Node = r.n.cfg.Name
	}
	return info, err
}

// Get returns an instance with its history from its owner; for a node that
// is down, what the fleet last knew of it.
func (r *Registry) Get(ctx context.Context, id string) (actors.Info, error) {
	var info actors.Info
	err := r.route(ctx, id, "get", func(s *actors.Scheduler) (err error) {
		info, err = s.Get(ctx, id)
		info.Node = r.n.cfg.Name
		return err
	}, func(owner string) error {
		return r.n.call(ctx, owner, "get", &peer.Get{Id: id, History: true}, &info)
	})
	var e *Error
	if errors.As(err, &e) && (e.Code == NodeReason || e.Code == Unreachable) {
		info := r.n.downInfo(id)
		info.Health.Reason = e.Code
		return info, nil
	}
	return info, err
}

// Remove deletes an instance where it lives, and its ownership.
func (r *Registry) Remove(ctx context.Context, id string) error {
	return r.route(ctx, id, "delete", func(*actors.Scheduler) error {
		return r.n.removeLocal(ctx, id)
	}, func(owner string) error {
		return r.n.call(ctx, owner, "delete", &peer.Delete{Id: id}, nil)
	})
}

// ProbeNow probes where the instance lives.
func (r *Registry) ProbeNow(ctx context.Context, id string) (health.Result, actors.Info, error) {
	var res health.Result
	var info actors.Info
	err := r.route(ctx, id, "probe", func(s *actors.Scheduler) (err error) {
		res, info, err = s.ProbeNow(ctx, id)
		return err
	}, func(owner string) error {
		var body struct {
			Result health.Result `json:"result"`
			Health health.View   `json:"health_status"`
		}
		if err := r.n.call(ctx, owner, "probe", &peer.Probe{Id: id}, &body); err != nil {
			return err
		}
		res, info.Health = body.Result, body.Health
		return nil
	})
	return res, info, err
}

// route runs local when this node owns id and remote with the owner
// otherwise. An instance whose owner is down answers node_down; one that
// moved meanwhile is asked of its new owner once.
func (r *Registry) route(ctx context.Context, id, op string, local func(*actors.Scheduler) error, remote func(owner string) error) error {
	n := r.n
	for attempt := 0; ; attempt++ {
		owner, err := n.owner(ctx, id)
		switch {
		case err != nil:
			return err
		case owner == "":
			return actors.ErrNotFound
		case owner == n.cfg.Name:
			err = local(r.sched())
		case !n.cat.isUp(owner):
			return nodeDown(owner, id)
		default:
			err = remote(owner)
		}
		if !errors.Is(err, actors.ErrNotFound) || attempt > 0 {
			return err
		}
		// moved away meanwhile? ask etcd, and the new owner
		if fresh, ferr := n.ownerFromEtcd(ctx, id); ferr != nil || fresh == owner || fresh == "" {
			return err
		}
	}
}

func (n *Node) ownerFromEtcd(ctx context.Context, id string) (string, error) {
	octx, done := n.op("owner")
	defer done()
	resp, err := n.etcd.Get(octx, n.key(keyOwners, id))
	if err != nil || len(resp.Kvs) == 0 {
		return "", err
	}
	owner := string(resp.Kvs[0].Value)
	n.cat.setOwner(id, owner, resp.Kvs[0].ModRevision)
	return owner, nil
}

// removeLocal deletes an instance this node owns, then its ownership.
func (n *Node) removeLocal(ctx context.Context, id string) error {
	if err := n.sched.Load().Remove(ctx, id); err != nil {
		return err
	}
	n.release(context.WithoutCancel(ctx), id)
	return nil
}

// downInfo is what the fleet answers for an instance of a node that is
// down: status unknown, reason node_down, and the status it last had.
func (n *Node) downInfo(id string) actors.Info {
	rec, _ := n.cat.get(id)
	m, _ := n.cat.member(rec.owner)
	since := m.since.UTC()
	return actors.Info{Instance: health.Instance{ID: id, State: health.Unknown}, Node: rec.owner,
		Health: health.View{Status: health.StatusUnknown, Since: &since, Reason: NodeReason, LastKnownStatus: rec.status}}
}

// List is this node's page of instances.
func (r *Registry) List(f actors.Filter, cursor string, limit int) ([]actors.Info, string) {
	page, next := r.sched().List(f, cursor, limit)
	for i := range page {
		page[i].Node = r.n.cfg.Name
	}
	return page, next
}

// StoreHealth is this node's store's.
func (r *Registry) StoreHealth() error { return r.sched().StoreHealth() }

// Incidents are this node's.
func (r *Registry) Incidents() []health.Incident { return r.sched().Incidents() }

// Summary counts this node's instances by status.
func (r *Registry) Summary() map[health.Status]int { return r.sched().Summary() }

// InFlight is the number of this node's probes in flight.
func (r *Registry) InFlight() int { return r.sched().InFlight() }

// Ready reports whether this node has loaded every stored instance and
// joined the fleet.
func (r *Registry) Ready() bool { return r.n.Ready() && r.sched().Ready() }

// Events reads this node's event log.
func (r *Registry) Events(after uint64, limit int) ([]actors.Event, uint64, error) {
	return r.sched().Events(after, limit)
}

// LastSeq is this node's newest event.
func (r *Registry) LastSeq() uint64 { return r.sched().LastSeq() }

// Subscribe follows this node's transitions.
func (r *Registry) Subscribe(buffer int) *actors.Subscription { return r.sched().Subscribe(buffer) }

// NodeInfo is one node in GET /v1/nodes.
type NodeInfo struct {
	Name        string         `json:"name"`
	PeerAddress string         `json:"peer_address"`
	APIAddress  string         `json:"api_address,omitempty"`
	Up          bool           `json:"up"`
	Since       time.Time      `json:"since"`
	Instances   int            `json:"instances"`
	Summary     map[string]int `json:"summary"`
}

// Nodes lists the fleet's nodes, by name, with their instances' statuses.
func (r *Registry) Nodes(context.Context) (any, error) {
	members, _ := r.n.cat.membersNow()
	_, perNode := r.n.cat.summary()
	out := make([]NodeInfo, 0, len(members))
	for _, m := range members {
		out = append(out, NodeInfo{Name: m.Name, PeerAddress: m.Peer, APIAddress: m.API, Up: m.up, Since: m.since.UTC(),
			Instances: r.n.cat.instances(m.Name), Summary: counts(perNode[m.Name])})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return map[string]any{"nodes": out}, nil
}

// counts renders status counts with their total, as GET /v1/summary does.
func counts(by map[health.Status]int) map[string]int {
	out := map[string]int{"total": 0}
	for _, st := range health.Statuses {
		out[string(st)] = by[st]
		out["total"] += by[st]
	}
	return out
}

// FleetSummary counts the fleet's instances by status (those of nodes that
// are down as unknown), in all and per node.
func (r *Registry) FleetSummary(context.Context) (any, error) {
	total, perNode := r.n.cat.summary()
	out := map[string]any{}
	for k, v := range counts(total) {
		out[k] = v
	}
	nodes := map[string]map[string]int{}
	for name, by := range perNode {
		nodes[name] = counts(by)
	}
	out["nodes"] = nodes
	return out, nil
}

// FleetList pages the fleet's instances in id order: the catalog chooses
// the page (with the status each shows), and each owner answers for its
// own in one request; a node that is down is answered for.
func (r *Registry) FleetList(ctx context.Context, f actors.Filter, after string, limit int) ([]actors.Info, string, error) {
	n := r.n
	statuses := f.Statuses
	recs, _, more := n.cat.page(statuses, f.Labels, after, limit)
	byOwner := map[string][]string{}
	for _, rec := range recs {
		byOwner[rec.owner] = append(byOwner[rec.owner], rec.id)
	}
	infos := make(map[string]actors.Info, len(recs))
	type answer struct {
		infos []actors.Info
		err   error
	}
	answers := make(chan answer, len(byOwner))
	asked := 0
	for owner, ids := range byOwner {
		switch {
		case owner == n.cfg.Name:
			for _, id := range ids {
				if info, ok := r.sched().Peek(id); ok {
					info.Node = owner
					infos[id] = info
				}
			}
		case !n.cat.isUp(owner):
			for _, id := range ids {
				infos[id] = n.downInfo(id)
			}
		default:
			asked++
			go func() {
				var got []actors.Info
				err := n.call(ctx, owner, "get_many", &peer.GetMany{Ids: ids}, &got)
				answers <- answer{got, err}
			}()
		}
	}
	var failed error
	for range asked {
		a := <-answers
		if a.err != nil {
			failed = a.err
			continue
		}
		for _, info := range a.infos {
			infos[info.ID] = info
		}
	}
	if failed != nil && len(infos) == 0 && len(recs) > 0 {
		return nil, "", failed
	}
	page := make([]actors.Info, 0, len(recs))
	for _, rec := range recs {
		info, ok := infos[rec.id]
		if !ok {
			if !n.cat.isUp(rec.owner) || failed != nil {
				// its owner did not answer in time: say what is known
				info = n.downInfo(rec.id)
				info.Health.Reason = Unreachable
			} else {
				continue // deleted meanwhile
			}
		}
		if len(statuses) > 0 && !contains(statuses, info.Health.Status) || !health.MatchLabels(info.Labels, f.Labels) && info.Health.Reason == "" {
			continue // changed since the catalog saw it
		}
		page = append(page, info)
	}
	next := ""
	if more && len(recs) > 0 {
		next = recs[len(recs)-1].id
	}
	return page, next, nil
}

// Move hands an instance to another node: its owner stops it, gives its
// state to the target, and etcd's transaction makes the target the owner,
// which then starts it.
func (r *Registry) Move(ctx context.Context, id, to string) (actors.Info, error) {
	n := r.n
	if err := ValidName(to); err != nil {
		return actors.Info{}, invalidField("to", "to must be a node name: 1-63 characters of a-z, 0-9 and - (got %q)", to)
	}
	owner, err := n.owner(ctx, id)
	switch {
	case err != nil:
		return actors.Info{}, err
	case owner == "":
		return actors.Info{}, actors.ErrNotFound
	case owner == n.cfg.Name:
		return n.moveLocal(ctx, id, to)
	case !n.cat.isUp(owner):
		return actors.Info{}, nodeDown(owner, id)
	}
	var info actors.Info
	err = n.call(ctx, owner, "move", &peer.Move{Id: id, To: to}, &info)
	return info, err
}

// txnOwner moves owners/<id> from this node to another, if this node still
// owns it; the revision of that key is the fencing token between them.
func (n *Node) txnOwner(ctx context.Context, id, to string) (bool, error) {
	octx, done := n.op("move")
	defer done()
	k := n.key(keyOwners, id)
	resp, err := n.etcd.Txn(octx).If(clientv3.Compare(clientv3.Value(k), "=", n.cfg.Name)).
		Then(clientv3.OpPut(k, to)).Commit()
	if err != nil {
		return false, err
	}
	if resp.Succeeded {
		n.cat.setOwner(id, to, resp.Header.Revision)
	}
	return resp.Succeeded, nil
}
