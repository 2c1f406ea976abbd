package act

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The position moves over an event only once it and every event before it
// are delivered or passed over, whatever order the lanes deliver in; the
// events held are bounded, and a stop ends a wait for a slot.
func TestInflightMovesThePositionOverTheDeliveredRunOnly(t *testing.T) {
	stop := make(chan struct{})
	f := newInflight(10)
	for seq := uint64(11); seq <= 16; seq++ {
		require.True(t, f.add(seq, seq == 14, stop)) // 14 is passed over
	}
	select {
	case <-f.emptied():
		t.Fatal("events are held")
	default:
	}
	for _, seq := range []uint64{12, 13, 16} {
		f.delivered(seq)
		assert.Equal(t, uint64(10), f.position(), "11 is not delivered yet")
	}
	f.delivered(11)
	assert.Equal(t, uint64(14), f.position(), "11-13 delivered, 14 passed over")
	f.delivered(99) // not held: nothing moves
	assert.Equal(t, uint64(14), f.position())
	f.delivered(15)
	assert.Equal(t, uint64(16), f.position())
	select {
	case <-f.emptied():
	default:
		t.Fatal("nothing is held")
	}

	for seq := uint64(17); seq < 17+inFlight; seq++ {
		require.True(t, f.add(seq, false, stop))
	}
	added := make(chan bool)
	go func() { added <- f.add(17+inFlight, false, stop) }()
	select {
	case <-added:
		t.Fatal("a slot was taken beyond the bound")
	case <-time.After(50 * time.Millisecond):
	}
	f.delivered(17) // a slot comes back
	assert.True(t, <-added)
	go func() { added <- f.add(18+inFlight, false, stop) }()
	close(stop)
	assert.False(t, <-added, "a stop ends the wait")
	assert.False(t, f.drain(stop))
}
