package api

import (
	"context"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/vigilhq/vigil/act"
	"github.com/vigilhq/vigil/health"
)

// Notifiers is what the API needs of the notifiers (*act.Notifiers).
type Notifiers interface {
	Put(ctx context.Context, name string, spec act.NotifierSpec) (act.NotifierView, bool, error)
	Get(name string) (act.NotifierView, bool)
	List() []act.NotifierView
	Delete(ctx context.Context, name string) error
}

// Silences is what the API needs of the silences (*act.Silences).
type Silences interface {
	Create(ctx context.Context, s act.Silence) (act.Silence, error)
	List() []act.Silence
	Delete(ctx context.Context, id string) error
}

// incidents is what a Registry has when it knows its node's incidents.
type incidents interface {
	Incidents() []health.Incident
}

func notEnabled(what string) error {
	return fail(http.StatusNotFound, "not_found", what+" are not enabled on this vigil", "")
}

func (h *handlers) putNotifier(c echo.Context) error {
	if h.opt.Notifiers == nil {
		return notEnabled("notifiers")
	}
	var spec act.NotifierSpec
	if err := decode(c, &spec); err != nil {
		return err
	}
	v, created, err := h.opt.Notifiers.Put(c.Request().Context(), c.Param("name"), spec)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	return c.JSON(status, v)
}

func (h *handlers) getNotifier(c echo.Context) error {
	if h.opt.Notifiers == nil {
		return notEnabled("notifiers")
	}
	v, ok := h.opt.Notifiers.Get(c.Param("name"))
	if !ok {
		return fail(http.StatusNotFound, "not_found", "no such notifier", "")
	}
	return c.JSON(http.StatusOK, v)
}

func (h *handlers) listNotifiers(c echo.Context) error {
	if h.opt.Notifiers == nil {
		return notEnabled("notifiers")
	}
	return c.JSON(http.StatusOK, map[string]any{"notifiers": h.opt.Notifiers.List()})
}

func (h *handlers) deleteNotifier(c echo.Context) error {
	if h.opt.Notifiers == nil {
		return notEnabled("notifiers")
	}
	if err := h.opt.Notifiers.Delete(c.Request().Context(), c.Param("name")); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

func (h *handlers) createSilence(c echo.Context) error {
	if h.opt.Silences == nil {
		return notEnabled("silences")
	}
	var s act.Silence
	if err := decode(c, &s); err != nil {
		return err
	}
	if s.ID != "" || !s.Created.IsZero() {
		return invalid("id", "id and created_at are given by vigil")
	}
	out, err := h.opt.Silences.Create(c.Request().Context(), s)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, out)
}

func (h *handlers) listSilences(c echo.Context) error {
	if h.opt.Silences == nil {
		return notEnabled("silences")
	}
	list := h.opt.Silences.List()
	if list == nil {
		list = []act.Silence{}
	}
	return c.JSON(http.StatusOK, map[string]any{"silences": list})
}

func (h *handlers) deleteSilence(c echo.Context) error {
	if h.opt.Silences == nil {
		return notEnabled("silences")
	}
	if err := h.opt.Silences.Delete(c.Request().Context(), c.Param("id")); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

func (h *handlers) listIncidents(c echo.Context) error {
	inc, ok := h.reg.(incidents)
	if !ok {
		return notEnabled("incidents")
	}
	list := inc.Incidents()
	if list == nil {
		list = []health.Incident{}
	}
	return c.JSON(http.StatusOK, map[string]any{"incidents": list})
}
