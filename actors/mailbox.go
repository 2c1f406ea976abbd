package actors

import (
	"runtime"
	"sync"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vigilhq/vigil/clock"
)

// mailbox is an instance actor's mailbox, with protoactor's semantics
// (system messages before user ones, user messages held while suspended, a
// yield every throughput messages, a panic escalated to the supervisor) and
// a different layout: one object, its queues slices that keep their
// capacity, the first two user messages stored in the mailbox itself.
// protoactor's lock-free mailbox is three objects (the mailbox and a queue
// for each kind of message) and allocates a node per message; for an actor
// woken once an interval each is a cache miss, and the node garbage.
//
// It processes on the goroutine whose post finds it idle, as protoactor's
// synchronized dispatcher would (the instance actors' handlers never
// block), and is its actor's timer's Waker: a timer reaches the mailbox
// directly, not through a closure and the actor's process.
//
// Concurrency contract: posts may come from any goroutine; one goroutine at
// a time processes.
type mailbox struct {
	mu        sync.Mutex
	running   bool
	suspended bool
	head      int   // of user
	user      []any // queued user messages from head; backed by inline while it fits
	sys       []any
	inline    [2]any

	s          *Scheduler
	invoker    actor.MessageInvoker
	throughput int // the dispatcher's
}

var (
	_ actor.Mailbox = (*mailbox)(nil)
	_ clock.Waker   = (*mailbox)(nil)
)

func newMailbox(s *Scheduler) *mailbox {
	m := &mailbox{s: s}
	m.user = m.inline[:0]
	return m
}

// RegisterHandlers is called as the actor is spawned, before its first
// message: the mailbox records itself in the instance's registry entry,
// where every incarnation of the actor finds it.
func (m *mailbox) RegisterHandlers(invoker actor.MessageInvoker, dispatcher actor.Dispatcher) {
	m.invoker, m.throughput = invoker, dispatcher.Throughput()
	if c, ok := invoker.(interface{ Self() *actor.PID }); ok && m.s != nil {
		if e := m.s.entryOf(c.Self()); e != nil {
			e.mailbox = m
		}
	}
}

// Wake posts a wake message: the actor's timer fired.
func (m *mailbox) Wake() { m.PostUserMessage(wakeMsg) }

func (m *mailbox) Start() {}

func (m *mailbox) UserMessageCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.user) - m.head
}

func (m *mailbox) PostUserMessage(msg any) {
	m.mu.Lock()
	m.user = append(m.user, msg)
	m.scheduleLocked()
}

func (m *mailbox) PostSystemMessage(msg any) {
	m.mu.Lock()
	m.sys = append(m.sys, msg)
	m.scheduleLocked()
}

// scheduleLocked processes unless that is under way; it unlocks mu.
func (m *mailbox) scheduleLocked() {
	if m.running {
		m.mu.Unlock()
		return
	}
	m.running = true
	m.mu.Unlock()
	m.processMessages()
}

// next takes the message to process: system messages first, user messages
// unless suspended. It reports false, and marks the mailbox idle, when
// there is none.
func (m *mailbox) next() (msg any, system, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.sys) > 0 {
		msg = m.sys[0]
		m.sys[0] = nil
		if m.sys = m.sys[1:]; len(m.sys) == 0 {
			m.sys = nil // rare: a lifecycle's worth, not kept
		}
		return msg, true, true
	}
	if !m.suspended && m.head < len(m.user) {
		msg = m.user[m.head]
		m.user[m.head] = nil
		if m.head++; m.head == len(m.user) {
			m.head = 0
			m.user = m.user[:0]
			if cap(m.user) > maxKept {
				m.user = m.inline[:0] // a burst's buffer is not kept
			}
		} else if m.head >= maxKept && 2*m.head >= len(m.user) {
			// never emptied: move what is left to the front, so a busy
			// actor's queue holds what is queued, not all it ever had
			n := copy(m.user, m.user[m.head:])
			clear(m.user[n:])
			m.user, m.head = m.user[:n], 0
		}
		return msg, false, true
	}
	m.running = false
	return nil, false, false
}

// maxKept bounds the user queue's capacity an idle mailbox keeps.
const maxKept = 16

func (m *mailbox) processMessages() {
	throughput := m.throughput
	for n := 1; ; n++ {
		msg, system, ok := m.next()
		if !ok {
			return
		}
		if n > throughput {
			n = 0
			runtime.Gosched()
		}
		if system {
			m.invokeSystem(msg)
		} else {
			m.invoke(msg)
		}
	}
}

func (m *mailbox) invokeSystem(msg any) {
	switch msg.(type) {
	case *actor.SuspendMailbox:
		m.setSuspended(true)
	case *actor.ResumeMailbox:
		m.setSuspended(false)
	default:
		defer m.escalate(msg)
		m.invoker.InvokeSystemMessage(msg)
	}
}

func (m *mailbox) setSuspended(s bool) {
	m.mu.Lock()
	m.suspended = s
	m.mu.Unlock()
}

func (m *mailbox) invoke(msg any) {
	defer m.escalate(msg)
	m.invoker.InvokeUserMessage(msg)
}

// escalate hands a panic in the actor to its supervisor (which suspends the
// mailbox and restarts the actor); processing goes on with what is queued.
func (m *mailbox) escalate(msg any) {
	if r := recover(); r != nil {
		m.invoker.EscalateFailure(r, msg)
	}
}
