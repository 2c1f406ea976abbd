// Package actors is vigil's actor system and its public embedding API.
//
// A Scheduler owns a protoactor-go actor system with one parent actor that
// supervises one child actor per instance. The instance actor owns the
// instance's spec, policy, timers, counters and start-period clock; its fields
// are touched only inside Receive. A probe never runs on the mailbox: it runs
// in its own goroutine with a copy of what it needs and sends its result back
// tagged with a process-wide token; a result or timer tick whose token is not
// the one the actor expects (an older window, an aborted probe, a previous
// incarnation) is dropped.
//
// Readers do not queue on mailboxes for lists and summaries: every actor
// publishes an immutable Info (atomic pointer) after each change. Detailed
// reads (with history) and probe-now go to the actor by request/response.
//
// Durability goes through the Store interface defined here: specs are written
// (synced) before a change is acknowledged, transitions are made durable
// before they are published to subscribers, and every other change of runtime
// state is handed to the store as a coalescable snapshot.
//
// Concurrency contract: every exported method of Scheduler and Subscription
// is safe for concurrent use.
package actors
