package actors

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/health"
)

func stopped() health.InstanceSpec {
	return health.InstanceSpec{State: health.Stopped, Network: &health.Network{IP: "127.0.0.1"},
		HealthCheck: &health.PolicySpec{TCP: &health.TCPSpec{Port: 9}}}
}

func TestPutManyRegistersEachItemAlone(t *testing.T) {
	ctx := context.Background()
	s, err := New(ctx)
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close(ctx)) }()
	_, _, err = s.Put(ctx, "vm-b", stopped())
	require.NoError(t, err)

	renamed := stopped()
	renamed.Name = "renamed"
	bad := stopped()
	bad.HealthCheck.Interval, bad.HealthCheck.Timeout = "1s", "2s"
	res := s.PutMany(ctx, []BatchItem{
		{ID: "vm-c", Spec: stopped()},
		{ID: "vm-b", Spec: renamed},
		{ID: "vm-x", Spec: bad},
		{ID: "no good", Spec: stopped()},
		{ID: "vm-c", Spec: renamed},
		{ID: "vm-a", Spec: stopped()},
	})
	require.Len(t, res, 6)
	assert.Equal(t, BatchResult{Created: true}, res[0])
	assert.Equal(t, BatchResult{}, res[1])
	var fe *health.FieldError
	for i, field := range map[int]string{2: "health_check.timeout", 3: "id", 4: "id"} {
		require.True(t, errors.As(res[i].Err, &fe), "item %d: %v", i, res[i].Err)
		assert.Equal(t, field, fe.Field, "item %d", i)
	}
	assert.Equal(t, "id vm-c is the id of item 0 too: an id may appear once in a batch", res[4].Err.Error())
	assert.Equal(t, BatchResult{Created: true}, res[5])

	page, next := s.List(Filter{}, "", 10)
	assert.Empty(t, next)
	require.Len(t, page, 3)
	assert.Equal(t, []string{"vm-a", "vm-b", "vm-c"}, []string{page[0].ID, page[1].ID, page[2].ID})
	assert.Equal(t, "renamed", page[1].Name)
	assert.Empty(t, page[2].Name, "the first of the twice-given id is registered")
}

// failingStore refuses every spec write.
type failingStore struct{ *MemoryStore }

func (failingStore) PutInstance(context.Context, health.Instance) error {
	return errors.New("disk on fire")
}

func TestPutManyThatCannotBeStoredChangesNothing(t *testing.T) {
	ctx := context.Background()
	s, err := New(ctx, WithStore(failingStore{NewMemoryStore()}))
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close(ctx)) }()
	res := s.PutMany(ctx, []BatchItem{{ID: "vm-1", Spec: stopped()}, {ID: "vm-2", Spec: stopped()}})
	for _, r := range res {
		assert.ErrorIs(t, r.Err, ErrStorage)
	}
	assert.Equal(t, 0, s.Len())
	page, _ := s.List(Filter{}, "", 10)
	assert.Empty(t, page)
	_, err = s.Get(ctx, "vm-1")
	assert.ErrorIs(t, err, ErrNotFound)
}

// TestPutManyBatchesNeverWaitOnEachOther runs batches of the same ids in
// opposite orders against each other and against single changes.
func TestPutManyBatchesNeverWaitOnEachOther(t *testing.T) {
	ctx := context.Background()
	s, err := New(ctx)
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close(ctx)) }()
	const n = 100
	up, down := make([]BatchItem, n), make([]BatchItem, n)
	for i := range n {
		up[i] = BatchItem{ID: fmt.Sprintf("vm-%03d", i), Spec: stopped()}
		down[n-1-i] = up[i]
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for range 20 {
				items := up
				if w%2 == 1 {
					items = down
				}
				for _, r := range s.PutMany(ctx, items) {
					assert.NoError(t, r.Err)
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 200 {
			id := up[(i*37)%n].ID
			if i%2 == 0 {
				_ = s.Remove(ctx, id)
			} else {
				_, _, err := s.Put(ctx, id, stopped())
				assert.NoError(t, err)
			}
		}
	})
	wg.Wait()
	for _, r := range s.PutMany(ctx, up) {
		require.NoError(t, r.Err)
	}
	assert.Equal(t, n, s.Len())
}

func TestIndexAscendsFromTheCursorWithinThePrefix(t *testing.T) {
	x := newIDIndex()
	for _, id := range []string{"b-2", "a-1", "b-1", "c-1", "b-3", "a-2"} {
		x.insert(&entry{id: id})
	}
	x.remove(&entry{id: "b-3"})
	ids := func(prefix, cursor string, max int) []string {
		var out []string
		x.ascend(prefix, cursor, func(e *entry) bool {
			out = append(out, e.id)
			return len(out) < max
		})
		return out
	}
	assert.Equal(t, []string{"a-1", "a-2", "b-1", "b-2", "c-1"}, ids("", "", 10))
	assert.Equal(t, []string{"b-1", "b-2"}, ids("b", "", 10))
	assert.Equal(t, []string{"b-2"}, ids("b", "b-1", 10), "after the cursor")
	assert.Equal(t, []string{"b-1", "b-2"}, ids("b", "a-9", 10), "a cursor below the prefix")
	assert.Empty(t, ids("b", "b-2", 10))
	assert.Empty(t, ids("d", "", 10))
	assert.Equal(t, []string{"a-2", "b-1"}, ids("", "a-1", 2))
}
