package actors

import (
	"sync"
	"testing"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// invokeLog is a MessageInvoker that records what it is handed; onUser, if
// set, runs inside each user message's handling.
type invokeLog struct {
	mu        sync.Mutex
	user, sys []any
	failures  []any // the reasons escalated
	onUser    func(msg any)
}

func (r *invokeLog) InvokeSystemMessage(msg any) {
	r.mu.Lock()
	r.sys = append(r.sys, msg)
	r.mu.Unlock()
}

func (r *invokeLog) InvokeUserMessage(msg any) {
	r.mu.Lock()
	r.user = append(r.user, msg)
	r.mu.Unlock()
	if r.onUser != nil {
		r.onUser(msg)
	}
}

func (r *invokeLog) EscalateFailure(reason, _ any) {
	r.mu.Lock()
	r.failures = append(r.failures, reason)
	r.mu.Unlock()
}

func newTestMailbox(r *invokeLog) *mailbox {
	m := newMailbox(nil)
	m.RegisterHandlers(r, actor.NewSynchronizedDispatcher(actorThroughput))
	return m
}

func TestMailboxKeepsEachSendersOrder(t *testing.T) {
	r := &invokeLog{}
	m := newTestMailbox(r)
	const senders, each = 8, 2000
	var wg sync.WaitGroup
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				m.PostUserMessage([2]int{s, i})
			}
		}()
	}
	wg.Wait()
	require.Len(t, r.user, senders*each, "every message once")
	next := make([]int, senders)
	for _, msg := range r.user {
		v := msg.([2]int)
		require.Equal(t, next[v[0]], v[1], "sender %d's messages in order", v[0])
		next[v[0]]++
	}
	assert.Zero(t, m.UserMessageCount())
}

func TestMailboxRunsSystemMessagesFirstAndHoldsUserOnesWhileSuspended(t *testing.T) {
	r := &invokeLog{}
	m := newTestMailbox(r)
	r.onUser = func(msg any) {
		if msg == "first" {
			// posted while the mailbox is busy: queued, then system first
			m.PostUserMessage("second")
			m.PostSystemMessage("sys")
		}
	}
	m.PostUserMessage("first")
	assert.Equal(t, []any{"first", "second"}, r.user)
	assert.Equal(t, []any{"sys"}, r.sys)

	m.PostSystemMessage(&actor.SuspendMailbox{})
	m.PostUserMessage("held")
	m.PostSystemMessage("sys while suspended")
	assert.Equal(t, []any{"first", "second"}, r.user, "held while suspended")
	assert.Equal(t, []any{"sys", "sys while suspended"}, r.sys, "system messages go on")
	assert.Equal(t, 1, m.UserMessageCount())
	m.PostSystemMessage(&actor.ResumeMailbox{})
	assert.Equal(t, []any{"first", "second", "held"}, r.user)
	assert.Len(t, r.sys, 2, "suspend and resume are the mailbox's own")
}

func TestMailboxEscalatesAPanicAndGoesOn(t *testing.T) {
	r := &invokeLog{}
	m := newTestMailbox(r)
	r.onUser = func(msg any) {
		switch msg {
		case "boom":
			m.PostUserMessage("after")
			panic("actor bug")
		}
	}
	m.PostUserMessage("boom")
	assert.Equal(t, []any{"actor bug"}, r.failures)
	assert.Equal(t, []any{"boom", "after"}, r.user, "the queue is processed on")
	m.PostUserMessage("later")
	assert.Equal(t, []any{"boom", "after", "later"}, r.user, "and the mailbox is idle again, not stuck running")
}

func TestMailboxDoesNotKeepABurstsBuffer(t *testing.T) {
	r := &invokeLog{}
	m := newTestMailbox(r)
	const burst = 1000
	r.onUser = func(msg any) {
		if msg == "start" {
			for i := range burst {
				m.PostUserMessage(i)
			}
		}
	}
	m.PostUserMessage("start")
	require.Len(t, r.user, burst+1)
	assert.LessOrEqual(t, cap(m.user), maxKept, "an idle mailbox keeps a small buffer")
	assert.Zero(t, m.head)

	// a queue that is never emptied holds about what is queued, not all
	// it ever had: 100 queued, one posted for each taken, 100 000 times
	r.user, r.onUser = nil, nil
	n, longest := 0, 0
	r.onUser = func(any) {
		if n++; n < 100*burst {
			m.PostUserMessage(n)
		}
		longest = max(longest, len(m.user))
	}
	m.mu.Lock()
	m.running = true // hold processing while the backlog is queued
	m.mu.Unlock()
	for i := range 100 {
		m.PostUserMessage(i)
	}
	m.processMessages()
	assert.Len(t, r.user, 100+100*burst-1)
	assert.LessOrEqual(t, longest, 2*100+maxKept, "compacted as it goes")
}

func TestMailboxWakeSendsAWake(t *testing.T) {
	r := &invokeLog{}
	m := newTestMailbox(r)
	m.Wake()
	assert.Equal(t, []any{wakeMsg}, r.user)
}
