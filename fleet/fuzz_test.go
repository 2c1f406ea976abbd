package fleet

import (
	"encoding/base64"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzDecodeCursor checks the decoder of the fleet stream's position (the
// Last-Event-ID a client sends back, base64url JSON of every node's last
// sequence number): anything is refused with a 400 naming Last-Event-ID,
// or is a position the stream can advance (a map it writes to) that
// encodes to a cursor decoding to the same position.
func FuzzDecodeCursor(f *testing.F) {
	for _, s := range []string{"", "0", fleetCursor{"a": 1, "node-2": 18446744073709551615}.encode(),
		base64.RawURLEncoding.EncodeToString([]byte(`null`)), base64.RawURLEncoding.EncodeToString([]byte(`{"A":1}`)),
		base64.RawURLEncoding.EncodeToString([]byte(`{"a":-1}`)), base64.RawURLEncoding.EncodeToString([]byte(`{"a":1,"a":2}`)),
		"e30", "e30=", "!!"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		pos, resume, err := decodeCursor(s)
		if err != nil {
			var fe *Error
			require.True(t, errors.As(err, &fe), "%T %v", err, err)
			require.Equal(t, "Last-Event-ID", fe.Field)
			require.Equal(t, 400, fe.Status)
			require.Nil(t, pos)
			return
		}
		require.NotNil(t, pos, "the stream writes every node's position into it")
		require.Equal(t, s != "", resume)
		for name := range pos {
			require.NoError(t, ValidName(name))
		}
		pos["node-x"] = 1 // what the stream does with every event
		delete(pos, "node-x")
		again, resume, err := decodeCursor(pos.encode())
		require.NoError(t, err)
		require.True(t, resume)
		require.Equal(t, pos, again, "a position encodes to a cursor of the same position")
	})
}
