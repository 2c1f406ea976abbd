package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/proto"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/fleet/peer"
)

// gatewayName is the name of the actor every node serves other nodes'
// requests with.
const gatewayName = "gateway"

// gateway receives other nodes' requests. Its mailbox only hands each one
// to a goroutine, which answers the asking node's future when the work is
// done: a probe-now or a long-poll for events never holds up the others.
type gateway struct{ n *Node }

func (g *gateway) Receive(ctx actor.Context) {
	msg, ok := ctx.Message().(proto.Message)
	sender := ctx.Sender()
	if !ok || sender == nil {
		return
	}
	switch msg.(type) {
	case *peer.Get, *peer.GetMany, *peer.Patch, *peer.Delete, *peer.Probe, *peer.Move, *peer.Stage, *peer.Unstage, *peer.Events:
	default:
		return
	}
	go func() {
		reply := g.n.serve(msg)
		g.n.root.Send(sender, reply)
	}()
}

// deadlineOf is the deadline a request carries.
func deadlineOf(msg proto.Message) time.Time {
	var ns int64
	switch m := msg.(type) {
	case *peer.Get:
		ns = m.DeadlineUnixNano
	case *peer.GetMany:
		ns = m.DeadlineUnixNano
	case *peer.Patch:
		ns = m.DeadlineUnixNano
	case *peer.Delete:
		ns = m.DeadlineUnixNano
	case *peer.Probe:
		ns = m.DeadlineUnixNano
	case *peer.Move:
		ns = m.DeadlineUnixNano
	case *peer.Stage:
		ns = m.DeadlineUnixNano
	case *peer.Unstage:
		ns = m.DeadlineUnixNano
	case *peer.Events:
		ns = m.DeadlineUnixNano
	}
	if ns == 0 {
		return time.Now().Add(DefaultPeerWait)
	}
	return time.Unix(0, ns)
}

// serve answers one request of another node from this node's scheduler.
func (n *Node) serve(msg proto.Message) *peer.Reply {
	ctx, cancel := context.WithDeadline(n.ctx, deadlineOf(msg))
	defer cancel()
	if ctx.Err() != nil {
		return &peer.Reply{Error: toWire(unavailable("the request's deadline passed before it arrived"))}
	}
	sched := n.sched.Load()
	if sched == nil {
		return &peer.Reply{Error: toWire(unavailable("node %s is starting", n.cfg.Name))}
	}
	var body any
	var err error
	switch m := msg.(type) {
	case *peer.Get:
		var info actors.Info
		info, err = sched.Get(ctx, m.Id)
		if !m.History {
			info.Health.History = nil
		}
		info.Node = n.cfg.Name
		body = info
	case *peer.GetMany:
		infos := make([]actors.Info, 0, len(m.Ids))
		for _, id := range m.Ids {
			if info, ok := sched.Peek(id); ok {
				info.Node = n.cfg.Name
				infos = append(infos, info)
			}
		}
		body = infos
	case *peer.Patch:
		var info actors.Info
		info, err = sched.Patch(ctx, m.Id, m.Patch)
		info.Node = n.cfg.Name
		body = info
	case *peer.Delete:
		err = n.removeLocal(ctx, m.Id)
	case *peer.Probe:
		r, info, perr := sched.ProbeNow(ctx, m.Id)
		err, body = perr, probeBody{Result: r, Health: info.Health}
	case *peer.Move:
		var info actors.Info
		info, err = n.moveLocal(ctx, m.Id, m.To)
		body = info
	case *peer.Stage:
		err = n.stage(ctx, m)
	case *peer.Unstage:
		err = n.unstage(ctx, m.Id)
	case *peer.Events:
		body, err = n.localEvents(ctx, sched, m.After, int(m.Limit), time.Duration(m.WaitMs)*time.Millisecond)
	}
	if err != nil {
		return &peer.Reply{Error: toWire(err)}
	}
	if body == nil {
		return &peer.Reply{}
	}
	b, err := json.Marshal(body)
	if err != nil {
		return &peer.Reply{Error: toWire(err)}
	}
	return &peer.Reply{Body: b}
}

// probeBody is the body of a probe-now answer.
type probeBody struct {
	Result any `json:"result"`
	Health any `json:"health_status"`
}

// ask sends a request to another node's gateway and waits for its reply no
// longer than the context allows (DefaultPeerWait at most). A node that is
// down is not asked.
func (n *Node) ask(ctx context.Context, node, op string, msg proto.Message) (*peer.Reply, error) {
	m, ok := n.cat.member(node)
	if !ok {
		return nil, unavailable("no node named %s in the fleet", node)
	}
	if !m.up {
		return nil, &Error{Status: 503, Code: NodeReason, Owner: node, Message: "node " + node + " is down"}
	}
	n.unreachableMu.Lock()
	until, dropped := n.unreachable[m.Peer]
	n.unreachableMu.Unlock()
	if dropped && time.Now().Before(until) {
		return nil, &Error{Status: 503, Code: Unreachable, Owner: node, Message: "node " + node + " is unreachable: its connection dropped"}
	}
	timeout := DefaultPeerWait
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	if op == "probe" || op == "events" || op == "move" {
		if dl, ok := ctx.Deadline(); ok {
			timeout = time.Until(dl)
		}
	}
	if timeout <= 0 {
		return nil, context.DeadlineExceeded
	}
	setDeadline(msg, time.Now().Add(timeout))
	began := time.Now()
	res, err := n.root.RequestFuture(actor.NewPID(m.Peer, gatewayName), msg, timeout).Result()
	outcome := "ok"
	defer func() { n.metrics.forwarded.WithLabelValues(op, outcome).Observe(time.Since(began).Seconds()) }()
	if err != nil {
		outcome = "unanswered"
		if errors.Is(err, actor.ErrTimeout) {
			return nil, unavailable("node %s did not answer within %s", node, timeout.Round(time.Millisecond))
		}
		return nil, unavailable("node %s did not answer: %v", node, err)
	}
	reply, ok := res.(*peer.Reply)
	if !ok {
		outcome = "unanswered"
		return nil, unavailable("node %s answered %T", node, res)
	}
	if reply.Error != nil {
		outcome = reply.Error.Code
	}
	return reply, nil
}

func setDeadline(msg proto.Message, dl time.Time) {
	ns := dl.UnixNano()
	switch m := msg.(type) {
	case *peer.Get:
		m.DeadlineUnixNano = ns
	case *peer.GetMany:
		m.DeadlineUnixNano = ns
	case *peer.Patch:
		m.DeadlineUnixNano = ns
	case *peer.Delete:
		m.DeadlineUnixNano = ns
	case *peer.Probe:
		m.DeadlineUnixNano = ns
	case *peer.Move:
		m.DeadlineUnixNano = ns
	case *peer.Stage:
		m.DeadlineUnixNano = ns
	case *peer.Unstage:
		m.DeadlineUnixNano = ns
	case *peer.Events:
		m.DeadlineUnixNano = ns
	}
}

// call asks another node and decodes the body into out (when not nil).
func (n *Node) call(ctx context.Context, node, op string, msg proto.Message, out any) error {
	reply, err := n.ask(ctx, node, op, msg)
	if err != nil {
		return err
	}
	if reply.Error != nil {
		return fromWire(reply.Error)
	}
	if out != nil && len(reply.Body) > 0 {
		if err := json.Unmarshal(reply.Body, out); err != nil {
			return unavailable("node %s answered what this node cannot read: %v", node, err)
		}
	}
	return nil
}
