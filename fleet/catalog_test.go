package fleet

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/health"
)

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func TestCatalogTakesNoOlderRevision(t *testing.T) {
	c := newCatalog()
	require.True(t, c.setOwner("vm-1", "a", 10))
	require.True(t, c.setOwner("vm-1", "b", 12), "a move's own transaction")
	assert.False(t, c.setOwner("vm-1", "a", 10), "the watch's older event arrives after it")
	r, ok := c.get("vm-1")
	require.True(t, ok)
	assert.Equal(t, "b", r.owner)
	assert.True(t, c.setOwner("vm-1", "b", 12), "the same revision again is applied (and changes nothing)")
	assert.True(t, c.setOwner("vm-1", "", 13))
	_, ok = c.get("vm-1")
	assert.False(t, ok)
}

func TestCatalogCountsAndShowsDownNodesAsUnknown(t *testing.T) {
	c := newCatalog()
	c.setMember(member{Name: "a", Peer: "127.0.0.1:1"}, t0)
	c.setMember(member{Name: "b", Peer: "127.0.0.2:1"}, t0)
	c.setUp("a", true, t0)
	c.setUp("b", true, t0)
	for i, st := range []health.Status{health.StatusHealthy, health.StatusUnhealthy, health.StatusHealthy} {
		id := []string{"vm-1", "vm-2", "vm-3"}[i]
		owner := []string{"a", "a", "b"}[i]
		c.setOwner(id, owner, int64(i+1))
		c.setStatus(id, st, t0, map[string]string{"n": owner})
	}
	c.setOwner("vm-4", "b", 9) // registered, no status published yet
	total, per := c.summary()
	assert.Equal(t, 2, total[health.StatusHealthy])
	assert.Equal(t, 1, total[health.StatusUnhealthy])
	assert.Equal(t, 1, total[health.StatusStarting])
	assert.Equal(t, 1, per["b"][health.StatusHealthy])

	changed := func() <-chan struct{} { _, ch := c.membersNow(); return ch }()
	require.True(t, c.setUp("b", false, t0.Add(time.Minute)))
	select {
	case <-changed:
	default:
		t.Fatal("a membership change is signalled")
	}
	assert.False(t, c.setUp("b", false, t0.Add(2*time.Minute)), "no change, no signal")
	total, per = c.summary()
	assert.Equal(t, 2, total[health.StatusUnknown], "a dead node's instances are unknown")
	assert.Equal(t, 1, total[health.StatusHealthy])
	assert.Equal(t, 0, total[health.StatusStarting])
	assert.Equal(t, 2, per["b"][health.StatusUnknown])
	assert.Equal(t, 2, c.instances("b"))

	recs, shown, more := c.page([]health.Status{health.StatusUnknown}, nil, "", 10)
	assert.False(t, more)
	require.Len(t, recs, 2)
	assert.Equal(t, []string{"vm-3", "vm-4"}, []string{recs[0].id, recs[1].id})
	assert.Equal(t, []health.Status{health.StatusUnknown, health.StatusUnknown}, shown)

	recs, _, more = c.page(nil, nil, "vm-1", 2)
	onA, _, _ := c.page(nil, map[string]string{"n": "a"}, "", 10)
	assert.Len(t, onA, 2, "by label")
	assert.True(t, more)
	assert.Equal(t, []string{"vm-2", "vm-3"}, []string{recs[0].id, recs[1].id})
	assert.Equal(t, []string{"vm-3", "vm-4"}, c.ownedBy("b"))
}

func TestFleetCursor(t *testing.T) {
	c := fleetCursor{"a": 7, "b": 0}
	back, resume, err := decodeCursor(c.encode())
	require.NoError(t, err)
	assert.True(t, resume)
	assert.Equal(t, c, back)
	_, resume, err = decodeCursor("")
	require.NoError(t, err)
	assert.False(t, resume, "no cursor: live from now")
	_, resume, err = decodeCursor("0")
	require.NoError(t, err)
	assert.True(t, resume, "0: all that is retained")
	for _, bad := range []string{"12", "!!", "eyJBIjoxfQ"} { // the last: {"A":1}, not a node name
		_, _, err := decodeCursor(bad)
		var e *Error
		require.ErrorAs(t, err, &e, bad)
		assert.Equal(t, "Last-Event-ID", e.Field)
	}
}

func TestValidName(t *testing.T) {
	for name, ok := range map[string]bool{"n1": true, "host-7": true, "": false, "Host": false, "a.b": false,
		"a_b": false, string(make([]byte, 64)): false} {
		assert.Equal(t, ok, ValidName(name) == nil, "%q", name)
	}
}
