package fleet

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"time"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/fleet/peer"
)

// eventsPage is how many events one request for a node's log carries.
const eventsPage = 256

// eventsBody is the body of an answer to peer.Events.
type eventsBody struct {
	Events []actors.Event `json:"events"`
	Oldest uint64         `json:"oldest"`
	Last   uint64         `json:"last"`
}

// localEvents reads this node's log after a position, waiting up to wait
// for the first event when there is none yet (a long poll).
func (n *Node) localEvents(ctx context.Context, sched *actors.Scheduler, after uint64, limit int, wait time.Duration) (eventsBody, error) {
	limit = min(max(limit, 1), eventsPage)
	if after == math.MaxUint64 {
		last := sched.LastSeq()
		_, oldest, err := sched.Events(last, 1)
		return eventsBody{Events: []actors.Event{}, Oldest: oldest, Last: last}, err
	}
	var sub *actors.Subscription
	for {
		evs, oldest, err := sched.Events(after, limit)
		if err != nil || len(evs) > 0 || wait <= 0 {
			if sub != nil {
				sub.Close()
			}
			if evs == nil {
				evs = []actors.Event{}
			}
			return eventsBody{Events: evs, Oldest: oldest, Last: sched.LastSeq()}, err
		}
		if sub == nil {
			sub = sched.Subscribe(16) // then read the log again: nothing falls between
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-sub.C:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		wait = 0
	}
}

// Cursor of the fleet's event stream: each node's last sequence number.
type fleetCursor map[string]uint64

func (c fleetCursor) encode() string {
	b, _ := json.Marshal(map[string]uint64(c))
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeCursor reads a cursor this server issued; "0" replays what every
// node retains.
func decodeCursor(s string) (fleetCursor, bool, error) {
	switch s {
	case "":
		return fleetCursor{}, false, nil
	case "0":
		return fleetCursor{}, true, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	var c fleetCursor
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err == nil && c == nil {
		// JSON null: the stream writes every node's position into c
		err = errors.New("no position")
	}
	if err != nil {
		return nil, false, invalidField("Last-Event-ID", "Last-Event-ID is not a position this fleet's stream issued: pass the id of the last event as it came")
	}
	for name := range c {
		if ValidName(name) != nil {
			return nil, false, invalidField("Last-Event-ID", "Last-Event-ID is not a position this fleet's stream issued")
		}
	}
	return c, true, nil
}

// nodeEvent is one node's part of the stream.
type nodeEvent struct {
	node  string
	ev    *actors.Event
	reset *resetBody
}

type resetBody struct {
	Node         string `json:"node"`
	RequestedSeq uint64 `json:"requested_seq"`
	OldestSeq    uint64 `json:"oldest_seq"`
}

// FleetEvents serves the fleet's event stream: every node's transitions,
// each with its node, and node_down and node_up as nodes go and come. The
// id of each event is a cursor of every node's position; given back as
// Last-Event-ID it resumes each node's log where the stream left it (a
// node's part that is no longer retained starts with a reset). send writes
// one frame; an empty event is a comment. It returns when ctx ends or send
// fails.
func (r *Registry) FleetEvents(ctx context.Context, cursor string, keepAlive time.Duration,
	send func(id, event string, data any) error) error {
	n := r.n
	pos, resume, err := decodeCursor(cursor)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := make(chan nodeEvent, 64)
	started := map[string]bool{}
	members, changed := n.cat.membersNow()
	up := map[string]bool{}
	start := func(name string) {
		if started[name] {
			return
		}
		started[name] = true
		from, known := pos[name]
		go n.followNode(ctx, name, from, known || resume, out)
	}
	for _, m := range members {
		up[m.Name] = m.up
		start(m.Name)
	}
	if err := send("", "", "fleet stream"); err != nil {
		return nil
	}
	for _, m := range members {
		if !m.up {
			if err := send(pos.encode(), "node_down", map[string]any{"node": m.Name, "at": m.since.UTC()}); err != nil {
				return nil
			}
		}
	}
	ticker := time.NewTicker(keepAlive)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
			if err := send("", "", "keepalive"); err != nil {
				return nil
			}
		case <-changed:
			var now []member
			now, changed = n.cat.membersNow()
			for _, m := range now {
				was, seen := up[m.Name]
				up[m.Name] = m.up
				start(m.Name)
				if seen && was == m.up {
					continue
				}
				kind := "node_up"
				if !m.up {
					kind = "node_down"
				}
				if err := send(pos.encode(), kind, map[string]any{"node": m.Name, "at": m.since.UTC()}); err != nil {
					return nil
				}
			}
		case ne := <-out:
			if ne.reset != nil {
				pos[ne.node] = ne.reset.OldestSeq - 1
				if err := send(pos.encode(), "reset", ne.reset); err != nil {
					return nil
				}
				continue
			}
			if ne.ev.Seq <= pos[ne.node] && pos[ne.node] != 0 {
				continue
			}
			pos[ne.node] = ne.ev.Seq
			ev := *ne.ev
			ev.Node = ne.node
			if err := send(pos.encode(), ev.Name(), ev); err != nil {
				return nil
			}
		}
	}
}

// followNode feeds one node's log into out from a position (or from its
// newest event when there is none), pausing while the node is down.
func (n *Node) followNode(ctx context.Context, name string, after uint64, known bool, out chan<- nodeEvent) {
	if !known {
		after = math.MaxUint64 // from the node's newest event on
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		var body eventsBody
		var err error
		if name == n.cfg.Name {
			body, err = n.localEvents(ctx, n.sched.Load(), after, eventsPage, time.Second)
		} else if !n.cat.isUp(name) {
			err = errNodeDown
		} else {
			wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err = n.call(wctx, name, "events", &peer.Events{After: after, Limit: eventsPage, WaitMs: 1000}, &body)
			cancel()
		}
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if after == math.MaxUint64 {
			after = body.Last
			continue
		}
		if body.Oldest > after+1 {
			select {
			case out <- nodeEvent{node: name, reset: &resetBody{Node: name, RequestedSeq: after, OldestSeq: body.Oldest}}:
			case <-ctx.Done():
				return
			}
			after = body.Oldest - 1
		}
		for i := range body.Events {
			ev := body.Events[i]
			select {
			case out <- nodeEvent{node: name, ev: &ev}:
			case <-ctx.Done():
				return
			}
			after = ev.Seq
		}
	}
}

var errNodeDown = errors.New("fleet: node is down")
