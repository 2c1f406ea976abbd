package clock

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestFakeRunsTimersInOrder(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := NewFake(t0)
	var got []time.Duration
	f.AfterFunc(3*time.Second, func() { got = append(got, f.Now().Sub(t0)) })
	f.AfterFunc(time.Second, func() { got = append(got, f.Now().Sub(t0)) })
	stopped := f.AfterFunc(2*time.Second, func() { t.Error("stopped timer ran") })
	assert.True(t, stopped.Stop())
	assert.Equal(t, 2, f.Pending())
	f.Advance(2 * time.Second)
	assert.Equal(t, []time.Duration{time.Second}, got)
	f.Advance(5 * time.Second)
	assert.Equal(t, []time.Duration{time.Second, 3 * time.Second}, got)
	assert.Equal(t, t0.Add(7*time.Second), f.Now())
	assert.Zero(t, f.Pending())
}

func TestRealClock(t *testing.T) {
	done := make(chan struct{})
	Real.AfterFunc(time.Millisecond, func() { close(done) })
	<-done
	assert.WithinDuration(t, time.Now(), Real.Now(), time.Second)
}
