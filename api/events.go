package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// Event stream tuning.
const (
	eventPage      = 512              // events read from the log at a time
	eventWriteTime = 30 * time.Second // a client that takes longer for one write is dropped
)

// stream is one client's event stream: where it is in the log and what it
// wants.
type stream struct {
	c        echo.Context
	rc       *http.ResponseController
	instance string
	cursor   uint64 // last sequence number sent or skipped
}

// events serves GET /v1/events: the retained log from the asked-for position,
// then live transitions. Live events come through a bounded subscription;
// when the client falls behind it the subscription is dropped and the stream
// catches up from the log again, so the actors never wait for a client.
func (h *handlers) events(c echo.Context) error {
	instance := c.QueryParam("instance_id")
	if instance != "" {
		var fe *health.FieldError
		if err := health.ValidateID(instance); errors.As(err, &fe) {
			return invalid("instance_id", "instance_id %s", fe.Message)
		}
	}
	fleet, err := h.scope(c)
	if err != nil {
		return err
	}
	if c.Request().Method == http.MethodHead {
		c.Response().Header().Set(echo.HeaderContentType, "text/event-stream")
		return c.NoContent(http.StatusOK)
	}
	if fleet {
		return h.fleetEvents(c)
	}
	since, resume, err := position(c)
	if err != nil {
		return err
	}
	select {
	case h.streams <- struct{}{}:
		defer func() { <-h.streams }()
	default:
		c.Response().Header().Set("Retry-After", "5")
		return fail(http.StatusServiceUnavailable, "unavailable", fmt.Sprintf("too many event streams (at most %d)", cap(h.streams)), "")
	}
	if m := h.opt.Metrics; m != nil {
		m.streams.Inc()
		defer m.streams.Dec()
	}
	sub := h.reg.Subscribe(h.opt.EventBuffer) // before reading the log, so nothing falls between
	defer func() { sub.Close() }()
	last := h.reg.LastSeq()
	if !resume {
		since = last
	}

	w := c.Response()
	w.Header().Set(echo.HeaderContentType, "text/event-stream")
	w.Header().Set(echo.HeaderCacheControl, "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	s := &stream{c: c, rc: http.NewResponseController(w), instance: instance, cursor: since}
	if since > last {
		// a position this log never reached: the client knows another history
		if err := s.reset(since, last+1); err != nil {
			return nil
		}
		s.cursor = last
	}
	if err := s.comment("stream from seq " + strconv.FormatUint(s.cursor, 10)); err != nil {
		return nil
	}

	ctx := c.Request().Context()
	keepAlive := time.NewTicker(h.opt.KeepAlive)
	defer keepAlive.Stop()
	for {
		if err := s.catchUp(h.reg); err != nil {
			h.opt.Log.Debug().Err(err).Msg("event_stream_ended")
			return nil
		}
	live:
		for {
			select {
			case ev, ok := <-sub.C:
				if !ok {
					if !errors.Is(sub.Err(), actors.ErrLagged) {
						return nil // the scheduler is closing
					}
					if m := h.opt.Metrics; m != nil {
						m.catchUps.Inc()
					}
					sub = h.reg.Subscribe(h.opt.EventBuffer)
					break live // catch up from the log
				}
				if ev.Seq <= s.cursor {
					continue
				}
				if ev.Seq != s.cursor+1 {
					break live // a gap: the log has what is missing
				}
				if err := s.send(ev); err != nil {
					return nil
				}
			case <-keepAlive.C:
				if err := s.comment("keepalive"); err != nil {
					return nil
				}
			case <-ctx.Done():
				return nil
			case <-h.opt.Shutdown:
				return nil
			}
		}
	}
}

// fleetEvents serves GET /v1/events?scope=fleet: every node's transitions,
// each with its node, and node_down/node_up; the id of each event is an
// opaque cursor of every node's position.
func (h *handlers) fleetEvents(c echo.Context) error {
	cursor := c.Request().Header.Get("Last-Event-ID")
	if cursor == "" {
		cursor = c.QueryParam("since")
	}
	select {
	case h.streams <- struct{}{}:
		defer func() { <-h.streams }()
	default:
		c.Response().Header().Set("Retry-After", "5")
		return fail(http.StatusServiceUnavailable, "unavailable", fmt.Sprintf("too many event streams (at most %d)", cap(h.streams)), "")
	}
	ctx, cancel := context.WithCancel(c.Request().Context())
	defer cancel()
	go func() {
		select {
		case <-h.opt.Shutdown:
			cancel()
		case <-ctx.Done():
		}
	}()
	w := c.Response()
	s := &stream{c: c, rc: http.NewResponseController(w)}
	started := false
	err := h.fleet.FleetEvents(ctx, cursor, h.opt.KeepAlive, func(id, event string, data any) error {
		if !started {
			started = true
			w.Header().Set(echo.HeaderContentType, "text/event-stream")
			w.Header().Set(echo.HeaderCacheControl, "no-cache")
			w.Header().Set("X-Accel-Buffering", "no")
			w.WriteHeader(http.StatusOK)
		}
		if event == "" {
			return s.comment(fmt.Sprint(data))
		}
		b, err := json.Marshal(data)
		if err != nil {
			return err
		}
		return s.write(fmt.Sprintf("id: %s\nevent: %s\ndata: %s\n\n", id, event, b))
	})
	if err != nil && !started {
		return err
	}
	return nil
}

// position reads the resume point: Last-Event-ID or ?since=. resume is false
// when neither is given (the stream starts at the newest event).
func position(c echo.Context) (since uint64, resume bool, err error) {
	for _, src := range []struct{ field, v string }{
		{"Last-Event-ID", c.Request().Header.Get("Last-Event-ID")},
		{"since", c.QueryParam("since")},
	} {
		if src.v == "" {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(src.v), 10, 64)
		if err != nil {
			return 0, false, invalid(src.field, "%s must be a sequence number", src.field)
		}
		return n, true, nil
	}
	return 0, false, nil
}

// catchUp sends every retained event after the cursor.
func (s *stream) catchUp(reg Registry) error {
	for {
		evs, oldest, err := reg.Events(s.cursor, eventPage)
		if err != nil {
			return err
		}
		if oldest > s.cursor+1 {
			if err := s.reset(s.cursor, oldest); err != nil {
				return err
			}
			s.cursor = oldest - 1
			continue
		}
		for _, ev := range evs {
			if err := s.send(ev); err != nil {
				return err
			}
		}
		if len(evs) < eventPage {
			return nil
		}
	}
}

// reset tells the client that events after asked were not retained (or never
// existed): it should list instances again and follow from here.
func (s *stream) reset(asked, oldest uint64) error {
	b, _ := json.Marshal(map[string]uint64{"requested_seq": asked, "oldest_seq": oldest})
	return s.write(fmt.Sprintf("event: reset\ndata: %s\n\n", b))
}

func (s *stream) send(ev actors.Event) error {
	s.cursor = ev.Seq
	if s.instance != "" && ev.InstanceID != s.instance {
		return nil
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	return s.write(fmt.Sprintf("id: %d\nevent: %s\ndata: %s\n\n", ev.Seq, ev.Name(), b))
}

func (s *stream) comment(text string) error { return s.write(": " + text + "\n\n") }

// write sends one SSE frame under a write deadline, so a client that stopped
// reading cannot hold the stream forever.
func (s *stream) write(frame string) error {
	_ = s.rc.SetWriteDeadline(time.Now().Add(eventWriteTime))
	if _, err := s.c.Response().Write([]byte(frame)); err != nil {
		return err
	}
	return s.rc.Flush()
}
