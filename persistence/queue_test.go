package persistence

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func meta(t *testing.T, s *Store, k string) (string, bool) {
	t.Helper()
	var got string
	found := false
	require.NoError(t, s.Meta(k, func(key string, value []byte) error {
		if key == k {
			got, found = string(value), true
		}
		return nil
	}))
	return got, found
}

// A queued record lands with the writer's next flush, no one waiting for
// it, and is there after a restart; queued while writes fail, it is
// dropped without holding anything up, and a later one lands once space
// returns.
func TestQueuedMetaLandsWithTheNextFlush(t *testing.T) {
	var free atomic.Int64
	free.Store(1 << 40)
	dir := t.TempDir()
	opt := Options{Logger: zerolog.Nop(), FlushInterval: 10 * time.Millisecond,
		FreeSpace: func(string) (int64, error) { return free.Load(), nil }}
	s, err := Open(dir, opt)
	require.NoError(t, err)
	s.QueueMeta("cursor/a", []byte("7"))
	require.Eventually(t, func() bool { v, ok := meta(t, s, "cursor/a"); return ok && v == "7" }, 5*time.Second, 5*time.Millisecond)

	free.Store(FreeFloor - 1)
	s.QueueMeta("cursor/a", []byte("8"))
	require.Eventually(t, func() bool { return s.Health() != nil }, 5*time.Second, 5*time.Millisecond)
	v, _ := meta(t, s, "cursor/a")
	assert.Equal(t, "7", v, "the failed commit dropped it")
	free.Store(1 << 40)
	s.QueueMeta("cursor/a", []byte("9"))
	require.Eventually(t, func() bool { v, _ := meta(t, s, "cursor/a"); return v == "9" }, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, s.PutMeta(context.Background(), "cursor/b", []byte("1")), "a waited write is not held up")
	require.NoError(t, s.Close())
	s.QueueMeta("cursor/a", []byte("10")) // closed: dropped, no panic

	s, err = Open(dir, opt)
	require.NoError(t, err)
	defer s.Close()
	v, _ = meta(t, s, "cursor/a")
	assert.Equal(t, "9", v)
}
