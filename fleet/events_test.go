package fleet

import (
	"encoding/base64"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Found by FuzzDecodeCursor: a Last-Event-ID of base64url "null" decoded to
// a nil position, and the stream's first event panicked writing into it
// (assignment to entry in nil map). It is refused like any position this
// fleet did not issue.
func TestANullCursorIsRefused(t *testing.T) {
	_, _, err := decodeCursor(base64.RawURLEncoding.EncodeToString([]byte("null")))
	var fe *Error
	require.True(t, errors.As(err, &fe), "%v", err)
	assert.Equal(t, "Last-Event-ID", fe.Field)
	assert.Equal(t, 400, fe.Status)

	pos, resume, err := decodeCursor(base64.RawURLEncoding.EncodeToString([]byte("{}")))
	require.NoError(t, err)
	assert.True(t, resume)
	pos["a"] = 1
}
