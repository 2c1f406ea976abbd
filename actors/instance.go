package actors

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vigilhq/vigil/clock"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/probes"
)

// tokens tags probe results process-wide, so a result of an aborted probe
// or of a previous incarnation of an actor never matches what the current
// one expects. Timer messages are checked against the actor's own due times
// instead: a stale one finds nothing due and does nothing.
var tokens atomic.Uint64

// Messages to an instance actor.
type (
	configure struct{ inst *health.Instance } // reply *Info; the entry's spec
	getInfo   struct{ history bool }          // reply *Info
	probeNow  struct{}                        // reply *probeNowReply
	handoff   struct{}                        // reply *Snapshot; the actor stops probing for good
	// recheck: look at the restart rules again (a hold ended); when
	// silenceEnded, an instance still unhealthy is notified once
	recheck struct{ silenceEnded bool }
	// restartDelivered: the VM manager took restart attempt n
	restartDelivered struct{ attempt int }
	wake             struct{} // the actor's timer fired: a probe or a checkpoint may be due
	probeDone        struct {
		token  uint64
		result health.Result
		// how long the probe waited between its hand-off and its start (a
		// worker, a budget slot), measured on the monotonic clock
		waited time.Duration
	}
)

// wakeMsg carries nothing, so every timer sends the same value.
var wakeMsg = &wake{}

type probeNowReply struct {
	result health.Result
	info   Info
}

// errRestarted answers requests that were waiting on an incarnation that
// failed.
var errRestarted = errors.New("actors: instance actor restarted; try again")

// instanceActor owns one instance. Every field is touched only in Receive.
// The fields a timer's wake reads come first, on the first cache lines: an
// actor is cold by the time its next probe is due, and each line it touches
// is a miss.
type instanceActor struct {
	s *Scheduler
	e *entry

	// one timer for the actor's lifetime, reset to the earlier of the due
	// probe and the due checkpoint; every due time is a reading of the
	// monotonic clock, so a step of the wall clock moves none of them
	timer      clock.Timer
	timerAt    time.Duration // when the timer fires, while timerOn
	due        time.Duration // when the pending or running probe was due
	ckptDue    time.Duration
	actDue     time.Duration // a restart decision or the end of flapping is due
	timerOn    bool          // the timer is set, for timerAt
	armed      bool          // a probe is scheduled at due
	ckptArmed  bool          // a checkpoint is scheduled at ckptDue
	actArmed   bool          // something is due at actDue
	steady     bool          // the window has reached steady cadence once
	dirty      bool          // state changed since the last snapshot
	material   bool          // and beyond the evidence: restart bookkeeping, flapping
	probeToken uint64
	run        *probeRun     // the probe in flight, to abort it
	late       time.Duration // how long after its due time the probe in flight was started
	prober     probes.Prober
	inst       *health.Instance // the applied spec; shared with the entry, never mutated
	nextCheck  time.Time
	waiters    []*actor.PID
	handoffTo  *actor.PID // waits for the probe in flight to hand the actor over

	cfg   health.Config
	saved health.Progress // progress in the last snapshot
	st    health.State
}

func (a *instanceActor) Receive(ctx actor.Context) {
	if a.e == nil {
		// not started, or its entry is gone: answer requests, drop the rest
		if _, ok := ctx.Message().(*actor.Started); ok {
			a.start(ctx)
		} else if ctx.Sender() != nil {
			ctx.Respond(ErrNotFound)
		}
		return
	}
	switch m := ctx.Message().(type) {
	case *configure:
		a.configure(ctx, m.inst)
		ctx.Respond(a.info(false))
	case *getInfo:
		ctx.Respond(a.info(m.history))
	case *wake:
		a.timerOn = false
		if a.ckptArmed && a.reached(a.ckptDue) {
			a.ckptArmed = false
			if a.dirty {
				a.save()
			}
		}
		if a.actArmed && a.reached(a.actDue) {
			a.actArmed = false
			a.act(ctx, false)
		}
		if a.armed && a.reached(a.due) {
			a.armed = false
			// the probe's end resets the timer
			a.startProbe(ctx)
		} else {
			a.rearm(ctx)
		}
	case *recheck:
		a.act(ctx, m.silenceEnded)
		a.publish()
	case *restartDelivered:
		if r := a.st.Restart; r != nil && r.Pending && r.Attempts == m.attempt {
			r.Pending = false
			a.dirty, a.material = true, true
			a.armCheckpoint(ctx, a.s.opt.checkpoint)
		}
	case *probeDone:
		if m.token == a.probeToken && m.token != 0 {
			a.finishProbe(ctx, m.result, m.waited)
		}
	case *probeNow:
		a.probeNow(ctx)
	case *handoff:
		if a.probeToken != 0 && a.runs() {
			// the probe in flight finishes first: the target saw it, and
			// the next node must not probe sooner than this one would have
			a.handoffTo = ctx.Sender()
			a.stopTimer(ctx)
			return
		}
		ctx.Respond(a.handOff())
	case *actor.Restarting:
		a.halt(errRestarted)
		a.closeProber()
	case *actor.Stopping:
		a.halt(ErrNotFound)
		a.closeProber()
		if a.dirty && (!a.s.leanStop.Load() || a.material || a.st.Progress(a.cfg.Policy) != a.saved) {
			a.save()
		}
	}
}

// now reads both clocks: the wall clock for what is shown and stored, the
// monotonic one for every duration.
func (a *instanceActor) now() health.Instant {
	c := a.s.opt.clock
	return health.Instant{Wall: c.Now(), Mono: c.Mono()}
}

// start loads the instance: on a fresh registration it opens the first
// window; after a restart or at boot it resumes from the last snapshot.
func (a *instanceActor) start(ctx actor.Context) {
	// every incarnation finds its registry entry by its name (the actors
	// share one Props), and there the mailbox its spawn recorded
	if a.e = a.s.entryOf(ctx.Self()); a.e == nil || a.e.mailbox == nil {
		a.e = nil
		ctx.Stop(ctx.Self())
		return
	}
	a.inst = a.e.spec.Load()
	a.cfg = health.ConfigOf(*a.inst)
	a.buildProber()
	snap := a.e.boot
	a.e.boot = nil
	if snap == nil {
		if s, err := a.s.opt.store.Snapshot(a.inst.ID); err == nil {
			snap = s
		}
	}
	now := a.now()
	if snap == nil {
		tr, changed, fresh := a.st.Configure(health.Config{}, a.cfg, now)
		a.afterChange(ctx, tr, changed, fresh, true)
		return
	}
	// resume: reconcile the snapshot with the spec that is durable now
	a.st = snap.State
	a.st.Restored() // its times are wall times to this actor's clock
	a.saved = a.st.Progress(snap.Policy)
	tr, changed, fresh := a.st.Configure(snap.Config(), a.cfg, now)
	if fresh || changed {
		a.afterChange(ctx, tr, changed, fresh, true)
		return
	}
	a.steady = a.st.Status != health.StatusStarting
	switch {
	case !a.runs():
	case a.e.handoff:
		// handed over by another node: its next probe is where the other
		// node would have run it, so the target sees its own cadence (the
		// stored wall time's distance, read once)
		a.e.handoff = false
		a.schedule(ctx, max(snap.NextCheckAt.Sub(now.Wall), 0))
	default:
		// spread resumed probes over one interval rather than firing together
		delay := health.Phase(a.inst.ID, health.NextDelay(a.cfg.Policy, a.st.Status))
		if !snap.NextCheckAt.IsZero() && snap.NextCheckAt.After(now.Wall) {
			delay = min(delay, snap.NextCheckAt.Sub(now.Wall))
		}
		a.schedule(ctx, delay)
	}
	if a.st.Restarts().Pending && a.inst.RestartPolicy != nil && a.s.opt.restarter != nil {
		a.sendRestart() // recorded before a crash, perhaps never delivered
	}
	if a.acts() {
		a.act(ctx, false)
	}
	a.publish()
}

func (a *instanceActor) runs() bool { return a.cfg.Policy.Enabled() && a.cfg.Lifecycle.Active() }

func (a *instanceActor) buildProber() {
	a.closeProber()
	a.prober = nil
	if !a.cfg.Policy.Enabled() {
		return
	}
	p, err := a.s.opt.factory(*a.inst)
	if err != nil {
		// no prober could be built: every probe fails with why
		msg := err.Error()
		p = probes.Func(func(context.Context) health.Result {
			return health.Result{Outcome: health.Failure, Reason: health.ReasonUnsupported, Message: msg}
		})
	}
	a.prober = p
}

// closeProber releases what the prober pools (an exec probe's connection to
// the guest agent); a prober that pools nothing is left alone.
func (a *instanceActor) closeProber() {
	if c, ok := a.prober.(io.Closer); ok {
		_ = c.Close()
	}
}

// configure applies a new durable spec.
func (a *instanceActor) configure(ctx actor.Context, in *health.Instance) {
	prev, prevInst := a.cfg, a.inst
	a.inst, a.cfg = in, health.ConfigOf(*in)
	now := a.now()
	tr, changed, fresh := a.st.Configure(prev, a.cfg, now)
	policyChanged := !prev.Policy.Equal(a.cfg.Policy)
	targetChanged := !prevInst.SameTarget(*in)
	newStart := !in.StartTime().Equal(prevInst.StartTime())
	if policyChanged || !reflect.DeepEqual(in.RestartPolicy, prevInst.RestartPolicy) ||
		newStart && a.st.Restarts().Blocked == health.BlockedMaxAttempts {
		// what restarts it changed, or the VM was started again after
		// restarts stopped at their limit: the attempts count from nothing
		// (a restart vigil asked for changes started_at too, and counts):
		// none is held until the rules step again
		a.st.Restart = nil
	}
	if policyChanged || targetChanged {
		a.buildProber()
	} else if prev.Lifecycle != a.cfg.Lifecycle || fresh {
		// a stopped, restored or rebooted guest has a new agent: reconnect
		a.closeProber()
	}
	if targetChanged && !fresh && a.runs() {
		// keep the counters, but a probe of the old address proves nothing
		a.abortProbe()
		a.stopTimer(ctx)
		a.schedule(ctx, 0)
	}
	a.afterChange(ctx, tr, changed, fresh, policyChanged || targetChanged || prev.Lifecycle != a.cfg.Lifecycle)
}

// afterChange acts on a configuration change: reschedules, persists and
// publishes.
func (a *instanceActor) afterChange(ctx actor.Context, tr health.Transition, changed, fresh, persist bool) {
	switch {
	case !a.runs():
		a.abortProbe()
		a.stopTimer(ctx)
		a.nextCheck = time.Time{}
		a.failWaiters(nil)
	case fresh:
		a.abortProbe()
		a.stopTimer(ctx)
		a.steady = false
		a.schedule(ctx, 0)
	case !a.armed && a.probeToken == 0:
		a.schedule(ctx, 0)
	}
	if changed {
		a.transition(tr)
	} else if persist || fresh {
		a.save()
	}
	if a.acts() {
		a.act(ctx, false)
	} else if a.actArmed {
		a.actArmed = false
		a.rearm(ctx)
	}
	a.publish()
}

// acts reports whether acting on health has anything to look at for this
// instance: a restart policy, or flapping to see end.
func (a *instanceActor) acts() bool { return a.inst.RestartPolicy != nil || a.st.Flapping() }

func (a *instanceActor) snapshot() *Snapshot {
	return &Snapshot{Version: SnapshotVersion, ID: a.inst.ID, Lifecycle: a.cfg.Lifecycle, StartedAt: a.cfg.StartedAt,
		Policy: a.cfg.Policy, State: a.st.Clone(), NextCheckAt: a.nextCheck}
}

// stored records that the snapshot about to be written holds the state as
// it is now: nothing is dirty, and its progress is the saved one.
func (a *instanceActor) stored() {
	a.dirty, a.material = false, false
	a.saved = a.st.Progress(a.cfg.Policy)
}

func (a *instanceActor) save() {
	a.stored()
	a.s.opt.store.SaveSnapshot(a.snapshot())
}

// transition makes the transition durable, then publishes it. A change of
// the workload's health feeds the flapping detector and the node's incident
// detector; the event carries the instance's labels and what it was folded
// into, for notifiers.
func (a *instanceActor) transition(tr health.Transition) {
	now := a.now()
	ev := Event{InstanceID: a.inst.ID, Transition: tr, Labels: a.inst.Labels}
	flapStarted := false
	if tr.Reason.Counts() && a.runs() {
		flapStarted = a.st.FlapChange(now, a.flapWindow())
		ev.Flapping = a.st.Flapping()
	}
	ev.Silenced = a.s.silenced(a.inst, now.Wall)
	if tr.To == health.StatusUnhealthy || tr.From == health.StatusUnhealthy {
		ev.Incident = a.s.observeIncident(a.inst.ID, tr, now)
	}
	a.stored()
	a.s.append(a.snapshot(), ev)
	if flapStarted {
		a.s.append(nil, Event{InstanceID: a.inst.ID, Kind: KindFlapping, Transition: tr, Labels: a.inst.Labels,
			Silenced: ev.Silenced, Incident: ev.Incident})
	}
}

// flapWindow is the instance's flapping window.
func (a *instanceActor) flapWindow() time.Duration {
	if a.cfg.Policy == nil {
		return 0
	}
	return health.FlapWindow(a.cfg.Policy.Interval)
}

// held says why restarts of this instance hold now, if they do.
func (a *instanceActor) held(now health.Instant) string {
	switch {
	case a.st.Flapping():
		return health.BlockedFlapping
	case a.s.silenced(a.inst, now.Wall):
		return health.BlockedSilenced
	case a.st.Status == health.StatusUnhealthy && a.s.incidentOpen():
		return health.BlockedIncident
	}
	return ""
}

// act steps what acting on health needs after a change or at its due
// time: the end of flapping (one event with the status then), the restart
// rules (an attempt is made durable before it is sent), and, when a silence
// ended, one notification of an instance still unhealthy.
func (a *instanceActor) act(ctx actor.Context, silenceEnded bool) {
	now := a.now()
	var wake health.Instant
	if a.st.FlapSettle(now, a.flapWindow()) {
		a.dirty, a.material = true, true
		a.s.append(nil, Event{InstanceID: a.inst.ID, Kind: KindFlappingEnded, Labels: a.inst.Labels,
			Transition: health.Transition{From: a.st.Status, To: a.st.Status, At: now.Wall}, Silenced: a.s.silenced(a.inst, now.Wall)})
	} else if at := a.st.FlapSteadyAt(now, a.flapWindow()); !at.IsZero() {
		wake = at
	}
	if silenceEnded && a.st.Status == health.StatusUnhealthy && !a.s.silenced(a.inst, now.Wall) {
		a.s.append(nil, Event{InstanceID: a.inst.ID, Kind: KindSilenceEnded, Labels: a.inst.Labels,
			Transition: health.Transition{From: a.st.Status, To: a.st.Status, At: now.Wall, LastError: a.st.LastError}})
	}
	if rp := a.inst.RestartPolicy; rp != nil && a.runs() && a.s.opt.restarter != nil {
		before := a.st.Restarts()
		last, _ := a.st.History.Last()
		attempt, next := a.st.RestartToChange().Decide(rp, health.RestartInput{Status: a.st.Status, Since: a.st.StatusSince(), Now: now,
			Held: a.held(now), HoldDown: a.s.opt.holdDown, HeldUntil: a.s.incidentClosedAt(), Reason: last.Reason, LastError: a.st.LastError})
		if attempt {
			a.sendRestart()
		} else if *a.st.Restart != before {
			a.dirty, a.material = true, true
			a.armCheckpoint(ctx, a.s.opt.checkpoint)
		}
		if !next.IsZero() && (wake.IsZero() || next.Mono < wake.Mono) {
			wake = next
		}
	}
	a.actArmed, a.actDue = !wake.IsZero(), wake.Mono
	a.rearm(ctx)
}

// sendRestart makes the attempt recorded in the state durable, then hands
// it to the restarter; the restarter's word that the VM manager took it
// clears it. An attempt found recorded at start is sent again, with the
// same number: at least once, never a new one.
func (a *instanceActor) sendRestart() {
	r := a.st.Restarts()
	rp := a.inst.RestartPolicy
	req := RestartRequest{Instance: a.inst.ID, Attempt: r.Attempts, URL: rp.URL, Reason: r.Reason, LastError: r.LastError}
	s, self := a.s, a.e.pid.Load()
	req.Done = func(delivered bool) {
		if delivered && self != nil {
			s.root.Send(self, &restartDelivered{attempt: req.Attempt})
		}
	}
	a.stored()
	a.s.opt.store.Persist(a.snapshot(), func() { s.opt.restarter.Restart(req) })
	a.s.log.Info().Str("instance_id", req.Instance).Int("attempt", req.Attempt).Str("reason", string(req.Reason)).Msg("restart_requested")
}

// handOff stops probing for good and returns the state to hand over, whose
// next check is the probe this actor would have run next.
func (a *instanceActor) handOff() *Snapshot {
	next := a.nextCheck
	a.halt(ErrNotFound)
	a.closeProber()
	a.nextCheck = next
	snap := a.snapshot()
	a.dirty, a.material = false, false
	a.e = nil // every later message is answered as for a gone instance
	return snap
}

// info renders what readers see.
func (a *instanceActor) info(history bool) *Info {
	info := &Info{Instance: *a.inst, Health: a.st.View(a.nextCheck, history)}
	if a.inst.RestartPolicy != nil {
		r := a.st.Restarts()
		info.Health.Restart = r.View()
	}
	return info
}

// publish makes the applied spec and the current status what list readers
// see, without allocating, and keeps the scheduler's status counts in step.
func (a *instanceActor) publish() {
	e := a.e
	brief := a.st.Brief(a.nextCheck)
	if a.inst.RestartPolicy != nil {
		brief = brief.WithRestart(a.st.Restarts())
	}
	e.pubMu.Lock()
	old := e.pub
	e.pub = published{spec: a.inst, brief: brief}
	e.pubMu.Unlock()
	switch {
	case old.spec == nil:
		a.s.count(brief.Status, +1)
	case old.brief.Status != brief.Status:
		a.s.count(old.brief.Status, -1)
		a.s.count(brief.Status, +1)
	}
}

// schedule arms the next probe d from now; next_check_at shows it on the
// wall clock.
func (a *instanceActor) schedule(ctx actor.Context, d time.Duration) {
	now := a.now()
	a.due = now.Mono + d
	a.nextCheck = now.Wall.Add(d)
	a.armed = true
	a.rearm(ctx)
}

// rearm sets the timer to the earliest of the due probe, the due
// checkpoint and what acting on health has due, or stops it when none is.
func (a *instanceActor) rearm(ctx actor.Context) {
	at, on := a.due, a.armed
	if a.ckptArmed && (!on || a.ckptDue < at) {
		at, on = a.ckptDue, true
	}
	if a.actArmed && (!on || a.actDue < at) {
		at, on = a.actDue, true
	}
	if on == a.timerOn && (!on || at == a.timerAt) {
		return
	}
	a.timerAt, a.timerOn = at, on
	switch {
	case !on:
		a.timer.Stop()
	case a.timer == nil:
		a.timer = a.s.opt.clock.AfterWake(at-a.s.opt.clock.Mono(), a.e.mailbox)
	default:
		a.timer.Reset(at - a.s.opt.clock.Mono())
	}
}

// reached reports whether a timer due at t (a monotonic reading) has come,
// allowing for the shared clock firing timers up to its slack early.
func (a *instanceActor) reached(t time.Duration) bool {
	return a.s.opt.clock.Mono() >= t-clock.Slack
}

// stopTimer cancels the due probe.
func (a *instanceActor) stopTimer(ctx actor.Context) {
	if a.armed {
		a.armed = false
		a.rearm(ctx)
	}
}

func (a *instanceActor) abortProbe() {
	if a.run != nil {
		a.run.abort()
		a.run = nil
	}
	a.probeToken = 0
}

// halt stops timers and the probe and answers every waiter with err.
func (a *instanceActor) halt(err error) {
	a.armed, a.ckptArmed, a.actArmed = false, false, false
	a.rearm(nil)
	a.abortProbe()
	a.failWaiters(err)
	if to := a.handoffTo; to != nil && err != nil {
		a.handoffTo = nil
		a.s.root.Send(to, err)
	}
}

func (a *instanceActor) failWaiters(err error) {
	if len(a.waiters) == 0 {
		return
	}
	var reply any = err
	if err == nil {
		reply = &probeNowReply{result: a.skipReason(), info: *a.info(false)}
	}
	for _, w := range a.waiters {
		a.s.root.Send(w, reply)
	}
	a.waiters = nil
}

func (a *instanceActor) skipReason() health.Result {
	r := health.Result{Outcome: health.Skipped, Reason: health.ReasonInactive, Start: a.s.opt.clock.Now(),
		Message: "instance is " + string(a.cfg.Lifecycle) + "; probes run only while Initializing or Running"}
	if !a.cfg.Policy.Enabled() {
		r.Reason, r.Message = health.ReasonDisabled, "instance has no health check"
	}
	return r
}

func (a *instanceActor) probeNow(ctx actor.Context) {
	if !a.runs() {
		ctx.Respond(&probeNowReply{result: a.skipReason(), info: *a.info(true)})
		return
	}
	a.waiters = append(a.waiters, ctx.Sender())
	if a.probeToken == 0 {
		a.stopTimer(ctx)
		a.due = a.s.opt.clock.Mono()
		a.startProbe(ctx)
	}
}

// startProbe runs one probe in its own goroutine. It waits for a slot of the
// host-wide budget (urgent when starting or failing) no longer than the
// probe's timeout; a probe that gets no slot in time is skipped.
func (a *instanceActor) startProbe(ctx actor.Context) {
	if a.probeToken != 0 || !a.runs() {
		return
	}
	token := tokens.Add(1)
	a.probeToken = token
	a.armed = false
	a.nextCheck = time.Time{}
	now := a.now()
	a.late = max(now.Mono-a.due, 0)
	// what the observer is told: the due time on the wall clock, as far
	// before the start as the probe is late
	job := probeJob{self: ctx.Self(), token: token, id: a.inst.ID, policy: a.cfg.Policy,
		prober: a.prober, due: now.Wall.Add(-a.late), late: a.late, start: now.Wall, startMono: now.Mono,
		urgent: a.st.Status == health.StatusStarting || a.st.ConsecutiveFailures > 0}
	if a.startInline(ctx, &job) {
		return
	}
	a.run = &probeRun{}
	job.run, job.handed = a.run, time.Now()
	if !a.s.workers.do(job) && job.rest != nil {
		job.rest(canceled) // closing: release what the started probe holds
		a.s.budget.release()
	}
}

// canceled is a context that has ended.
var canceled = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// startInline begins a probe whose prober can start without blocking (a TCP
// connect) on the actor's goroutine, when a budget slot is free at once. A
// probe that settles at once (a loopback handshake, a refusal) is applied
// right here: no worker, no message, no context. One still under way keeps
// its slot and continues on a worker (job.rest). It reports whether the
// probe finished.
func (a *instanceActor) startInline(ctx actor.Context, j *probeJob) bool {
	st, ok := j.prober.(probes.Starter)
	if !ok || !a.s.budget.tryAcquire(j.urgent) {
		return false
	}
	clk, ob := a.s.opt.clock, a.s.opt.observer
	a.s.late.observe(j.startMono, j.late)
	if ob != nil {
		ob.ProbeStarted(j.id, j.policy.Type, j.due, j.start)
	}
	var r health.Result
	if j.rest = startSafely(&r, a.s, j.id, st); j.rest != nil {
		return false
	}
	a.s.budget.release()
	r.Start = j.start
	r.Duration = health.Duration(clk.Mono() - j.startMono)
	if ob != nil {
		ob.ProbeFinished(j.id, j.policy.Type, r)
	}
	a.finishProbe(ctx, r, 0)
	return true
}

// startSafely starts a probe; a panic becomes a failed result.
func startSafely(r *health.Result, s *Scheduler, id string, st probes.Starter) (rest probes.Rest) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error().Str("instance_id", id).Str("panic", fmt.Sprint(v)).Bytes("stack", debug.Stack()).Msg("probe_panicked")
			*r = health.Result{Outcome: health.Failure, Reason: health.ReasonPanic, Message: fmt.Sprintf("probe panicked: %v", v)}
			rest = nil
		}
	}()
	*r, rest = st.Start()
	return rest
}

// runJob runs one probe on a worker and hands the result to its actor.
func (s *Scheduler) runJob(j probeJob) {
	done := &probeDone{token: j.token}
	done.waited = runProbe(&done.result, &j, s)
	s.root.Send(j.self, done)
}

// probeRun lets the actor abort a probe whose contexts its goroutine creates:
// the probe's context is a root, not the child of a per-probe cancel context,
// which saves three allocations a probe.
type probeRun struct {
	mu      sync.Mutex
	cancel  context.CancelFunc // of the context in use, once there is one
	aborted bool
}

func (r *probeRun) abort() {
	r.mu.Lock()
	r.aborted = true
	cancel := r.cancel
	r.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// context returns a context with the timeout that the actor can abort, or
// nil if it already did.
func (r *probeRun) context(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.aborted {
		cancel()
		return nil, nil
	}
	r.cancel = cancel
	return ctx, cancel
}

func (r *probeRun) isAborted() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.aborted
}

// runProbe runs one probe into r: the probeDone message that carries the
// result to the actor is its only allocation.
// It returns how long the probe waited after handed before it started.
func runProbe(r *health.Result, j *probeJob, s *Scheduler) time.Duration {
	clk, p, run := s.opt.clock, j.policy, j.run
	var waited time.Duration
	start, startMono := j.start, j.startMono
	if j.rest == nil {
		ok := s.budget.tryAcquire(j.urgent) // the common case needs no waiting context
		if !ok {
			if wait, cancelWait := run.context(p.Timeout); wait != nil {
				ok = s.budget.acquire(wait, j.urgent)
				cancelWait()
			}
		}
		if ok && run.isAborted() {
			s.budget.release()
			ok = false
		}
		if !ok {
			if run.isAborted() {
				*r = health.Result{Outcome: health.Skipped, Reason: health.ReasonCanceled, Start: clk.Now()}
				return 0
			}
			// not started at all: as late as a probe can be
			s.late.observe(clk.Mono(), max(j.late+time.Since(j.handed), BehindLate+1))
			*r = health.Result{Outcome: health.Skipped, Reason: health.ReasonBudgetFull, Start: clk.Now(),
				Message: fmt.Sprintf("probe budget full: no slot within %s", p.Timeout)}
			return 0
		}
		waited = time.Since(j.handed)
		start, startMono = clk.Now(), clk.Mono()
		s.late.observe(startMono, j.late+max(waited-s.opt.waitFloor, 0))
		if ob := s.opt.observer; ob != nil {
			ob.ProbeStarted(j.id, p.Type, j.due, start)
		}
	}
	// a probe started on the actor's goroutine has what is left of its timeout
	switch pctx, cancel := run.context(p.Timeout - (clk.Mono() - startMono)); {
	case pctx == nil:
		*r = health.Result{Outcome: health.Skipped, Reason: health.ReasonCanceled}
		if j.rest != nil {
			j.rest(canceled)
		}
	default:
		probeSafely(r, s, j.id, j.prober, j.rest, pctx)
		if r.Outcome == health.Failure && errors.Is(pctx.Err(), context.DeadlineExceeded) && r.Reason != health.ReasonTimeout {
			r.Reason = health.ReasonTimeout
		}
		cancel()
	}
	s.budget.release()
	r.Start = start
	r.Duration = health.Duration(clk.Mono() - startMono)
	if ob := s.opt.observer; ob != nil {
		ob.ProbeFinished(j.id, p.Type, *r)
	}
	return waited
}

// probeSafely runs the prober, or the rest of a started probe; a panic
// becomes a failed result.
func probeSafely(r *health.Result, s *Scheduler, id string, prober probes.Prober, rest probes.Rest, ctx context.Context) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error().Str("instance_id", id).Str("panic", fmt.Sprint(v)).Bytes("stack", debug.Stack()).Msg("probe_panicked")
			*r = health.Result{Outcome: health.Failure, Reason: health.ReasonPanic, Message: fmt.Sprintf("probe panicked: %v", v)}
		}
	}()
	if rest != nil {
		*r = rest(ctx)
		return
	}
	*r = prober.Probe(ctx)
}

// finishProbe applies a probe result of the current window.
func (a *instanceActor) finishProbe(ctx actor.Context, r health.Result, waited time.Duration) {
	a.probeToken = 0
	a.run = nil
	now := a.now()
	tr, changed := a.st.Observe(a.cfg, &r, now)
	a.st.FlapForget(now, a.flapWindow())
	if ev := a.s.log.Debug(); ev.Enabled() {
		ev.Str("instance_id", a.inst.ID).Str("outcome", string(r.Outcome)).Str("reason", string(r.Reason)).
			Dur("duration", time.Duration(r.Duration)).Str("status", string(a.st.Status)).Msg("probe_finished")
	}
	delay := health.NextDelay(a.cfg.Policy, a.st.Status)
	if !a.steady && a.st.Status != health.StatusStarting {
		// first steady pause of the window: shorten it by a per-id part of
		// the interval, so instances spread evenly over it however they
		// were registered (in bursts, all at once)
		a.steady = true
		delay -= health.Phase(a.inst.ID, delay)
	}
	if late := a.late + max(waited-a.s.opt.waitFloor, 0); r.Outcome != health.Skipped && late > 0 {
		// the host started this probe late (a stall, a burst): the instance
		// keeps its own cadence instead of taking the stall's, so instances
		// delayed together do not stay bunched and delayed together again
		delay -= min(late, delay/2)
	}
	a.schedule(ctx, delay)
	if changed {
		a.transition(tr)
	}
	if a.acts() {
		a.act(ctx, false)
	}
	if !changed {
		// progress is checkpointed within the checkpoint interval; evidence
		// alone (times, history, counters past their thresholds) within the
		// refresh interval, so a steady fleet writes a twentieth as much
		a.dirty = true
		wait := a.s.opt.checkpoint * refreshFactor
		if a.st.Progress(a.cfg.Policy) != a.saved {
			wait = a.s.opt.checkpoint
		}
		a.armCheckpoint(ctx, wait)
	}
	a.publish()
	if len(a.waiters) > 0 {
		reply := &probeNowReply{result: r, info: *a.info(true)}
		for _, w := range a.waiters {
			ctx.Send(w, reply)
		}
		a.waiters = nil
	}
	if to := a.handoffTo; to != nil {
		a.handoffTo = nil
		ctx.Send(to, a.handOff())
	}
}

// refreshFactor stretches the checkpoint interval for changes that are
// evidence only.
const refreshFactor = 20

// armCheckpoint makes sure a checkpoint fires within wait.
func (a *instanceActor) armCheckpoint(ctx actor.Context, wait time.Duration) {
	due := a.s.opt.clock.Mono() + wait
	if a.ckptArmed && a.ckptDue <= due {
		return
	}
	a.ckptArmed, a.ckptDue = true, due
	a.rearm(ctx)
}
