package api

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/labstack/echo/v4"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/input"
)

// Limits of a batch registration (POST /v1/instances:batch).
const (
	// MaxBatch is the most instances one batch may hold.
	MaxBatch = 1000
	// MaxBatchBody is the largest body of a batch: 8 KiB an item on
	// average, where a typical spec is a few hundred bytes and one with a
	// CA bundle a few KiB. Each item is still at most MaxBody, as the body
	// of a single PUT is.
	MaxBatchBody = 8 << 20
	// DefaultMaxBatches caps batches in progress at once: each holds its
	// body and up to MaxBatch decoded specs, so memory stays bounded
	// (≈ 4 × 8 MiB of bodies), and two cores are busy with far fewer.
	DefaultMaxBatches = 4
)

// Batcher is a Registry that registers many instances at once:
// *actors.Scheduler (one commit of the store, one round trip to spawn the
// new actors) and the fleet's registry (ownership claimed in few etcd
// transactions). A Registry without it gets the items as single Puts, at
// most batchFanOut at a time.
type Batcher interface {
	PutMany(ctx context.Context, items []actors.BatchItem) []actors.BatchResult
}

// batchFanOut is how many single Puts of a batch run at once on a Registry
// that is not a Batcher.
const batchFanOut = 64

// BatchBody is the body of a batch registration.
type batchItem struct {
	ID string `json:"id"`
	health.InstanceSpec
}

// BatchResult is one item's answer: created or updated, or its error (the
// field prefixed by the item: instances[3].health_check.timeout).
type BatchResult struct {
	ID     string       `json:"id"`
	Result string       `json:"result,omitempty"`
	Error  *ErrorDetail `json:"error,omitempty"`
	// Status is, with Error, the HTTP status a single PUT of the item
	// would have answered.
	Status int `json:"status,omitempty"`
}

// BatchResponse answers a batch: one result per item, in the items' order,
// and how many of each there are.
type BatchResponse struct {
	Results []BatchResult `json:"results"`
	Created int           `json:"created"`
	Updated int           `json:"updated"`
	Failed  int           `json:"failed"`
}

// Results of an item.
const (
	resultCreated = "created"
	resultUpdated = "updated"
)

// batch registers many instances: every item checked as a single PUT would
// be, each failing alone; the valid ones registered, durable when the answer
// comes.
func (h *handlers) batch(c echo.Context) error {
	b, err := bodyUpTo(c, MaxBatchBody, echo.MIMEApplicationJSON)
	if err != nil {
		return err
	}
	raws, err := readBatch(b)
	if err != nil {
		return err
	}
	resp := BatchResponse{Results: make([]BatchResult, len(raws))}
	items := make([]actors.BatchItem, 0, len(raws))
	at := make([]int, 0, len(raws)) // index of each of items among the results
	first := make(map[string]int, len(raws))
	for i, raw := range raws {
		var it batchItem
		err := decodeItem(i, raw, &it)
		resp.Results[i].ID = it.ID
		if err == nil {
			err = health.ValidateID(it.ID)
		}
		if j, dup := first[it.ID]; dup && err == nil {
			err = &health.FieldError{Field: "id", Message: fmt.Sprintf("%s is the id of instances[%d] too: an id may appear once in a batch", it.ID, j)}
		}
		if err != nil {
			r := &resp.Results[i]
			r.Status, r.Error = itemError(i, err)
			if r.Error.Field == "" {
				r.Error.Field = itemName(i) // the item as a whole
			}
			continue
		}
		first[it.ID] = i
		items = append(items, actors.BatchItem{ID: it.ID, Spec: it.InstanceSpec})
		at = append(at, i)
	}
	for k, r := range h.putMany(c.Request().Context(), items) {
		i := at[k]
		switch {
		case r.Err != nil:
			resp.Results[i].Status, resp.Results[i].Error = itemError(i, r.Err)
		case r.Created:
			resp.Results[i].Result = resultCreated
		default:
			resp.Results[i].Result = resultUpdated
		}
	}
	for _, r := range resp.Results {
		switch r.Result {
		case resultCreated:
			resp.Created++
		case resultUpdated:
			resp.Updated++
		default:
			resp.Failed++
		}
	}
	return c.JSON(http.StatusOK, resp)
}

// putMany registers the decoded items with the Registry, in one call when it
// is a Batcher.
func (h *handlers) putMany(ctx context.Context, items []actors.BatchItem) []actors.BatchResult {
	if len(items) == 0 {
		return nil
	}
	if b, ok := h.reg.(Batcher); ok {
		return b.PutMany(ctx, items)
	}
	out := make([]actors.BatchResult, len(items))
	slots := make(chan struct{}, batchFanOut)
	var wg sync.WaitGroup
	for k := range items {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			_, out[k].Created, out[k].Err = h.reg.Put(ctx, items[k].ID, items[k].Spec)
		})
	}
	wg.Wait()
	return out
}

// itemError renders an item's error as the API would a single PUT's, with
// its field prefixed by the item.
func itemError(i int, err error) (int, *ErrorDetail) {
	status, d := classify(err)
	if d.Field != "" {
		d.Field = itemName(i) + "." + d.Field
	}
	return status, &d
}

// itemName is how errors name the item at index i.
func itemName(i int) string { return "instances[" + strconv.Itoa(i) + "]" }

// decodeItem decodes one item exactly as the body of a single PUT (with its
// id beside the spec).
func decodeItem(i int, raw jsontext.Value, it *batchItem) error {
	switch {
	case len(raw) > MaxBody:
		return fail(http.StatusRequestEntityTooLarge, "too_large", itemName(i)+" is over 1 MiB, the limit of one instance's spec", "")
	case raw.Kind() != '{':
		return &input.Error{Message: itemName(i) + " must be a JSON object"}
	}
	return input.Decode(raw, it)
}

// readBatch reads the body {"instances": [item, ...]} strictly (one object,
// no other member, no duplicate, 1 to MaxBatch items, nothing after it),
// leaving each item raw: an item is decoded on its own, so that its errors
// are its own and the other items are still registered.
func readBatch(b []byte) ([]jsontext.Value, error) {
	// duplicate names and invalid UTF-8 inside an item are the item's
	// errors (decodeItem finds them); outside, readBatch's
	dec := jsontext.NewDecoder(bytes.NewReader(b), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	malformed := func() error {
		// the strict decoder says what is wrong and where
		var v struct {
			Instances []jsontext.Value `json:"instances"`
		}
		if err := input.Decode(b, &v); err != nil {
			return err
		}
		return invalid("", "body must be a JSON object")
	}
	if tok, err := dec.ReadToken(); err != nil || tok.Kind() != '{' {
		return nil, malformed()
	}
	var items []jsontext.Value
	seen := false
	for dec.PeekKind() != '}' {
		tok, err := dec.ReadToken()
		if err != nil {
			return nil, malformed()
		}
		name := tok.String()
		switch {
		case name != "instances":
			return nil, invalid(name, "unknown field %s", name)
		case seen:
			return nil, invalid(name, "duplicate field %s", name)
		case dec.PeekKind() != '[':
			return nil, invalid(name, "instances must be an array of instances, each with its id")
		}
		seen = true
		if _, err := dec.ReadToken(); err != nil {
			return nil, malformed()
		}
		for dec.PeekKind() != ']' {
			v, err := dec.ReadValue()
			if err != nil {
				return nil, malformed()
			}
			if len(items) == MaxBatch {
				return nil, invalid("instances", "instances has more than %d items: send at most %d in one request", MaxBatch, MaxBatch)
			}
			items = append(items, v.Clone())
		}
		if _, err := dec.ReadToken(); err != nil {
			return nil, malformed()
		}
	}
	if _, err := dec.ReadToken(); err != nil {
		return nil, malformed()
	}
	if _, err := dec.ReadToken(); err != io.EOF {
		return nil, malformed()
	}
	switch {
	case !seen:
		return nil, invalid("instances", "instances is required: an array of instances, each with its id")
	case len(items) == 0:
		return nil, invalid("instances", "instances is empty: send 1 to %d instances", MaxBatch)
	}
	return items, nil
}
