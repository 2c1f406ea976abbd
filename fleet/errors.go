package fleet

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/fleet/peer"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/input"
)

// Error is an answer of the fleet in the API's terms: the API renders it
// with its status, code, field and owner (the methods it looks for).
type Error struct {
	Status  int
	Code    string
	Message string
	Field   string
	Owner   string
}

func (e *Error) Error() string { return e.Message }

// StatusCode is the HTTP status.
func (e *Error) StatusCode() int { return e.Status }

// ErrorCode is the API's error code.
func (e *Error) ErrorCode() string { return e.Code }

// ErrorField names the offending field, if any.
func (e *Error) ErrorField() string { return e.Field }

// ErrorOwner names the node that owns the instance, for a conflict.
func (e *Error) ErrorOwner() string { return e.Owner }

func conflict(owner, id string) error {
	return &Error{Status: http.StatusConflict, Code: "conflict", Owner: owner,
		Message: fmt.Sprintf("instance %s is owned by node %s: register it there, or move it (POST /v1/instances/%s/move)", id, owner, id)}
}

func unavailable(format string, args ...any) error {
	return &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: fmt.Sprintf(format, args...)}
}

func nodeDown(node, id string) error {
	return &Error{Status: http.StatusServiceUnavailable, Code: "node_down", Owner: node,
		Message: fmt.Sprintf("node %s, which owns instance %s, is down", node, id)}
}

func invalidField(field, format string, args ...any) error {
	return &Error{Status: http.StatusBadRequest, Code: "invalid_request", Field: field, Message: fmt.Sprintf(format, args...)}
}

// toWire renders an error of the local scheduler for another node.
func toWire(err error) *peer.Error {
	var fe *Error
	var he *health.FieldError
	var ie *input.Error
	switch {
	case errors.As(err, &fe):
		return &peer.Error{Status: int32(fe.Status), Code: fe.Code, Message: fe.Message, Field: fe.Field, Owner: fe.Owner}
	case errors.As(err, &he):
		return &peer.Error{Status: http.StatusBadRequest, Code: "invalid_request", Message: he.Error(), Field: he.Field}
	case errors.As(err, &ie):
		return &peer.Error{Status: http.StatusBadRequest, Code: "invalid_request", Message: ie.Message, Field: ie.Field}
	case errors.Is(err, actors.ErrNotFound):
		return &peer.Error{Status: http.StatusNotFound, Code: "not_found", Message: "no such instance"}
	}
	return &peer.Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: err.Error()}
}

// fromWire is the error another node answered.
func fromWire(e *peer.Error) error {
	if e.Status == http.StatusNotFound && e.Code == "not_found" {
		return actors.ErrNotFound
	}
	return &Error{Status: int(e.Status), Code: e.Code, Message: e.Message, Field: e.Field, Owner: e.Owner}
}
