package fleet

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// claimChunk is how many ownerships one etcd transaction claims: etcd
// refuses a transaction of more than --max-txn-ops operations on a side
// (128 by default), and a claim is one comparison and one put (or get).
const claimChunk = 100

// claimAttempts bounds the transactions of one chunk: each one that fails
// learns the owners of the ids that were taken meanwhile.
const claimAttempts = 3

// PutMany registers many instances with this node, each as Put would: an
// instance this node owns is replaced, one nobody owns is claimed (one etcd
// transaction for up to 100 of them, not one each), and one another node
// owns is that item's conflict (409) naming the owner. The scheduler then
// registers what this node owns in one batch, and a claim whose
// registration failed is released.
func (r *Registry) PutMany(ctx context.Context, items []actors.BatchItem) []actors.BatchResult {
	n := r.n
	out := make([]actors.BatchResult, len(items))
	first := make(map[string]int, len(items))
	var ours, unowned, dups []int
	for i, it := range items {
		if err := health.ValidateID(it.ID); err != nil {
			out[i].Err = err
			continue
		}
		if _, dup := first[it.ID]; dup {
			dups = append(dups, i) // the scheduler says why, if the first is ours
			continue
		}
		first[it.ID] = i
		if _, err := it.Spec.Normalize(it.ID); err != nil {
			out[i].Err = err // refused before anything is claimed
			continue
		}
		n.waitMove(ctx, it.ID)
		switch rec, ok := n.cat.get(it.ID); {
		case ok && rec.owner == n.cfg.Name:
			ours = append(ours, i)
		case ok && rec.owner != "":
			out[i].Err = conflict(rec.owner, it.ID)
		default:
			unowned = append(unowned, i) // or owned since the catalog last heard
		}
	}
	claimed := map[int]bool{}
	for start := 0; start < len(unowned); start += claimChunk {
		chunk := unowned[start:min(start+claimChunk, len(unowned))]
		ids := make([]string, len(chunk))
		for k, i := range chunk {
			ids[k] = items[i].ID
		}
		errs, took := n.claimMany(ids)
		for k, i := range chunk {
			switch {
			case errs[k] != nil:
				out[i].Err = errs[k]
			default:
				ours = append(ours, i)
				claimed[i] = took[k]
			}
		}
	}
	for _, i := range dups {
		if j := first[items[i].ID]; out[j].Err != nil {
			out[i].Err = out[j].Err
		} else {
			ours = append(ours, i)
		}
	}
	if len(ours) == 0 {
		return out
	}
	batch := make([]actors.BatchItem, len(ours))
	for k, i := range ours {
		batch[k] = items[i]
	}
	s := r.sched()
	for k, res := range s.PutMany(ctx, batch) {
		i := ours[k]
		out[i] = res
		if _, stored := s.Peek(items[i].ID); res.Err != nil && claimed[i] && !stored {
			n.release(context.WithoutCancel(ctx), items[i].ID)
		}
	}
	return out
}

// claimMany claims the ownership of ids nobody owns, in one transaction
// when none is owned. errs says for each id whether this node owns it now
// (nil) or why not (a conflict naming its owner, or etcd unavailable);
// took whether this call claimed it.
func (n *Node) claimMany(ids []string) (errs []error, took []bool) {
	errs, took = make([]error, len(ids)), make([]bool, len(ids))
	todo := make([]int, len(ids))
	for k := range ids {
		todo[k] = k
	}
	for attempt := 0; len(todo) > 0 && attempt < claimAttempts; attempt++ {
		cmps := make([]clientv3.Cmp, len(todo))
		puts := make([]clientv3.Op, len(todo))
		gets := make([]clientv3.Op, len(todo))
		for k, i := range todo {
			key := n.key(keyOwners, ids[i])
			cmps[k] = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
			puts[k] = clientv3.OpPut(key, n.cfg.Name)
			gets[k] = clientv3.OpGet(key)
		}
		octx, done := n.op("claim")
		resp, err := n.etcd.Txn(octx).If(cmps...).Then(puts...).Else(gets...).Commit()
		done()
		if err != nil {
			for _, i := range todo {
				errs[i] = unavailable("etcd did not answer: the ownership of %s cannot be recorded: %v", ids[i], err)
			}
			return errs, took
		}
		if resp.Succeeded {
			for _, i := range todo {
				n.cat.setOwner(ids[i], n.cfg.Name, resp.Header.Revision)
				took[i] = true
			}
			return errs, took
		}
		// some were owned: those are their owners' (or already this
		// node's); the others are claimed again without them
		var again []int
		for k, i := range todo {
			kvs := resp.Responses[k].GetResponseRange().Kvs
			if len(kvs) == 0 {
				again = append(again, i)
				continue
			}
			owner := string(kvs[0].Value)
			n.cat.setOwner(ids[i], owner, kvs[0].ModRevision)
			if owner != n.cfg.Name {
				errs[i] = conflict(owner, ids[i])
			}
		}
		todo = again
	}
	for _, i := range todo {
		errs[i] = unavailable("the ownership of %s changed while it was claimed; retry", ids[i])
	}
	return errs, took
}
