package health

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// Found by FuzzExecOutput: bytes that start no rune (a guest's binary
// output) made TailUTF8 and TruncateUTF8 drop everything. They now drop at
// most 3 bytes looking for a rune's start, and still cut valid UTF-8 on a
// rune boundary.
func TestCutsDropAtMostThreeBytes(t *testing.T) {
	bin := strings.Repeat("\x80", 100)
	assert.Len(t, TailUTF8(bin, 10), 7)
	assert.Len(t, TruncateUTF8(bin, 10), 7)
	assert.Equal(t, "€€", TailUTF8("€€€", 8))
	assert.Equal(t, "€€", TruncateUTF8("€€€", 8))
	assert.Equal(t, "😀", TailUTF8("a😀", 4))
	assert.Equal(t, "a", TruncateUTF8("a😀", 4))
}
