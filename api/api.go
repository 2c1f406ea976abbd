// Package api is vigil's HTTP layer (echo) over the actor system, as
// API.md describes it. It defines the Registry it needs; *actors.Scheduler
// implements it.
//
// Handlers hold no state of their own. List and summary read the values the
// actors publish; detailed reads and changes ask the instance's actor, and a
// semaphore caps how many such requests are in flight at once so a burst of
// API calls cannot stall probing. The event stream reads the durable event log
// and then follows live transitions; a slow client only ever slows itself.
//
// Concurrency contract: the returned *echo.Echo serves concurrent requests.
package api

import (
	"bytes"
	"cmp"
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/rs/zerolog"

	"github.com/vigilhq/vigil/act"
	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/input"
)

// MaxBody is the largest request body accepted.
const MaxBody = 1 << 20

// Defaults of Options.
const (
	DefaultMaxActorQueries = 256
	DefaultQueueWait       = time.Second
	DefaultKeepAlive       = 15 * time.Second
	DefaultEventBuffer     = 1024
	DefaultMaxStreams      = 256
	// DefaultBodyReadTimeout bounds reading a request's body: a client that
	// announces a body and sends less is cut off.
	DefaultBodyReadTimeout = 30 * time.Second
	// DefaultWriteTimeout bounds writing a response, from its first byte.
	DefaultWriteTimeout = 30 * time.Second
)

// Registry is what the API needs of the actor system.
type Registry interface {
	Put(ctx context.Context, id string, spec health.InstanceSpec) (actors.Info, bool, error)
	// Patch applies a JSON merge patch to the instance's spec as written.
	Patch(ctx context.Context, id string, patch []byte) (actors.Info, error)
	Get(ctx context.Context, id string) (actors.Info, error)
	Remove(ctx context.Context, id string) error
	List(f actors.Filter, cursor string, limit int) ([]actors.Info, string)
	Summary() map[health.Status]int
	InFlight() int
	ProbeNow(ctx context.Context, id string) (health.Result, actors.Info, error)
	Ready() bool
	Events(after uint64, limit int) ([]actors.Event, uint64, error)
	LastSeq() uint64
	Subscribe(buffer int) *actors.Subscription
}

// Fleet is what the API needs of a fleet of nodes, when its Registry is
// one node of a fleet: the fleet's nodes, moves, and the fleet-wide
// summary, list and event stream (scope=fleet). Bodies of Nodes and
// FleetSummary are rendered as they are.
type Fleet interface {
	Nodes(ctx context.Context) (any, error)
	Move(ctx context.Context, id, to string) (actors.Info, error)
	FleetSummary(ctx context.Context) (any, error)
	FleetList(ctx context.Context, f actors.Filter, after string, limit int) ([]actors.Info, string, error)
	// FleetEvents streams with send (an empty event is a comment) until ctx
	// ends or send fails; a bad cursor is an error before anything is sent.
	FleetEvents(ctx context.Context, cursor string, keepAlive time.Duration, send func(id, event string, data any) error) error
}

// Options configure the server. The zero value serves without auth or
// metrics, with the default limits.
type Options struct {
	Log zerolog.Logger
	// Token, when set, is required as "Authorization: Bearer <token>" on
	// every route but /healthz and /readyz.
	Token string
	// Metrics, when set, is served on /metrics and given the Registry's
	// gauges. One Metrics serves one server.
	Metrics *Metrics
	// MaxActorQueries caps requests that ask an instance's actor at once;
	// QueueWait is how long one waits for a slot before a 503.
	MaxActorQueries int
	QueueWait       time.Duration
	// KeepAlive is the interval of comments on an idle event stream.
	KeepAlive time.Duration
	// EventBuffer is how many live events a stream may fall behind by before
	// it drops its subscription and catches up from the log (default 1024).
	EventBuffer int
	// MaxStreams caps open event streams (default 256); more get a 503.
	MaxStreams int
	// MaxBatches caps batch registrations in progress at once (default
	// 4); one waits QueueWait for its turn, then gets a 503.
	MaxBatches int
	// MaxRequests caps the requests being worked on at once (default 4 a
	// CPU), every route but the event stream, probe-now (which waits on
	// its probe, not the CPU), the service's health, metrics and the
	// dashboard's files; one waits QueueWait for its turn, then gets a
	// 503. A flood of clients then waits, blocked, instead of running
	// beside the probes: the Go scheduler gives a runnable goroutine its
	// turn in order, so thousands of running handlers delay every timer.
	MaxRequests int
	// Behind, when set, reports whether probing runs behind its schedule
	// (actors.Scheduler.Behind). While it does, the requests MaxRequests
	// counts are worked on one at a time, the others waiting QueueWait
	// for their turn, then a 503: the probes' lateness, not a fixed cap,
	// says when the API must give way.
	Behind func() bool
	// giveWayMax is maxGiveWay unless a test sets it.
	giveWayMax time.Duration
	// BodyReadTimeout bounds reading a request body (default 30s) and
	// WriteTimeout writing a response (default 30s; not the event stream's).
	BodyReadTimeout time.Duration
	WriteTimeout    time.Duration
	// Notifiers and Silences, when set, are served under /v1/notifiers and
	// /v1/silences.
	Notifiers Notifiers
	Silences  Silences
	// Shutdown, when closed, ends every event stream (http.Server.Shutdown
	// waits for open requests, and a stream never ends on its own).
	Shutdown <-chan struct{}
	// UI, when set, serves the dashboard's static files under /ui/ (the
	// ui package), without the token: the page asks for it and sends it on
	// every API call.
	UI http.Handler
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
	// Owner names the node that owns the instance, for a conflict.
	Owner string `json:"owner,omitempty"`
}

type apiError struct {
	status int
	detail ErrorDetail
}

func (e *apiError) Error() string { return e.detail.Message }

func fail(status int, code, msg, field string) error {
	return &apiError{status: status, detail: ErrorDetail{Code: code, Message: msg, Field: field}}
}

func invalid(field, format string, args ...any) error {
	return fail(http.StatusBadRequest, "invalid_request", fmt.Sprintf(format, args...), field)
}

//go:embed openapi.json
var openAPI []byte

// New builds the echo server over reg.
func New(reg Registry, opt Options) *echo.Echo {
	if opt.MaxActorQueries <= 0 {
		opt.MaxActorQueries = DefaultMaxActorQueries
	}
	if opt.QueueWait <= 0 {
		opt.QueueWait = DefaultQueueWait
	}
	if opt.MaxStreams <= 0 {
		opt.MaxStreams = DefaultMaxStreams
	}
	if opt.MaxBatches <= 0 {
		opt.MaxBatches = DefaultMaxBatches
	}
	if opt.MaxRequests <= 0 {
		opt.MaxRequests = 4 * runtime.GOMAXPROCS(0)
	}
	if opt.EventBuffer <= 0 {
		opt.EventBuffer = DefaultEventBuffer
	}
	if opt.KeepAlive <= 0 {
		opt.KeepAlive = DefaultKeepAlive
	}
	if opt.BodyReadTimeout <= 0 {
		opt.BodyReadTimeout = DefaultBodyReadTimeout
	}
	if opt.WriteTimeout <= 0 {
		opt.WriteTimeout = DefaultWriteTimeout
	}
	if opt.giveWayMax <= 0 {
		opt.giveWayMax = maxGiveWay
	}
	log := opt.Log
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = errorHandler(log)
	e.Use(requestLog(log), recoverJSON(log), deadlines(opt))
	if opt.Token != "" {
		e.Use(bearer(opt.Token))
	}
	h := &handlers{reg: reg, opt: opt, slots: make(chan struct{}, opt.MaxActorQueries),
		streams: make(chan struct{}, opt.MaxStreams), batches: make(chan struct{}, opt.MaxBatches),
		work: make(chan struct{}, opt.MaxRequests), behind: make(chan struct{}, 1)}
	e.Use(h.admit)
	h.fleet, _ = reg.(Fleet)
	// every GET route answers HEAD too: the same headers, no body
	get := func(path string, handler echo.HandlerFunc, mw ...echo.MiddlewareFunc) {
		e.GET(path, handler, mw...)
		e.HEAD(path, handler, mw...)
	}
	actor := h.limit
	get("/healthz", func(c echo.Context) error { return c.JSON(http.StatusOK, map[string]string{"status": "ok"}) })
	get("/readyz", h.ready)
	e.PUT("/v1/instances/:id", h.put, validID, actor)
	// the colon is escaped for echo; it is outside the ids' alphabet, so
	// the route can never name an instance
	e.POST(`/v1/instances\:batch`, h.batch, h.hold(h.batches, "too many batch registrations in progress; retry"))
	e.PATCH("/v1/instances/:id", h.patch, validID, actor)
	get("/v1/instances/:id", h.get, validID, actor)
	e.DELETE("/v1/instances/:id", h.remove, validID, actor)
	get("/v1/instances/:id/health", h.health, validID, actor)
	e.POST("/v1/instances/:id/probe", h.probe, validID, actor)
	e.POST("/v1/instances/:id/move", h.move, validID, actor)
	get("/v1/nodes", h.nodes)
	e.PUT("/v1/notifiers/:name", h.putNotifier)
	get("/v1/notifiers/:name", h.getNotifier)
	e.DELETE("/v1/notifiers/:name", h.deleteNotifier)
	get("/v1/notifiers", h.listNotifiers)
	e.POST("/v1/silences", h.createSilence)
	get("/v1/silences", h.listSilences)
	e.DELETE("/v1/silences/:id", h.deleteSilence)
	get("/v1/incidents", h.listIncidents)
	get("/v1/instances", h.list)
	get("/v1/summary", h.summary)
	get("/v1/events", h.events)
	get("/v1/openapi.json", func(c echo.Context) error { return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, openAPI) })
	if opt.Metrics != nil {
		opt.Metrics.Register(newRegistryCollector(reg, opt.Behind))
		get("/metrics", echo.WrapHandler(opt.Metrics.Handler()))
	}
	if opt.UI != nil {
		get("/ui", func(c echo.Context) error { return c.Redirect(http.StatusMovedPermanently, "/ui/") })
		get("/ui/*", echo.WrapHandler(opt.UI))
	}
	return e
}

// deadlines sets a read deadline for a request's body, when it has one, and
// a write deadline that starts when the response does (so a probe-now that
// waits for a long probe still has the whole deadline to answer). The event
// stream sets a deadline of its own for every frame.
func deadlines(opt Options) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			req, w := c.Request(), c.Response()
			rc := http.NewResponseController(w.Writer)
			if req.ContentLength != 0 && req.Body != nil && req.Body != http.NoBody {
				_ = rc.SetReadDeadline(time.Now().Add(opt.BodyReadTimeout))
			}
			w.Before(func() { _ = rc.SetWriteDeadline(time.Now().Add(opt.WriteTimeout)) })
			return next(c)
		}
	}
}

// validID answers 400 for an instance id that cannot exist, on every route
// that names one.
func validID(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if err := health.ValidateID(c.Param("id")); err != nil {
			return err
		}
		return next(c)
	}
}

// bearer requires the token on every route but the probes of the process
// and the dashboard's static files (which hold no data).
func bearer(token string) echo.MiddlewareFunc {
	want := []byte(token)
	return middleware.KeyAuthWithConfig(middleware.KeyAuthConfig{
		Skipper: func(c echo.Context) bool {
			p := c.Request().URL.Path
			return p == "/healthz" || p == "/readyz" || p == "/ui" || strings.HasPrefix(p, "/ui/")
		},
		Validator: func(got string, _ echo.Context) (bool, error) {
			return subtle.ConstantTimeCompare([]byte(got), want) == 1, nil
		},
		ErrorHandler: func(_ error, c echo.Context) error {
			c.Response().Header().Set(echo.HeaderWWWAuthenticate, `Bearer realm="vigil"`)
			return fail(http.StatusUnauthorized, "unauthorized", "missing or wrong bearer token", "")
		},
	})
}

// limit holds one of the actor-query slots for the request, waiting up to
// QueueWait for one.
func (h *handlers) limit(next echo.HandlerFunc) echo.HandlerFunc {
	return h.hold(h.slots, "too many requests waiting for instance actors; retry")(next)
}

// hold holds one of slots for the request, waiting up to QueueWait for one;
// busy is the 503's message when none came.
func (h *handlers) hold(slots chan struct{}, busy string) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if _, err := h.take(c, slots, busy, nil); err != nil {
				return err
			}
			defer func() { <-slots }()
			return next(c)
		}
	}
}

// take holds one of slots for the request, waiting up to QueueWait; a wait
// that runs out is a 503 (busy says why), unless waive, when set, says by
// then that the slot is not needed (taken false, no error).
func (h *handlers) take(c echo.Context, slots chan struct{}, busy string, waive func() bool) (taken bool, err error) {
	select {
	case slots <- struct{}{}:
		return true, nil
	default:
	}
	t := time.NewTimer(h.opt.QueueWait)
	defer t.Stop()
	select {
	case slots <- struct{}{}:
		return true, nil
	case <-t.C:
		if waive != nil && waive() {
			return false, nil
		}
		c.Response().Header().Set("Retry-After", "1")
		return false, fail(http.StatusServiceUnavailable, "unavailable", busy, "")
	case <-c.Request().Context().Done():
		return false, fail(http.StatusServiceUnavailable, "unavailable", "request canceled while waiting", "")
	}
}

// unmetered are the routes MaxRequests does not count.
var unmetered = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true, "/v1/events": true,
	"/v1/instances/:id/probe": true, "/v1/openapi.json": true, "/ui": true, "/ui/*": true}

// admit holds one of MaxRequests for the request, waiting up to QueueWait;
// while probing is behind (Options.Behind), first the one slot of those
// times, which the request keeps after it is done for as long again as it
// took. A request that waited that out is served as any other if probing
// has caught up meanwhile.
func (h *handlers) admit(next echo.HandlerFunc) echo.HandlerFunc {
	held := h.hold(h.work, "too many requests at once; retry")(next)
	return func(c echo.Context) error {
		if unmetered[c.Path()] {
			return next(c)
		}
		prefetchBody(c.Request())
		if h.opt.Behind == nil || !h.opt.Behind() {
			return held(c)
		}
		caughtUp := func() bool { return !h.opt.Behind() }
		taken, err := h.take(c, h.behind, "probing is behind schedule: the API gives way; retry", caughtUp)
		if err != nil {
			return err
		}
		if !taken {
			return held(c)
		}
		// the one slot stays taken after the request for as long again as
		// the request took: while probing is behind, the API's requests
		// have at most half of one CPU
		began := time.Now()
		defer func() { time.AfterFunc(min(time.Since(began), h.opt.giveWayMax), func() { <-h.behind }) }()
		return held(c)
	}
}

// prefetchMax is how much of a request's body is read before the request
// waits for a slot: every single instance's PUT and PATCH, and most batches.
const prefetchMax = 64 << 10

// prefetchBody reads the first prefetchMax bytes of the request's body
// before the request takes a slot, so that a client sending its body slowly
// (up to the body's read deadline) holds none while it does, not even the
// one left while probing is behind. The handler reads the same bytes, then
// the rest; a failed read reaches it as it happened.
func prefetchBody(req *http.Request) {
	if req.Body == nil || req.Body == http.NoBody || req.ContentLength == 0 {
		return
	}
	n := int64(prefetchMax)
	if req.ContentLength > 0 {
		n = min(n, req.ContentLength)
	}
	b, err := io.ReadAll(io.LimitReader(req.Body, n))
	var rest io.Reader = req.Body
	if err != nil {
		rest = failedRead{err}
	}
	req.Body = prefetched{Reader: io.MultiReader(bytes.NewReader(b), rest), Closer: req.Body}
}

// prefetched is a body whose first bytes were read ahead.
type prefetched struct {
	io.Reader
	io.Closer
}

// failedRead is a read that failed ahead of the handler.
type failedRead struct{ err error }

func (f failedRead) Read([]byte) (int, error) { return 0, f.err }

// maxGiveWay bounds how long a request worked on while probing is behind
// keeps the one slot after it is done (Options.giveWayMax).
const maxGiveWay = 100 * time.Millisecond

type handlers struct {
	reg     Registry
	fleet   Fleet // nil without a fleet
	opt     Options
	slots   chan struct{} // semaphore of actor queries
	streams chan struct{} // semaphore of event streams
	batches chan struct{} // semaphore of batch registrations
	work    chan struct{} // semaphore of requests worked on
	behind  chan struct{} // the one request worked on at a time while probing is behind
}

func (h *handlers) ready(c echo.Context) error {
	if sh, ok := h.reg.(interface{ StoreHealth() error }); ok {
		if err := sh.StoreHealth(); err != nil {
			c.Response().Header().Set("Retry-After", "5")
			return fail(http.StatusServiceUnavailable, "storage_unavailable", "storage unavailable: "+err.Error(), "")
		}
	}
	if !h.reg.Ready() {
		return fail(http.StatusServiceUnavailable, "unavailable", "not every stored instance has its actor", "")
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
}

// body reads a request body of one of the given media types, at most MaxBody.
func body(c echo.Context, types ...string) ([]byte, error) {
	return bodyUpTo(c, MaxBody, types...)
}

// bodyUpTo reads a request body of one of the given media types, at most
// limit bytes (a whole number of MiB).
func bodyUpTo(c echo.Context, limit int, types ...string) ([]byte, error) {
	if ct := c.Request().Header.Get(echo.HeaderContentType); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		ok := false
		for _, t := range types {
			ok = ok || (err == nil && mt == t)
		}
		if !ok {
			return nil, fail(http.StatusUnsupportedMediaType, "unsupported_media_type", "body must be "+strings.Join(types, " or "), "")
		}
	}
	b, err := io.ReadAll(io.LimitReader(c.Request().Body, int64(limit)+1))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, fail(http.StatusRequestTimeout, "request_timeout", "the request body did not arrive in time", "")
	}
	if err != nil {
		return nil, invalid("", "reading body: %v", err)
	}
	if len(b) > limit {
		return nil, fail(http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body is over %d MiB", limit>>20), "")
	}
	return b, nil
}

// decode reads a JSON body strictly: size, content type, unknown fields.
func decode(c echo.Context, v any) error {
	b, err := body(c, echo.MIMEApplicationJSON)
	if err != nil {
		return err
	}
	return input.Decode(b, v)
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

// patch applies a JSON merge patch (RFC 7396) to the instance's spec as the
// client wrote it, under the instance's lock, and validates the result like
// a PUT: defaults derived from a field follow it, and a patch can never
// half-apply.
func (h *handlers) patch(c echo.Context) error {
	b, err := body(c, "application/merge-patch+json", echo.MIMEApplicationJSON)
	if err != nil {
		return err
	}
	// checked here too, so that a bad patch is a 400 whatever the instance
	if err := input.CheckObject(b, "merge patch"); err != nil {
		return err
	}
	info, err := h.reg.Patch(c.Request().Context(), c.Param("id"), b)
	if err != nil {
		return err
	}
	info.Health.History = nil
	return c.JSON(http.StatusOK, info)
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
			return invalid("limit", "limit must be between 1 and 1000")
		}
		limit = n
	}
	var statuses []health.Status
	if v := c.QueryParam("status"); v != "" {
		for _, s := range strings.Split(v, ",") {
			st := health.Status(strings.TrimSpace(s))
			if !st.Valid() {
				return invalid("status", "status %q is not one of disabled, unknown, starting, healthy, unhealthy", s)
			}
			statuses = append(statuses, st)
		}
	}
	order := cmp.Or(c.QueryParam("sort"), sortID)
	if !slices.Contains([]string{sortID, sortStatus, sortSince, sortNewest}, order) {
		return invalid("sort", "sort must be one of id, status, since, -since (got %q)", order)
	}
	prefix := c.QueryParam("prefix")
	if !prefixPattern.MatchString(prefix) {
		return invalid("prefix", "prefix must be at most 128 characters of A-Z a-z 0-9 . _ -")
	}
	from, err := readCursor(order, c.QueryParam("cursor"))
	if err != nil {
		return err
	}
	fleet, err := h.scope(c)
	if err != nil {
		return err
	}
	labels, err := labelFilter(c.QueryParams()["label"])
	if err != nil {
		return err
	}
	f := actors.Filter{Statuses: statuses, Labels: labels, Prefix: prefix}
	list := func(f actors.Filter, after string, limit int) ([]actors.Info, string, error) {
		page, next := h.reg.List(f, after, limit)
		return page, next, nil
	}
	var counts map[health.Status]int // lets sort=status skip statuses nobody has
	if fleet {
		list = h.fleetPager(c.Request().Context())
	} else {
		counts = h.reg.Summary()
	}
	var page []actors.Info
	var next string
	switch order {
	case sortID:
		page, next, err = list(f, from.id, limit)
		next = encodeCursor(next)
	case sortStatus:
		page, next, err = statusFirst(list, f, from, limit, counts)
	default:
		b, ok := h.reg.(briefer)
		if fleet || !ok {
			return invalid("sort", "sort=%s orders one vigil's own instances: in a fleet, instances list by id or status", order)
		}
		page, next = bySince(b, f, from, limit, order == sortNewest)
	}
	if err != nil {
		return err
	}
	if page == nil {
		page = []actors.Info{}
	}
	return c.JSON(http.StatusOK, map[string]any{"instances": page, "next_cursor": next})
}

// labelFilter reads ?label=key=value (several are ANDed).
func labelFilter(params []string) (map[string]string, error) {
	if len(params) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(params))
	for _, p := range params {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, invalid("label", "label must be key=value (got %q)", p)
		}
		out[k] = v
	}
	if err := health.ValidateLabels(out); err != nil {
		var fe *health.FieldError
		if errors.As(err, &fe) {
			return nil, invalid("label", "label %s", strings.TrimPrefix(fe.Error(), "labels."))
		}
		return nil, err
	}
	return out, nil
}

// cursorPrefix marks the cursors this server issues; a cursor is the last id
// of a page, opaque to clients.
const cursorPrefix = "v1:"

func encodeCursor(id string) string {
	if id == "" {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte(cursorPrefix + id))
}

// decodeCursor returns the id a cursor stands for; "" is the first page.
func decodeCursor(cursor string) (string, error) {
	if cursor == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(cursor)
	id, ok := strings.CutPrefix(string(b), cursorPrefix)
	if err != nil || !ok || health.ValidateID(id) != nil {
		return "", invalid("cursor", "cursor is not one this server issued: pass next_cursor from the previous page as it is")
	}
	return id, nil
}

// scope reads ?scope=: local (the default) or fleet, which needs a fleet.
func (h *handlers) scope(c echo.Context) (fleet bool, err error) {
	switch c.QueryParam("scope") {
	case "", "local":
		return false, nil
	case "fleet":
		if h.fleet == nil {
			return false, invalid("scope", "scope=fleet needs a fleet: this vigil serves one host (start it with --etcd)")
		}
		return true, nil
	}
	return false, invalid("scope", "scope must be local or fleet (got %q)", c.QueryParam("scope"))
}

// noFleet answers a fleet route on a vigil that serves one host.
func noFleet() error {
	return fail(http.StatusNotFound, "not_found", "this vigil serves one host and has no fleet (start it with --etcd)", "")
}

func (h *handlers) nodes(c echo.Context) error {
	if h.fleet == nil {
		return noFleet()
	}
	body, err := h.fleet.Nodes(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, body)
}

func (h *handlers) move(c echo.Context) error {
	if h.fleet == nil {
		return noFleet()
	}
	var req struct {
		To string `json:"to"`
	}
	if err := decode(c, &req); err != nil {
		return err
	}
	if req.To == "" {
		return invalid("to", "to is required: the name of the node to move the instance to")
	}
	info, err := h.fleet.Move(c.Request().Context(), c.Param("id"), req.To)
	if err != nil {
		return err
	}
	info.Health.History = nil
	return c.JSON(http.StatusOK, info)
}

func (h *handlers) summary(c echo.Context) error {
	fleet, err := h.scope(c)
	if err != nil {
		return err
	}
	if fleet {
		body, err := h.fleet.FleetSummary(c.Request().Context())
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, body)
	}
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
	unavailable := log.Sample(&zerolog.BurstSampler{Burst: 1, Period: 10 * time.Second})
	return func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		status, detail := classify(err)
		if status == http.StatusServiceUnavailable && c.Response().Header().Get("Retry-After") == "" {
			c.Response().Header().Set("Retry-After", "1") // every 503 says when to come back
		}
		switch {
		case status == http.StatusServiceUnavailable:
			// a flood is answered with many of these: one line in a while
			// says so, and the request log at info has each of them
			unavailable.Warn().Err(err).Str("path", c.Request().URL.Path).Str("code", detail.Code).Msg("requests_unavailable")
		case status >= 500:
			log.Error().Err(err).Str("path", c.Request().URL.Path).Msg("request_failed")
		}
		_ = c.JSON(status, ErrorBody{Error: detail})
	}
}

// coded is an error that says how the API renders it (the fleet's).
type coded interface {
	error
	StatusCode() int
	ErrorCode() string
	ErrorField() string
	ErrorOwner() string
}

func classify(err error) (int, ErrorDetail) {
	var ce coded
	if errors.As(err, &ce) {
		return ce.StatusCode(), ErrorDetail{Code: ce.ErrorCode(), Message: ce.Error(), Field: ce.ErrorField(), Owner: ce.ErrorOwner()}
	}
	var ae *apiError
	var fe *health.FieldError
	var ie *input.Error
	var xe *act.Error
	var he *echo.HTTPError
	switch {
	case errors.As(err, &ae):
		return ae.status, ae.detail
	case errors.As(err, &fe):
		return http.StatusBadRequest, ErrorDetail{Code: "invalid_request", Message: fe.Error(), Field: fe.Field}
	case errors.As(err, &ie):
		return http.StatusBadRequest, ErrorDetail{Code: "invalid_request", Message: ie.Message, Field: ie.Field}
	case errors.As(err, &xe):
		return http.StatusBadRequest, ErrorDetail{Code: "invalid_request", Message: xe.Message, Field: xe.Field}
	case errors.Is(err, act.ErrNotFound):
		return http.StatusNotFound, ErrorDetail{Code: "not_found", Message: "no such notifier or silence"}
	case errors.Is(err, actors.ErrStorage):
		return http.StatusServiceUnavailable, ErrorDetail{Code: "storage_unavailable", Message: err.Error()}
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

// requestLog logs one line a request: method, path, status and duration,
// and for an error its code and field — never the query or a header.
func requestLog(log zerolog.Logger) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			began := time.Now()
			err := next(c)
			status := c.Response().Status
			ev := log.Info()
			if err != nil {
				var detail ErrorDetail
				status, detail = classify(err)
				ev = ev.Str("error_code", detail.Code)
				if detail.Field != "" {
					ev = ev.Str("field", detail.Field)
				}
			}
			ev.Str("method", c.Request().Method).Str("path", c.Request().URL.Path).Int("status", status).
				Float64("duration_ms", float64(time.Since(began).Microseconds())/1000).Msg("request")
			return err
		}
	}
}
