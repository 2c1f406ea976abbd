package probes

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/health"
)

// FuzzExecOutput checks how an exec probe keeps what the guest's command
// writes, a stream of chunks of any bytes and sizes from the untrusted side:
// it never holds more than twice the output it keeps, and the output is the
// stream's last MaxOutput bytes cut on a rune boundary, exactly as the tail
// of the whole stream would be, truncated exactly when the stream was longer.
func FuzzExecOutput(f *testing.F) {
	f.Add([]byte("ok\n"), []byte{0}, uint16(1))
	f.Add([]byte("é"), []byte{1, 2, 3}, uint16(3000))
	f.Add([]byte("€ab"), []byte{255, 7}, uint16(2731))
	f.Add([]byte{0xff, 0xe2, 0x82}, []byte{}, uint16(5000))
	f.Add([]byte{0x80}, []byte{}, uint16(9000))
	f.Fuzz(func(t *testing.T, data, sizes []byte, repeat uint16) {
		if len(data) == 0 || len(data)*int(repeat) > 256<<10 {
			return
		}
		stream := bytes.Repeat(data, int(repeat))
		var out tail
		for rest, i := stream, 0; len(rest) > 0; i++ {
			n := len(rest)
			if len(sizes) > 0 {
				n = min(n, int(sizes[i%len(sizes)])*64+1)
			}
			out.write(rest[:n])
			rest = rest[n:]
			require.LessOrEqual(t, len(out.buf), 2*health.MaxOutput, "what is held stays bounded")
		}
		got, truncated := out.result()
		require.Equal(t, len(stream) > health.MaxOutput, truncated)
		require.True(t, strings.HasSuffix(string(stream), got), "the output is the end of the stream")
		require.LessOrEqual(t, len(got), health.MaxOutput)
		if utf8.Valid(stream) {
			// the stream's own tail, not the tail of a tail cut elsewhere
			want := health.TailUTF8(string(stream), health.MaxOutput)
			require.True(t, utf8.ValidString(got), "%d bytes of %d, starting %q", len(got), len(stream), got[:min(len(got), 8)])
			require.Equal(t, len(want), len(got), "the tail of the whole stream (%d bytes)", len(stream))
		} else {
			require.GreaterOrEqual(t, len(got), min(len(stream), health.MaxOutput-(utf8.UTFMax-1)), "however invalid the bytes, at most 3 are dropped")
		}
	})
}
