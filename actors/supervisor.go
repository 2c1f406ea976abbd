package actors

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"
)

// restartStrategy restarts a failed instance actor after a capped exponential
// delay (0 for the first failure, then base, 2×base, … up to max) and stops it
// once it has failed more than limit times within window. protoactor's own
// backoff strategy is linear, uncapped and never gives up.
type restartStrategy struct {
	base, max time.Duration
	limit     int
	window    time.Duration
	log       zerolog.Logger
	stopped   func(child *actor.PID)
}

var _ actor.SupervisorStrategy = (*restartStrategy)(nil)

// delay is the pause before restart number n (1-based).
func (s *restartStrategy) delay(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	d := s.base
	for i := 2; i < n && d < s.max; i++ {
		d *= 2
	}
	return min(d, s.max)
}

func (s *restartStrategy) HandleFailure(_ *actor.ActorSystem, sup actor.Supervisor, child *actor.PID, rs *actor.RestartStatistics, reason, _ any) {
	if rs.NumberOfFailures(s.window) == 0 {
		rs.Reset()
	}
	rs.Fail()
	n := rs.NumberOfFailures(s.window)
	if n > s.limit {
		s.log.Error().Str("instance_id", child.Id).Str("reason", fmt.Sprint(reason)).Int("failures", n).
			Msg("instance_actor_gave_up")
		sup.StopChildren(child)
		if s.stopped != nil {
			s.stopped(child)
		}
		return
	}
	d := s.delay(n)
	s.log.Warn().Str("instance_id", child.Id).Str("reason", fmt.Sprint(reason)).Int("failures", n).
		Dur("delay", d).Msg("instance_actor_restarting")
	if d == 0 {
		sup.RestartChildren(child)
		return
	}
	time.AfterFunc(d, func() { sup.RestartChildren(child) })
}

// Slog is a log/slog logger that writes into log as vigil's other lines
// are written: for protoactor's actor systems (this one, and a fleet's).
func Slog(log zerolog.Logger) *slog.Logger {
	return slog.New(eventHandler{zerolog.NewSlogHandler(log.With().Str("component", "protoactor").Logger())})
}

// eventHandler keeps protoactor's log lines in vigil's one message style: the
// message is the event protoactor_log, and protoactor's own text its detail.
type eventHandler struct{ slog.Handler }

func (h eventHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, "protoactor_log", r.PC)
	out.AddAttrs(slog.String("detail", r.Message))
	r.Attrs(func(a slog.Attr) bool { out.AddAttrs(a); return true })
	return h.Handler.Handle(ctx, out)
}

func (h eventHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return eventHandler{h.Handler.WithAttrs(attrs)}
}

func (h eventHandler) WithGroup(name string) slog.Handler {
	return eventHandler{h.Handler.WithGroup(name)}
}
