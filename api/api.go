// Package api is vigil's HTTP layer (echo) over the actor system. It defines
// the Registry it needs; *actors.Scheduler implements it.
//
// This is the first slice of API.md: instance create/replace, read, delete,
// list, summary, probe-now, /healthz and /readyz, with the JSON error format.
// Handlers hold no state of their own; every call goes to the Registry.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"
	"github.com/rs/zerolog"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/actors/health"
)

// MaxBody is the largest request body accepted.
const MaxBody = 1 << 20

// Registry is what the API needs of the actor system.
type Registry interface {
	Put(ctx context.Context, id string, spec health.InstanceSpec) (actors.Info, bool, error)
	Get(ctx context.Context, id string) (actors.Info, error)
	Remove(ctx context.Context, id string) error
	List(statuses []health.Status, cursor string, limit int) ([]actors.Info, string)
	Summary() map[health.Status]int
	ProbeNow(ctx context.Context, id string) (health.Result, actors.Info, error)
	Ready() bool
}

// ErrorBody is the JSON shape of every error.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail names what went wrong and, for invalid input, the field.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

type apiError struct {
	status int
	detail ErrorDetail
}

func (e *apiError) Error() string { return e.detail.Message }

func fail(status int, code, msg, field string) error {
	return &apiError{status: status, detail: ErrorDetail{Code: code, Message: msg, Field: field}}
}

// New builds the echo server over reg.
func New(reg Registry, log zerolog.Logger) *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = errorHandler(log)
	e.Use(recoverJSON(log), requestLog(log))
	h := &handlers{reg: reg}
	e.GET("/healthz", func(c echo.Context) error { return c.JSON(http.StatusOK, map[string]string{"status": "ok"}) })
	e.GET("/readyz", h.ready)
	e.PUT("/v1/instances/:id", h.put)
	e.GET("/v1/instances/:id", h.get)
	e.DELETE("/v1/instances/:id", h.remove)
	e.GET("/v1/instances/:id/health", h.health)
	e.POST("/v1/instances/:id/probe", h.probe)
	e.GET("/v1/instances", h.list)
	e.GET("/v1/summary", h.summary)
	return e
}

type handlers struct{ reg Registry }

func (h *handlers) ready(c echo.Context) error {
	if !h.reg.Ready() {
		return fail(http.StatusServiceUnavailable, "unavailable", "not every stored instance has its actor", "")
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
}

// decode reads a JSON body strictly: size, content type, unknown fields.
func decode(c echo.Context, v any) error {
	ct := c.Request().Header.Get(echo.HeaderContentType)
	if ct != "" && !strings.HasPrefix(ct, echo.MIMEApplicationJSON) {
		return fail(http.StatusUnsupportedMediaType, "unsupported_media_type", "body must be application/json", "")
	}
	body, err := io.ReadAll(io.LimitReader(c.Request().Body, MaxBody+1))
	if err != nil {
		return fail(http.StatusBadRequest, "invalid_request", "reading body: "+err.Error(), "")
	}
	if len(body) > MaxBody {
		return fail(http.StatusRequestEntityTooLarge, "too_large", "body is over 1 MiB", "")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fail(http.StatusBadRequest, "invalid_request", fmt.Sprintf("%s must be of type %s", te.Field, te.Type), te.Field)
		}
		if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field ") {
			field := strings.Trim(strings.TrimPrefix(msg, "json: unknown field "), `"`)
			return fail(http.StatusBadRequest, "invalid_request", "unknown field "+field, field)
		}
		return fail(http.StatusBadRequest, "invalid_request", "malformed JSON: "+err.Error(), "")
	}
	if dec.More() {
		return fail(http.StatusBadRequest, "invalid_request", "malformed JSON: trailing data after the object", "")
	}
	return nil
}

func (h *handlers) put(c echo.Context) error {
	var spec health.InstanceSpec
	if err := decode(c, &spec); err != nil {
		return err
	}
	info, created, err := h.reg.Put(c.Request().Context(), c.Param("id"), spec)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	return c.JSON(status, info)
}

func (h *handlers) get(c echo.Context) error {
	info, err := h.reg.Get(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	info.Health.History = nil
	return c.JSON(http.StatusOK, info)
}

func (h *handlers) health(c echo.Context) error {
	info, err := h.reg.Get(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, info.Health)
}

func (h *handlers) remove(c echo.Context) error {
	if err := h.reg.Remove(c.Request().Context(), c.Param("id")); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

func (h *handlers) probe(c echo.Context) error {
	r, info, err := h.reg.ProbeNow(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"result": r, "health_status": info.Health})
}

func (h *handlers) list(c echo.Context) error {
	limit := 100
	if v := c.QueryParam("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return fail(http.StatusBadRequest, "invalid_request", "limit must be between 1 and 1000", "limit")
		}
		limit = n
	}
	var statuses []health.Status
	if v := c.QueryParam("status"); v != "" {
		for _, s := range strings.Split(v, ",") {
			st := health.Status(strings.TrimSpace(s))
			if !st.Valid() {
				return fail(http.StatusBadRequest, "invalid_request", fmt.Sprintf("status %q is not one of disabled, unknown, starting, healthy, unhealthy", s), "status")
			}
			statuses = append(statuses, st)
		}
	}
	page, next := h.reg.List(statuses, c.QueryParam("cursor"), limit)
	if page == nil {
		page = []actors.Info{}
	}
	return c.JSON(http.StatusOK, map[string]any{"instances": page, "next_cursor": next})
}

func (h *handlers) summary(c echo.Context) error {
	out := map[string]int{}
	total := 0
	for st, n := range h.reg.Summary() {
		out[string(st)] = n
		total += n
	}
	out["total"] = total
	return c.JSON(http.StatusOK, out)
}

func errorHandler(log zerolog.Logger) echo.HTTPErrorHandler {
	return func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		status, detail := classify(err)
		if status >= 500 {
			log.Error().Err(err).Str("path", c.Request().URL.Path).Msg("request_failed")
		}
		_ = c.JSON(status, ErrorBody{Error: detail})
	}
}

func classify(err error) (int, ErrorDetail) {
	var ae *apiError
	var fe *health.FieldError
	var he *echo.HTTPError
	switch {
	case errors.As(err, &ae):
		return ae.status, ae.detail
	case errors.As(err, &fe):
		return http.StatusBadRequest, ErrorDetail{Code: "invalid_request", Message: fe.Error(), Field: fe.Field}
	case errors.Is(err, actors.ErrNotFound):
		return http.StatusNotFound, ErrorDetail{Code: "not_found", Message: "no such instance"}
	case errors.Is(err, actors.ErrUnavailable), errors.Is(err, actors.ErrClosed), errors.Is(err, actors.ErrActorStopped),
		errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, ErrorDetail{Code: "unavailable", Message: err.Error()}
	case errors.As(err, &he):
		switch he.Code {
		case http.StatusNotFound:
			return he.Code, ErrorDetail{Code: "not_found", Message: "no such route"}
		case http.StatusMethodNotAllowed:
			return he.Code, ErrorDetail{Code: "method_not_allowed", Message: "method not allowed"}
		}
		return he.Code, ErrorDetail{Code: "invalid_request", Message: fmt.Sprint(he.Message)}
	}
	return http.StatusInternalServerError, ErrorDetail{Code: "internal", Message: "internal error"}
}

func recoverJSON(log zerolog.Logger) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) (err error) {
			defer func() {
				if v := recover(); v != nil {
					log.Error().Str("panic", fmt.Sprint(v)).Str("path", c.Request().URL.Path).Msg("handler_panicked")
					err = fail(http.StatusInternalServerError, "internal", "internal error", "")
				}
			}()
			return next(c)
		}
	}
}

func requestLog(log zerolog.Logger) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			err := next(c)
			status := c.Response().Status
			if err != nil {
				status, _ = classify(err)
			}
			log.Debug().Str("method", c.Request().Method).Str("path", c.Request().URL.Path).Int("status", status).Msg("request")
			return err
		}
	}
}
