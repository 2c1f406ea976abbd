package fleet

import (
	"encoding/json"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// publisher ships this node's status changes to etcd (status/<id>), so that
// the other nodes know the last status of every instance, even of a node
// that dies. It is edge-triggered: a transition queues the instance's new
// status, the newest per instance wins, and one goroutine writes them,
// each guarded by the owner key so that a node that no longer owns an
// instance never overwrites its status. It never blocks the scheduler, and
// while etcd is away the newest statuses wait for it.
type publisher struct {
	n       *Node
	mu      sync.Mutex
	pending map[string]statusRecord
	wake    chan struct{}
}

// publishBatch bounds the writes of one round.
const publishBatch = 256

func newPublisher(n *Node) *publisher {
	return &publisher{n: n, pending: map[string]statusRecord{}, wake: make(chan struct{}, 1)}
}

// Transitioned queues a durable transition of this node (actors.Observer).
func (p *publisher) Transitioned(ev actors.Event) {
	if ev.Kind == "" {
		p.publish(ev.InstanceID, ev.To, ev.At)
	}
}

func (p *publisher) ProbeStarted(string, health.Type, time.Time, time.Time) {}

func (p *publisher) ProbeFinished(string, health.Type, health.Result) {}

func (p *publisher) publish(id string, st health.Status, since time.Time) {
	p.mu.Lock()
	p.pending[id] = statusRecord{Status: st, Since: since.UTC()}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *publisher) run() {
	defer p.n.wg.Done()
	retry := time.NewTicker(time.Second)
	defer retry.Stop()
	for {
		select {
		case <-p.n.ctx.Done():
			return
		case <-p.wake:
		case <-retry.C:
		}
		p.flush()
	}
}

// flush writes what is pending; what fails stays pending unless something
// newer arrived meanwhile.
func (p *publisher) flush() {
	for {
		p.mu.Lock()
		batch := make(map[string]statusRecord, min(len(p.pending), publishBatch))
		for id, s := range p.pending {
			if len(batch) == publishBatch {
				break
			}
			batch[id] = s
			delete(p.pending, id)
		}
		p.mu.Unlock()
		if len(batch) == 0 {
			return
		}
		var failed map[string]statusRecord
		var wg sync.WaitGroup
		var fmu sync.Mutex
		sem := make(chan struct{}, 16)
		for id, s := range batch {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if !p.write(id, s) {
					fmu.Lock()
					if failed == nil {
						failed = map[string]statusRecord{}
					}
					failed[id] = s
					fmu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(failed) > 0 {
			p.mu.Lock()
			for id, s := range failed {
				if _, newer := p.pending[id]; !newer {
					p.pending[id] = s
				}
			}
			p.mu.Unlock()
			return // etcd is struggling: the next round retries
		}
	}
}

// write stores one status if this node still owns the instance; it reports
// false when etcd did not answer.
func (p *publisher) write(id string, s statusRecord) bool {
	n := p.n
	if sched := n.sched.Load(); sched != nil {
		if info, ok := sched.Peek(id); ok {
			s.Labels = info.Labels
		}
	}
	b, _ := json.Marshal(s)
	owner := n.key(keyOwners, id)
	ctx, done := n.op("publish")
	defer done()
	_, err := n.etcd.Txn(ctx).If(clientv3.Compare(clientv3.Value(owner), "=", n.cfg.Name)).
		Then(clientv3.OpPut(n.key(keyStatus, id), string(b))).Commit()
	return err == nil
}
