// Package input reads what clients write: one JSON value decoded exactly
// into vigil's types (member names matched case and all; unknown members,
// duplicate members, invalid UTF-8 and trailing data refused) with errors
// that name the field by its path and say in words what it must be, and
// the JSON merge patch (RFC 7396) of an instance's spec as it was written.
//
// Concurrency contract: stateless functions, safe for concurrent use.
package input

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/vigilhq/vigil/health"
)

// Error is input that cannot be read: Field is the JSON path of the
// offending field ("health_check.exec.command[1]"), empty for the body as a
// whole; Message says what is wrong and names the field itself.
type Error struct {
	Field   string
	Message string
}

func (e *Error) Error() string { return e.Message }

func invalid(field, format string, args ...any) error {
	return &Error{Field: field, Message: fmt.Sprintf(format, args...)}
}

// Decode decodes one JSON value into v, exactly: member names match case
// and all, an unknown member, a duplicate member, invalid UTF-8 or trailing
// data is an error, and every error names the field by its full path in
// words a client understands (no Go types, no Go time layouts).
func Decode(b []byte, v any) error {
	if len(bytes.TrimSpace(b)) == 0 {
		return invalid("", "body must be a JSON object")
	}
	err := jsonv2.Unmarshal(b, v, jsonv2.RejectUnknownMembers(true))
	if err == nil {
		return nil
	}
	root := reflect.TypeOf(v)
	var se *jsonv2.SemanticError
	var sy *jsontext.SyntacticError
	switch {
	case errors.As(err, &se):
		field, t := fieldOf(root, se.JSONPointer)
		switch {
		case errors.Is(se.Err, jsonv2.ErrUnknownName):
			return invalid(field, "unknown field %s", field)
		case field == "":
			return invalid("", "body must be a JSON object")
		}
		return invalid(field, "%s must be %s", field, kindWanted(t))
	case errors.As(err, &sy):
		field, _ := fieldOf(root, sy.JSONPointer)
		switch {
		case errors.Is(sy.Err, jsontext.ErrDuplicateName):
			return invalid(field, "duplicate field %s", field)
		case isInvalidUTF8(sy.Err) && field != "":
			return invalid(field, "%s must be valid UTF-8", field)
		case isInvalidUTF8(sy.Err):
			return invalid("", "body must be valid UTF-8")
		}
		msg := strings.TrimPrefix(sy.Err.Error(), "jsontext: ")
		if field != "" {
			return invalid(field, "malformed JSON in %s at byte %d: %s", field, sy.ByteOffset, msg)
		}
		return invalid("", "malformed JSON at byte %d: %s", sy.ByteOffset, msg)
	}
	return invalid("", "malformed JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
}

// isInvalidUTF8 recognizes the decoder's error for invalid UTF-8, which it
// does not export.
func isInvalidUTF8(err error) bool {
	return err != nil && strings.Contains(err.Error(), "invalid UTF-8")
}

// CheckObject checks that b is one JSON object as Decode would read it
// (no duplicate members, valid UTF-8); what names the value in errors.
func CheckObject(b []byte, what string) error {
	var obj map[string]jsontext.Value
	err := jsonv2.Unmarshal(b, &obj)
	var se *jsonv2.SemanticError
	if errors.As(err, &se) && len(se.JSONPointer) == 0 {
		return invalid("", "%s must be a JSON object", what)
	}
	if err != nil {
		return Decode(b, &map[string]any{})
	}
	if obj == nil {
		return invalid("", "%s must be a JSON object", what)
	}
	return nil
}

var (
	lifecycleType = reflect.TypeFor[health.Lifecycle]()
	timeType      = reflect.TypeFor[time.Time]()
)

// kindWanted says in words what a field of type t must be.
func kindWanted(t reflect.Type) string {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == nil:
		return "a valid value"
	case t == lifecycleType:
		return "one of " + health.LifecycleNames
	case t == timeType:
		return health.RFC3339Example
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.String {
			return "an array of strings"
		}
		return "an array"
	case reflect.Map, reflect.Struct:
		return "a JSON object"
	}
	return "a valid value"
}

// fieldOf renders a JSON pointer into a document of type root as the dotted
// path errors name (health_check.exec.command[0]), and returns the type
// found there (nil where the path leaves the type).
func fieldOf(root reflect.Type, ptr jsontext.Pointer) (string, reflect.Type) {
	var b strings.Builder
	t := root
	for tok := range ptr.Tokens() {
		for t != nil && t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		var kind reflect.Kind
		if t != nil {
			kind = t.Kind()
		}
		switch kind {
		case reflect.Slice, reflect.Array:
			if _, err := strconv.Atoi(tok); err == nil {
				b.WriteString("[" + tok + "]")
				t = t.Elem()
				continue
			}
			t = nil
		case reflect.Map:
			t = t.Elem()
		case reflect.Struct:
			t = jsonFields(t)[tok]
		default:
			t = nil
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(tok)
	}
	return b.String(), t
}

// jsonFields maps the JSON names of a struct's fields, embedded ones
// included, to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == "-" || !f.IsExported() && !f.Anonymous {
			continue
		}
		if f.Anonymous && tag == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range jsonFields(ft) {
					out[k] = v
				}
				continue
			}
		}
		if tag == "" {
			tag = f.Name
		}
		out[tag] = f.Type
	}
	return out
}

// MergePatch applies a JSON merge patch (RFC 7396) to an instance's spec as
// it was written, and decodes the result as exactly as a PUT body: a null
// removes a member, and a patch that leaves something invalid is an error
// naming the field. The patch itself must be one JSON object without
// duplicate members; id and health_status cannot be patched.
func MergePatch(cur health.InstanceSpec, patch []byte) (health.InstanceSpec, error) {
	if err := CheckObject(patch, "merge patch"); err != nil {
		return cur, err
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(patch, &obj); err != nil {
		return cur, invalid("", "merge patch must be a JSON object")
	}
	for _, f := range []string{"id", "health_status"} {
		if _, ok := obj[f]; ok {
			return cur, invalid(f, "%s cannot be changed", f)
		}
	}
	doc, err := json.Marshal(cur)
	if err != nil {
		return cur, err
	}
	merged, err := jsonpatch.MergePatch(doc, patch)
	if err != nil {
		return cur, invalid("", "merge patch: %v", err)
	}
	var next health.InstanceSpec
	if err := Decode(merged, &next); err != nil {
		return cur, err
	}
	return next, nil
}
