package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/fleet/peer"
	"github.com/vigilhq/vigil/health"
)

// unresolvedMove is a move whose etcd transaction may or may not have
// happened (etcd did not answer): the instance stays stopped here and
// staged there until etcd says who owns it.
type unresolvedMove struct {
	to      string
	handoff actors.Handoff
}

// moveLocal moves an instance this node owns to another node:
//
//  1. this node stops the instance's actor (Detach): from here on nothing
//     of it probes here;
//  2. the target stores its spec and state durably, without probing it
//     (Stage);
//  3. etcd's transaction changes the owner from this node to the target,
//     only if this node still owns it;
//  4. the target starts it when its watch sees itself the owner (never
//     before: the owner key's revision fences the two), at the next check
//     this node would have run; this node deletes its copy.
//
// A failure before the transaction brings the instance back here as it was.
func (n *Node) moveLocal(ctx context.Context, id, to string) (actors.Info, error) {
	sched := n.sched.Load()
	if to == n.cfg.Name {
		info, err := sched.Get(ctx, id)
		info.Node = n.cfg.Name
		return info, err
	}
	m, ok := n.cat.member(to)
	switch {
	case !ok:
		return actors.Info{}, invalidField("to", "no node named %s in the fleet", to)
	case !m.up:
		return actors.Info{}, &Error{Status: http.StatusServiceUnavailable, Code: NodeReason, Owner: to,
			Message: "node " + to + " is down: an instance moves only to a node that is up"}
	}
	n.movesMu.Lock()
	if _, busy := n.moves[id]; busy {
		n.movesMu.Unlock()
		return actors.Info{}, &Error{Status: http.StatusConflict, Code: "conflict", Message: "a move of " + id + " is in progress"}
	}
	done := make(chan struct{})
	n.moves[id] = done
	n.movesMu.Unlock()
	defer func() {
		n.movesMu.Lock()
		delete(n.moves, id)
		n.movesMu.Unlock()
		close(done)
	}()
	began := time.Now()
	result := "failed"
	defer func() { n.metrics.moves.WithLabelValues(result).Inc() }()

	h, err := sched.Detach(ctx, id)
	if err != nil {
		return actors.Info{}, err
	}
	back := func(cause error) (actors.Info, error) {
		if _, err := sched.Attach(context.WithoutCancel(ctx), h); err != nil {
			n.log.Error().Err(err).Str("instance_id", id).Msg("fleet_move_reattach_failed")
		}
		return actors.Info{}, unavailable("the move of %s to %s did not happen: %v", id, to, cause)
	}
	spec, err := json.Marshal(h.Instance.Spec())
	if err != nil {
		return back(err)
	}
	snap, err := json.Marshal(h.Snapshot)
	if err != nil {
		return back(err)
	}
	if err := n.call(ctx, to, "stage", &peer.Stage{Id: id, Spec: spec, Snapshot: snap, From: n.cfg.Name}, nil); err != nil {
		return back(err)
	}
	moved, err := n.txnOwner(ctx, id, to)
	if err != nil {
		// the transaction may have happened: read back who owns it
		owner, rerr := n.ownerFromEtcd(context.WithoutCancel(ctx), id)
		switch {
		case rerr != nil:
			n.unresolvedMu.Lock()
			n.unresolved[id] = unresolvedMove{to: to, handoff: h}
			n.unresolvedMu.Unlock()
			n.log.Warn().Err(err).Str("instance_id", id).Str("to", to).Msg("fleet_move_unresolved")
			result = "unresolved"
			return actors.Info{}, unavailable("etcd did not answer the move of %s to %s; it stays stopped until etcd says who owns it", id, to)
		case owner == to:
			moved = true
		default:
			moved = false
		}
	}
	if !moved {
		_ = n.call(context.WithoutCancel(ctx), to, "unstage", &peer.Unstage{Id: id}, nil)
		return back(errors.New("this node no longer owned it in etcd"))
	}
	result = "moved"
	if err := sched.Discard(context.WithoutCancel(ctx), id); err != nil {
		n.log.Warn().Err(err).Str("instance_id", id).Msg("fleet_discard_failed")
	}
	n.log.Info().Str("instance_id", id).Str("to", to).Dur("took_ms", time.Since(began)).Msg("fleet_instance_moved")
	// the answer is the instance as its new owner has it, once it runs there
	var info actors.Info
	for range 40 {
		if err := n.call(ctx, to, "get", &peer.Get{Id: id}, &info); err == nil {
			return info, nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(25 * time.Millisecond):
		}
	}
	info = actors.Info{Instance: h.Instance, Node: to, Health: h.Snapshot.State.View(h.Snapshot.NextCheckAt, false)}
	return info, nil
}

// stage keeps a handed-over instance durably without probing it; it starts
// when etcd says this node owns it (the watch, ownerChanged).
func (n *Node) stage(ctx context.Context, m *peer.Stage) error {
	var spec health.InstanceSpec
	if err := json.Unmarshal(m.Spec, &spec); err != nil {
		return invalidField("spec", "the handed-over spec cannot be read: %v", err)
	}
	in, err := spec.Normalize(m.Id)
	if err != nil {
		return err
	}
	var snap actors.Snapshot
	if err := json.Unmarshal(m.Snapshot, &snap); err != nil {
		return invalidField("snapshot", "the handed-over state cannot be read: %v", err)
	}
	h := actors.Handoff{Instance: in, Snapshot: &snap}
	sched := n.sched.Load()
	if err := sched.Stage(ctx, h); err != nil {
		return err
	}
	n.stagedMu.Lock()
	n.staged[m.Id] = h
	n.stagedMu.Unlock()
	// the move's transaction comes after this answer, so etcd cannot say
	// this node owns it yet; if it does, a watch event found nothing staged
	if owner, err := n.ownerFromEtcd(ctx, m.Id); err == nil && owner == n.cfg.Name {
		n.ownerChanged(m.Id, n.cfg.Name)
	}
	return nil
}

// unstage drops a staged instance whose move did not happen.
func (n *Node) unstage(ctx context.Context, id string) error {
	n.stagedMu.Lock()
	_, ok := n.staged[id]
	delete(n.staged, id)
	n.stagedMu.Unlock()
	if !ok {
		return nil
	}
	return n.sched.Load().Discard(ctx, id)
}

// resolveMoves settles moves whose transaction etcd did not confirm, once
// it answers: the instance runs on whichever node etcd names.
func (n *Node) resolveMoves() {
	defer n.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		n.unresolvedMu.Lock()
		pending := make(map[string]unresolvedMove, len(n.unresolved))
		for id, m := range n.unresolved {
			pending[id] = m
		}
		n.unresolvedMu.Unlock()
		for id, m := range pending {
			owner, err := n.ownerFromEtcd(n.ctx, id)
			if err != nil {
				continue
			}
			sched := n.sched.Load()
			if owner == n.cfg.Name {
				_ = n.call(n.ctx, m.to, "unstage", &peer.Unstage{Id: id}, nil)
				if _, err := sched.Attach(n.ctx, m.handoff); err != nil {
					n.log.Error().Err(err).Str("instance_id", id).Msg("fleet_move_reattach_failed")
				}
			} else {
				_ = sched.Discard(n.ctx, id)
			}
			n.log.Info().Str("instance_id", id).Str("owner", owner).Msg("fleet_move_resolved")
			n.unresolvedMu.Lock()
			delete(n.unresolved, id)
			n.unresolvedMu.Unlock()
		}
	}
}
