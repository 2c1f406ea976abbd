package probes

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"

	"github.com/vigilhq/vigil/health"
)

// Found by FuzzExecOutput: output over twice MaxOutput was cut to its last
// MaxOutput bytes wherever that fell, so an exec probe's output could begin
// inside a rune; and bytes that start no rune (binary output) were all
// dropped. The tail now starts on a rune, at most 3 bytes short.
func TestExecOutputTail(t *testing.T) {
	var out tail
	out.write([]byte(strings.Repeat("0ĺ", 3000))) // 9000 bytes, 3 a rune pair
	got, truncated := out.result()
	assert.True(t, truncated)
	assert.True(t, utf8.ValidString(got), "starts %q", got[:4])
	assert.Equal(t, health.TailUTF8(strings.Repeat("0ĺ", 3000), health.MaxOutput), got)

	var bin tail
	bin.write([]byte(strings.Repeat("\x80", 9000)))
	got, truncated = bin.result()
	assert.True(t, truncated)
	assert.Len(t, got, health.MaxOutput-3)
}
