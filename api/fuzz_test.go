package api

import (
	"encoding/base64"
	"errors"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/health"
)

// FuzzListCursor checks the decoder of the list's opaque cursors, for each
// order: anything is refused with a 400 naming cursor, or is a position
// (an instance id, and the status or time key of the order) that encodes to
// a cursor decoding to the same position; and a cursor of one order is
// never read as one of another.
func FuzzListCursor(f *testing.F) {
	for _, s := range []string{"", encodeCursor("vm-1"), listCursor(sortStatus, pagePos{id: "vm-1", status: health.StatusUnhealthy}),
		listCursor(sortSince, pagePos{id: "a", at: -5}), listCursor(sortNewest, pagePos{id: "z.z", at: 1 << 62}),
		base64.RawURLEncoding.EncodeToString([]byte("v1:")), base64.RawURLEncoding.EncodeToString([]byte("v2:since:+7:x")),
		base64.RawURLEncoding.EncodeToString([]byte("v2:status:bogus:x")), base64.RawURLEncoding.EncodeToString([]byte("v1:..")),
		"dj", "!!", "v1:vm-1"} {
		f.Add(s)
	}
	orders := []string{sortID, sortStatus, sortSince, sortNewest}
	f.Fuzz(func(t *testing.T, cursor string) {
		read := 0
		for _, order := range orders {
			p, err := readCursor(order, cursor)
			if err != nil {
				var ae *apiError
				require.True(t, errors.As(err, &ae), "%T %v", err, err)
				require.Equal(t, http.StatusBadRequest, ae.status)
				require.Equal(t, "cursor", ae.detail.Field)
				require.Contains(t, ae.detail.Message, "cursor")
				continue
			}
			if cursor == "" {
				require.Equal(t, pagePos{}, p)
				continue
			}
			read++
			require.NoError(t, health.ValidateID(p.id), "a cursor names an instance id")
			if order == sortStatus {
				require.True(t, p.status.Valid())
			}
			again, err := readCursor(order, listCursor(order, p))
			require.NoError(t, err)
			require.Equal(t, p, again, "sort=%s: a position encodes to a cursor of the same position", order)
		}
		require.LessOrEqual(t, read, 1, "a cursor belongs to one order (since and -since differ by their name)")
	})
}
