package act

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// An event of the log is rendered once for every notifier: the second asks
// for the same seq and gets the same body; the kept bodies are bounded, the
// oldest going first; a reset (whose id is not its seq's) is never kept.
func TestAnEventIsRenderedOnceForEveryNotifier(t *testing.T) {
	n := &Notifiers{node: "n1"}
	ev := func(seq uint64) actors.Event {
		return actors.Event{Seq: seq, InstanceID: "vm-1",
			Transition: health.Transition{From: health.StatusHealthy, To: health.StatusUnhealthy, At: time.Unix(1700000000, 0)}}
	}
	first, err := n.render(ev(1), "n1-1")
	require.NoError(t, err)
	again, err := n.render(ev(1), "n1-1")
	require.NoError(t, err)
	assert.Same(t, &first[0], &again[0], "the body rendered for the first notifier")
	want, err := CloudEvent(ev(1), "n1-1", "n1")
	require.NoError(t, err)
	assert.Equal(t, want, first)

	for seq := uint64(2); seq <= renderedKept+10; seq++ {
		_, err := n.render(ev(seq), "n1-x")
		require.NoError(t, err)
	}
	assert.Len(t, n.rendered.bySeq, renderedKept)
	assert.NotContains(t, n.rendered.bySeq, uint64(1), "the oldest went first")
	assert.Contains(t, n.rendered.bySeq, uint64(renderedKept+10))

	reset := actors.Event{Seq: 5, Kind: "reset", Details: map[string]any{"requested_seq": 1, "oldest_seq": 5}}
	body, err := n.render(reset, "n1-reset-5")
	require.NoError(t, err)
	assert.Contains(t, string(body), `"id":"n1-reset-5"`)
	kept, _ := n.render(ev(5), "n1-5")
	assert.NotContains(t, string(kept), "reset")
}

// A lane's reused HMAC signs each body as a fresh one would.
func TestNotifierSignsEachBodyAfresh(t *testing.T) {
	l := &lane{}
	for _, body := range []string{`{"a":1}`, ``, `{"b":2}`, `{"a":1}`} {
		assert.Equal(t, Sign("s3cret", []byte(body)), l.sign("s3cret", []byte(body)), "%q", body)
	}
}

// The signature is HMAC-SHA256 as RFC 4231 defines it (its test case 2).
func TestSignatureIsHMACSHA256(t *testing.T) {
	const want = "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
	assert.Equal(t, want, Sign("Jefe", []byte("what do ya want for nothing?")))
	assert.Equal(t, want, (&lane{}).sign("Jefe", []byte("what do ya want for nothing?")))
}
