package health

import "fmt"

// FieldError is a rule violation on one field of an instance or policy. Field
// is the JSON path of the offending field ("health_check.timeout").
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + " " + e.Message }

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, args...)}
}
