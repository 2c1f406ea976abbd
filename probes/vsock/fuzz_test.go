package vsock

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// guestConn is the VMM's side of a hybrid socket as a fuzzer writes it:
// reads return the script in chunks of the sizes given (then the error at
// its end), writes are recorded.
type guestConn struct {
	net.Conn
	script  []byte
	chunks  []byte
	end     error
	read    int
	written bytes.Buffer
}

func (c *guestConn) Read(b []byte) (int, error) {
	if len(c.script) == 0 {
		return 0, c.end
	}
	n := len(c.script)
	if len(c.chunks) > 0 {
		n = min(n, int(c.chunks[0])+1)
		c.chunks = c.chunks[1:]
	}
	n = copy(b, c.script[:n])
	c.script = c.script[n:]
	c.read += n
	return n, nil
}

func (c *guestConn) Write(b []byte) (int, error) { return c.written.Write(b) }

// FuzzHandshake checks the host's side of the hybrid-vsock handshake
// against any reply, in any chunking, from the untrusted side: it writes one
// CONNECT line, reads at most MaxReply bytes, and either accepts a first line
// of "OK <port>" — returning exactly the bytes read after its newline — or
// fails with ErrNoReply, ErrBadReply or the connection's own error.
func FuzzHandshake(f *testing.F) {
	for _, s := range []string{"OK 1073741824\n", "OK 5\nguest bytes", "OK 5", "", "NO\n", "OK x\n", "OK 99999999999\n",
		"OK  7 \r\n", strings.Repeat("A", 100), "OK 1\n" + strings.Repeat("B", 80)} {
		f.Add([]byte(s), []byte{0, 3, 255}, uint32(2222), false)
	}
	f.Fuzz(func(t *testing.T, reply, chunks []byte, port uint32, reset bool) {
		var end error = io.EOF
		if reset {
			end = syscall.ECONNRESET
		}
		c := &guestConn{script: bytes.Clone(reply), chunks: chunks, end: end}
		rest, err := handshake(c, port)
		require.Equal(t, "CONNECT "+strconv.FormatUint(uint64(port), 10)+"\n", c.written.String(), "one CONNECT line")
		require.LessOrEqual(t, c.read, MaxReply, "the handshake reads at most MaxReply bytes")
		line, _, hasLine := bytes.Cut(reply[:c.read], []byte("\n"))
		if err != nil {
			require.Nil(t, rest)
			switch {
			case errors.Is(err, ErrNoReply):
				require.Zero(t, c.read)
			case errors.Is(err, ErrBadReply):
			default:
				require.Equal(t, end, err, "the connection's own error")
			}
			if hasLine {
				require.ErrorIs(t, err, ErrBadReply, "a first line %q that is refused is a bad reply", line)
				require.Error(t, checkReply(string(line)))
			}
			return
		}
		require.True(t, hasLine, "accepted only a whole line")
		require.NoError(t, checkReply(string(line)))
		require.True(t, strings.HasPrefix(string(line), "OK "))
		require.Equal(t, reply[len(line)+1:c.read], rest, "what followed the newline is kept, nothing more")
	})
}
