// Package client is a typed Go client of vigil's HTTP API (docs/API.md).
//
// The types and the raw calls in gen.go are generated from api/openapi.json
// (make generate); this file is the thin layer over them: one method per
// route that returns typed values, errors as *Error values carrying the
// API's code and field, paging as an iterator, and the event stream as an
// iterator that resumes from its last event after a dropped connection.
//
// Concurrency contract: a Client is safe for concurrent use; each iterator
// belongs to the goroutine that ranges over it.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	sse "github.com/tmaxmax/go-sse"
)

// Client talks to one vigil server.
type Client struct {
	raw    *ClientWithResponses
	http   *http.Client
	base   string
	token  string
	retry  time.Duration
	within time.Duration // WithRetryUnavailable
}

// Option configures a Client.
type Option func(*Client)

// WithToken sends "Authorization: Bearer <token>" with every request.
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// WithHTTP replaces the HTTP client (its transport, its timeouts). The
// event stream needs one without an overall timeout.
func WithHTTP(h *http.Client) Option { return func(c *Client) { c.http = h } }

// WithRetry sets how long the event stream waits before it reconnects
// (default 500ms).
func WithRetry(d time.Duration) Option { return func(c *Client) { c.retry = d } }

// WithRetryUnavailable tries a request again while the server answers 503
// (probing behind schedule, too many requests at once, its store refusing
// writes) for up to within, after the Retry-After it sent (see
// PutBatchWhenAvailable): every GET, HEAD, PUT, PATCH and DELETE, which are
// idempotent (a merge patch applied twice is applied once), but no POST — a
// silence posted twice is two, and a batch has PutBatchWhenAvailable.
// Without it, a 503 is the caller's to handle, as an *Error with RetryAfter.
func WithRetryUnavailable(within time.Duration) Option {
	return func(c *Client) { c.within = within }
}

// DefaultRetry is the event stream's default pause before a reconnect.
const DefaultRetry = 500 * time.Millisecond

// New returns a client of the server at addr: "http://127.0.0.1:8484", a
// bare "127.0.0.1:8484", or "unix:///run/vigil/api.sock" as vigil serve's
// --listen writes it.
func New(addr string, opts ...Option) (*Client, error) {
	c := &Client{retry: DefaultRetry}
	for _, o := range opts {
		o(c)
	}
	switch {
	case strings.HasPrefix(addr, "unix://"):
		path := strings.TrimPrefix(addr, "unix://")
		if c.http == nil {
			c.http = &http.Client{Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", path)
				},
			}}
		}
		c.base = "http://vigil"
	case strings.HasPrefix(addr, "http://"), strings.HasPrefix(addr, "https://"):
		c.base = strings.TrimRight(addr, "/")
	default:
		c.base = "http://" + addr
	}
	if c.http == nil {
		c.http = &http.Client{}
	}
	if c.within > 0 {
		h := *c.http // the caller's client stays as it was
		next := h.Transport
		if next == nil {
			next = http.DefaultTransport
		}
		h.Transport = &retryUnavailable{next: next, within: c.within}
		c.http = &h
	}
	raw, err := NewClientWithResponses(c.base, WithHTTPClient(c.http), WithRequestEditorFn(c.authorize))
	if err != nil {
		return nil, err
	}
	c.raw = raw
	return c, nil
}

func (c *Client) authorize(_ context.Context, req *http.Request) error {
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return nil
}

// Error is an error the API answered: its HTTP status and the body's code,
// message and field (the JSON path of the offending field, when there is
// one).
type Error struct {
	Status  int
	Code    string
	Message string
	Field   string
	// RetryAfter is the server's Retry-After, when it sent one (503).
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("vigil: %d %s: %s (field %s)", e.Status, e.Code, e.Message, e.Field)
	}
	return fmt.Sprintf("vigil: %d %s: %s", e.Status, e.Code, e.Message)
}

// IsNotFound reports whether err is the API's 404.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

// apiError turns a response that is not a success into an *Error.
func apiError(resp *http.Response, body []byte) error {
	e := &Error{Status: resp.StatusCode, Code: "http_" + strconv.Itoa(resp.StatusCode), Message: resp.Status}
	var b ErrorBody
	if json.Unmarshal(body, &b) == nil && b.Error.Code != "" {
		e.Code, e.Message = string(b.Error.Code), b.Error.Message
		if b.Error.Field != nil {
			e.Field = *b.Error.Field
		}
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return e
}

// result returns the typed body of a response whose status is one of ok, or
// the API's error.
func result[T any](resp *http.Response, body []byte, err error, typed *T, ok ...int) (*T, error) {
	if err != nil {
		return nil, err
	}
	for _, code := range ok {
		if resp.StatusCode == code {
			if typed == nil {
				return nil, fmt.Errorf("vigil: %d response without a body", resp.StatusCode)
			}
			return typed, nil
		}
	}
	return nil, apiError(resp, body)
}

// Put creates or replaces an instance; created reports which.
func (c *Client) Put(ctx context.Context, id string, in InstanceInput) (inst *Instance, created bool, err error) {
	r, err := c.raw.PutInstanceWithResponse(ctx, id, in)
	if err != nil {
		return nil, false, err
	}
	typed := r.JSON200
	if r.StatusCode() == http.StatusCreated {
		typed = r.JSON201
	}
	inst, err = result(r.HTTPResponse, r.Body, nil, typed, http.StatusOK, http.StatusCreated)
	return inst, r.StatusCode() == http.StatusCreated, err
}

// MaxBatch is the most items one PutBatch may send.
const MaxBatch = 1000

// BatchItem is one instance of a batch: its id and what Put takes.
type BatchItem struct {
	ID       string
	Instance InstanceInput
}

// BatchResult is what became of one item of a batch: created or replaced,
// or Err, an *Error as a Put of the item would have returned it, whose Field
// is prefixed by the item ("instances[3].health_check.timeout").
type BatchResult struct {
	ID      string
	Created bool
	Err     error
}

// PutBatchWhenAvailable is PutBatch, tried again while the server answers
// 503 (its batches in progress at their limit, probing behind schedule, its
// store refusing writes) for up to within: after the Retry-After it sent
// (1 s when it sent none or more than 5 s), spread over half to one and a
// half times that, so that batches refused together come back apart. A
// batch is idempotent, so trying it again is safe.
func (c *Client) PutBatchWhenAvailable(ctx context.Context, items []BatchItem, within time.Duration) ([]BatchResult, error) {
	deadline := time.Now().Add(within)
	for {
		results, err := c.PutBatch(ctx, items)
		var e *Error
		if !errors.As(err, &e) || e.Status != http.StatusServiceUnavailable || time.Now().After(deadline) {
			return results, err
		}
		if err := pause(ctx, retryWait(e.RetryAfter)); err != nil {
			return nil, err
		}
	}
}

// retryWait is how long to wait before trying a request the server answered
// 503 again: its Retry-After (1 s when it sent none or more than 5 s), spread
// over half to one and a half times that, so that requests refused together
// come back apart.
func retryWait(retryAfter time.Duration) time.Duration {
	if retryAfter <= 0 || retryAfter > 5*time.Second {
		retryAfter = time.Second
	}
	return retryAfter/2 + rand.N(retryAfter)
}

// pause waits d, or until ctx ends.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// retryUnavailable is the transport of WithRetryUnavailable.
type retryUnavailable struct {
	next   http.RoundTripper
	within time.Duration
}

func (r *retryUnavailable) RoundTrip(req *http.Request) (*http.Response, error) {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPatch, http.MethodDelete:
	default:
		return r.next.RoundTrip(req)
	}
	deadline := time.Now().Add(r.within)
	for try := req; ; {
		resp, err := r.next.RoundTrip(try)
		if err != nil || resp.StatusCode != http.StatusServiceUnavailable || (req.Body != nil && req.GetBody == nil) {
			return resp, err
		}
		after, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		wait := retryWait(time.Duration(after) * time.Second)
		if time.Now().Add(wait).After(deadline) {
			return resp, nil
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		_ = resp.Body.Close()
		if err := pause(req.Context(), wait); err != nil {
			return nil, err
		}
		try = req.Clone(req.Context())
		if req.GetBody != nil {
			if try.Body, err = req.GetBody(); err != nil {
				return nil, err
			}
		}
	}
}

// PutBatch creates or replaces up to MaxBatch instances in one request.
// Every item is checked as a Put of it would be and fails alone: the
// others are registered, each durable when PutBatch returns. The results
// are in the order of items. err is the request's own failure (a batch
// refused whole: more than MaxBatch items, a body over 8 MiB; the server
// unavailable), in which case nothing is registered.
func (c *Client) PutBatch(ctx context.Context, items []BatchItem) (results []BatchResult, err error) {
	var body bytes.Buffer
	body.WriteString(`{"instances":[`)
	for i, it := range items {
		b, err := json.Marshal(it.Instance)
		if err != nil {
			return nil, fmt.Errorf("vigil: encode item %d (%s): %w", i, it.ID, err)
		}
		id, _ := json.Marshal(it.ID)
		if i > 0 {
			body.WriteByte(',')
		}
		// the item is the instance's body with its id as the first member
		body.WriteString(`{"id":`)
		body.Write(id)
		if len(b) > 2 {
			body.WriteByte(',')
		}
		body.Write(b[1:])
	}
	body.WriteString(`]}`)
	r, err := c.raw.PutInstancesWithBodyWithResponse(ctx, "application/json", &body)
	if err != nil {
		return nil, err
	}
	resp, err := result(r.HTTPResponse, r.Body, nil, r.JSON200, http.StatusOK)
	if err != nil {
		return nil, err
	}
	if len(resp.Results) != len(items) {
		return nil, fmt.Errorf("vigil: %d results for %d items", len(resp.Results), len(items))
	}
	results = make([]BatchResult, len(items))
	for i, res := range resp.Results {
		results[i] = BatchResult{ID: res.Id, Created: res.Result != nil && *res.Result == BatchCreated}
		if e := res.Error; e != nil {
			ie := &Error{Code: string(e.Code), Message: e.Message}
			if res.Status != nil {
				ie.Status = *res.Status
			}
			if e.Field != nil {
				ie.Field = *e.Field
			}
			results[i].Err = ie
		}
	}
	return results, nil
}

// Patch applies a JSON merge patch (RFC 7396) to the instance's spec as it
// was written: a value of null removes a member.
func (c *Client) Patch(ctx context.Context, id string, patch map[string]any) (*Instance, error) {
	b, err := json.Marshal(patch)
	if err != nil {
		return nil, err
	}
	r, err := c.raw.PatchInstanceWithBodyWithResponse(ctx, id, "application/merge-patch+json", bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	return result(r.HTTPResponse, r.Body, nil, r.JSON200, http.StatusOK)
}

// Get returns one instance with its health status.
func (c *Client) Get(ctx context.Context, id string) (*Instance, error) {
	r, err := c.raw.GetInstanceWithResponse(ctx, id)
	if err != nil {
		return nil, err
	}
	return result(r.HTTPResponse, r.Body, nil, r.JSON200, http.StatusOK)
}

// Delete stops watching an instance and removes its data.
func (c *Client) Delete(ctx context.Context, id string) error {
	r, err := c.raw.DeleteInstanceWithResponse(ctx, id)
	if err != nil {
		return err
	}
	if r.StatusCode() != http.StatusNoContent {
		return apiError(r.HTTPResponse, r.Body)
	}
	return nil
}

// Health returns an instance's health status with its history.
func (c *Client) Health(ctx context.Context, id string) (*HealthStatus, error) {
	r, err := c.raw.GetHealthWithResponse(ctx, id)
	if err != nil {
		return nil, err
	}
	return result(r.HTTPResponse, r.Body, nil, r.JSON200, http.StatusOK)
}

// Probe probes an instance now (joining a probe in flight) and returns the
// result with the status after it.
func (c *Client) Probe(ctx context.Context, id string) (*ProbeResponse, error) {
	r, err := c.raw.ProbeNowWithResponse(ctx, id)
	if err != nil {
		return nil, err
	}
	return result(r.HTTPResponse, r.Body, nil, r.JSON200, http.StatusOK)
}

// ListOptions select a page of instances.
type ListOptions struct {
	Status []Status // any of these; all when empty
	Limit  int      // page size (server default 100, at most 1000)
	Cursor string   // NextCursor of the previous page
	Fleet  bool     // the whole fleet's instances, not this node's
	// Labels keeps instances with every one of these labels
	Labels map[string]string
}

func (o ListOptions) params() *ListInstancesParams {
	p := &ListInstancesParams{}
	if len(o.Status) > 0 {
		parts := make([]string, len(o.Status))
		for i, s := range o.Status {
			parts[i] = string(s)
		}
		joined := strings.Join(parts, ",")
		p.Status = &joined
	}
	if o.Limit > 0 {
		p.Limit = &o.Limit
	}
	if o.Cursor != "" {
		p.Cursor = &o.Cursor
	}
	if o.Fleet {
		fleet := ListInstancesParamsScopeFleet
		p.Scope = &fleet
	}
	if len(o.Labels) > 0 {
		labels := make([]string, 0, len(o.Labels))
		for k, v := range o.Labels {
			labels = append(labels, k+"="+v)
		}
		sort.Strings(labels)
		p.Label = &labels
	}
	return p
}

// List returns one page of instances in id order.
func (c *Client) List(ctx context.Context, o ListOptions) (*InstanceList, error) {
	r, err := c.raw.ListInstancesWithResponse(ctx, o.params())
	if err != nil {
		return nil, err
	}
	return result(r.HTTPResponse, r.Body, nil, r.JSON200, http.StatusOK)
}

// All ranges over every instance the options select, a page at a time.
func (c *Client) All(ctx context.Context, o ListOptions) iter.Seq2[Instance, error] {
	return func(yield func(Instance, error) bool) {
		for {
			page, err := c.List(ctx, o)
			if err != nil {
				yield(Instance{}, err)
				return
			}
			for _, in := range page.Instances {
				if !yield(in, nil) {
					return
				}
			}
			if page.NextCursor == "" {
				return
			}
			o.Cursor = page.NextCursor
		}
	}
}

// Summary counts this node's instances by status.
func (c *Client) Summary(ctx context.Context) (*Summary, error) {
	r, err := c.raw.SummaryWithResponse(ctx, &SummaryParams{})
	if err != nil {
		return nil, err
	}
	return result(r.HTTPResponse, r.Body, nil, r.JSON200, http.StatusOK)
}

// FleetSummary counts the fleet's instances by status, in all and per node
// (Nodes); those of a node that is down count as unknown.
func (c *Client) FleetSummary(ctx context.Context) (*Summary, error) {
	fleet := SummaryParamsScopeFleet
	r, err := c.raw.SummaryWithResponse(ctx, &SummaryParams{Scope: &fleet})
	if err != nil {
		return nil, err
	}
	return result(r.HTTPResponse, r.Body, nil, r.JSON200, http.StatusOK)
}

// Nodes lists the fleet's nodes.
func (c *Client) Nodes(ctx context.Context) ([]Node, error) {
	r, err := c.raw.ListNodesWithResponse(ctx)
	if err != nil {
		return nil, err
	}
	list, err := result(r.HTTPResponse, r.Body, nil, r.JSON200, http.StatusOK)
	if err != nil {
		return nil, err
	}
	return list.Nodes, nil
}

// Move hands an instance, its actor and its state to another node of the
// fleet; it returns the instance as the new owner has it.
func (c *Client) Move(ctx context.Context, id, to string) (*Instance, error) {
	r, err := c.raw.MoveInstanceWithResponse(ctx, id, MoveRequest{To: to})
	if err != nil {
		return nil, err
	}
	return result(r.HTTPResponse, r.Body, nil, r.JSON200, http.StatusOK)
}

// Healthz reports whether the process is alive.
func (c *Client) Healthz(ctx context.Context) error {
	r, err := c.raw.HealthzWithResponse(ctx)
	if err != nil {
		return err
	}
	_, err = result(r.HTTPResponse, r.Body, nil, r.JSON200, http.StatusOK)
	return err
}

// Ready reports whether every stored instance has its actor (nil), or why
// not (a 503 *Error).
func (c *Client) Ready(ctx context.Context) error {
	r, err := c.raw.ReadyzWithResponse(ctx)
	if err != nil {
		return err
	}
	_, err = result(r.HTTPResponse, r.Body, nil, r.JSON200, http.StatusOK)
	return err
}

// OpenAPI returns the server's OpenAPI document.
func (c *Client) OpenAPI(ctx context.Context) ([]byte, error) {
	r, err := c.raw.OpenapiWithResponse(ctx)
	if err != nil {
		return nil, err
	}
	if r.StatusCode() != http.StatusOK {
		return nil, apiError(r.HTTPResponse, r.Body)
	}
	return r.Body, nil
}

// Metrics returns the Prometheus text exposition.
func (c *Client) Metrics(ctx context.Context) ([]byte, error) {
	r, err := c.raw.MetricsWithResponse(ctx)
	if err != nil {
		return nil, err
	}
	if r.StatusCode() != http.StatusOK {
		return nil, apiError(r.HTTPResponse, r.Body)
	}
	return r.Body, nil
}

// Head asks a GET route for its headers alone, as HEAD does: path is the
// route's path ("/v1/summary"). It returns the status and headers.
func (c *Client) Head(ctx context.Context, path string) (int, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, c.base+path, nil)
	if err != nil {
		return 0, nil, err
	}
	_ = c.authorize(ctx, req)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header, nil
}

// EventsOptions say where the event stream starts and what it carries.
type EventsOptions struct {
	// After resumes after this event (an event's ID, or its Seq as a
	// string); empty starts at the newest event, "0" replays all retained.
	After string
	// InstanceID keeps one instance's transitions only.
	InstanceID string
	// Fleet follows every node of the fleet: each transition carries its
	// Node, nodes going down and up are events, and IDs are cursors.
	Fleet bool
}

// StreamEvent is one event of the stream: a transition or another event of
// the log (flapping, flapping_ended, incident_opened, incident_closed,
// silence_ended: in Transition too, with its Kind), a reset (the events
// after Reset.RequestedSeq are no longer retained: list again), or on the
// fleet's stream a node going down or up.
type StreamEvent struct {
	ID         string // what to resume after
	Type       string // "transition", a kind of event, "reset", "node_down" or "node_up"
	Transition *Event
	Reset      *Reset
	Node       *NodeEvent
}

// Events ranges over the event stream. When the connection drops or the
// server ends the stream, it reconnects after the retry pause and resumes
// after the last event it yielded (Last-Event-ID), so no event is missed
// or repeated; it ends when ctx ends or the loop breaks. An error that a
// retry cannot mend (a 4xx) is yielded and ends it; others are yielded too,
// and the stream goes on after them.
func (c *Client) Events(ctx context.Context, o EventsOptions) iter.Seq2[StreamEvent, error] {
	return func(yield func(StreamEvent, error) bool) {
		last := o.After
		for ctx.Err() == nil {
			err := c.stream(ctx, o, &last, yield)
			if errors.Is(err, errStop) || ctx.Err() != nil {
				return
			}
			var ae *Error
			if errors.As(err, &ae) && ae.Status < 500 {
				yield(StreamEvent{}, err)
				return
			}
			if err != nil && !yield(StreamEvent{}, err) {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(c.retry):
			}
		}
	}
}

var errStop = errors.New("client: the loop stopped")

// stream reads one connection of the event stream.
func (c *Client) stream(ctx context.Context, o EventsOptions, last *string, yield func(StreamEvent, error) bool) error {
	q := url.Values{}
	if o.InstanceID != "" {
		q.Set("instance_id", o.InstanceID)
	}
	if o.Fleet {
		q.Set("scope", "fleet")
	}
	u := c.base + "/v1/events"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	_ = c.authorize(ctx, req)
	req.Header.Set("Accept", "text/event-stream")
	if *last != "" {
		req.Header.Set("Last-Event-ID", *last)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return apiError(resp, body)
	}
	for ev, err := range sse.Read(resp.Body, nil) {
		if err != nil {
			return err
		}
		out := StreamEvent{Type: ev.Type}
		switch ev.Type {
		case "transition", "flapping", "flapping_ended", "incident_opened", "incident_closed", "silence_ended":
			var t Event
			if err := json.Unmarshal([]byte(ev.Data), &t); err != nil {
				return fmt.Errorf("vigil: event %s: %w", ev.LastEventID, err)
			}
			out.ID, out.Transition = ev.LastEventID, &t
		case "reset":
			var r Reset
			if err := json.Unmarshal([]byte(ev.Data), &r); err != nil {
				return fmt.Errorf("vigil: reset event: %w", err)
			}
			out.Reset = &r
			if o.Fleet {
				out.ID = ev.LastEventID
			}
		case "node_down", "node_up":
			var ne NodeEvent
			if err := json.Unmarshal([]byte(ev.Data), &ne); err != nil {
				return fmt.Errorf("vigil: %s event: %w", ev.Type, err)
			}
			out.ID, out.Node = ev.LastEventID, &ne
		default:
			continue
		}
		if out.ID != "" {
			*last = out.ID
		}
		if !yield(out, nil) {
			return errStop
		}
	}
	return nil // the server ended the stream: reconnect
}

// PutNotifier creates or replaces a notifier; created reports which.
func (c *Client) PutNotifier(ctx context.Context, name string, in NotifierInput) (n *Notifier, created bool, err error) {
	r, err := c.raw.PutNotifierWithResponse(ctx, name, in)
	if err != nil {
		return nil, false, err
	}
	typed := r.JSON200
	if r.StatusCode() == http.StatusCreated {
		typed = r.JSON201
	}
	n, err = result(r.HTTPResponse, r.Body, nil, typed, http.StatusOK, http.StatusCreated)
	return n, r.StatusCode() == http.StatusCreated, err
}

// Notifier shows one notifier and where its delivery stands.
func (c *Client) Notifier(ctx context.Context, name string) (*Notifier, error) {
	r, err := c.raw.GetNotifierWithResponse(ctx, name)
	if err != nil {
		return nil, err
	}
	return result(r.HTTPResponse, r.Body, nil, r.JSON200, http.StatusOK)
}

// Notifiers lists every notifier.
func (c *Client) Notifiers(ctx context.Context) ([]Notifier, error) {
	r, err := c.raw.ListNotifiersWithResponse(ctx)
	if err != nil {
		return nil, err
	}
	list, err := result(r.HTTPResponse, r.Body, nil, r.JSON200, http.StatusOK)
	if err != nil {
		return nil, err
	}
	return list.Notifiers, nil
}

// DeleteNotifier removes a notifier.
func (c *Client) DeleteNotifier(ctx context.Context, name string) error {
	r, err := c.raw.DeleteNotifierWithResponse(ctx, name)
	if err != nil {
		return err
	}
	if r.StatusCode() != http.StatusNoContent {
		return apiError(r.HTTPResponse, r.Body)
	}
	return nil
}

// Silence holds notifications and restarts of what matches until a time.
func (c *Client) Silence(ctx context.Context, in SilenceInput) (*Silence, error) {
	r, err := c.raw.CreateSilenceWithResponse(ctx, in)
	if err != nil {
		return nil, err
	}
	return result(r.HTTPResponse, r.Body, nil, r.JSON201, http.StatusCreated)
}

// Silences lists the silences that hold now.
func (c *Client) Silences(ctx context.Context) ([]Silence, error) {
	r, err := c.raw.ListSilencesWithResponse(ctx)
	if err != nil {
		return nil, err
	}
	list, err := result(r.HTTPResponse, r.Body, nil, r.JSON200, http.StatusOK)
	if err != nil {
		return nil, err
	}
	return list.Silences, nil
}

// Unsilence ends a silence now.
func (c *Client) Unsilence(ctx context.Context, id string) error {
	r, err := c.raw.DeleteSilenceWithResponse(ctx, id)
	if err != nil {
		return err
	}
	if r.StatusCode() != http.StatusNoContent {
		return apiError(r.HTTPResponse, r.Body)
	}
	return nil
}

// Incidents lists the node's open incident, if any, and recent closed ones.
func (c *Client) Incidents(ctx context.Context) ([]Incident, error) {
	r, err := c.raw.ListIncidentsWithResponse(ctx)
	if err != nil {
		return nil, err
	}
	list, err := result(r.HTTPResponse, r.Body, nil, r.JSON200, http.StatusOK)
	if err != nil {
		return nil, err
	}
	return list.Incidents, nil
}
