package vsock

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/health"
)

// vmm answers every connection with reply after reading the CONNECT line.
func vmm(t *testing.T, reply string, pause time.Duration) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "vsk")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	path := filepath.Join(dir, "v.sock")
	l, err := net.Listen("unix", path)
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 32)
				n, _ := c.Read(buf)
				if string(buf[:n]) != "CONNECT 2222\n" {
					return
				}
				time.Sleep(pause)
				if reply == "" {
					return // closed without a reply
				}
				_, _ = c.Write([]byte(reply))
				if strings.Contains(reply, "\n") {
					_, _ = io.Copy(io.Discard, c)
				}
			}()
		}
	}()
	return path
}

func TestHybridHandshake(t *testing.T) {
	ctx := context.Background()
	c, err := Dial(ctx, health.Vsock{Socket: vmm(t, "OK 1073741824\nguest-bytes", 0), Port: 2222})
	require.NoError(t, err)
	buf := make([]byte, 11)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	assert.Equal(t, "guest-bytes", string(buf), "bytes after the newline are kept")
	require.NoError(t, c.Close())

	for reply, want := range map[string]error{
		"":                       ErrNoReply,
		"ERR nope\n":             ErrBadReply,
		"OK x\n":                 ErrBadReply,
		"OK 1073741824":          ErrBadReply,
		strings.Repeat("O", 100): ErrBadReply,
	} {
		_, err := DialHybrid(ctx, vmm(t, reply, 0), 2222)
		assert.ErrorIs(t, err, want, "reply %q", reply)
	}

	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	began := time.Now()
	_, err = DialHybrid(tctx, vmm(t, "OK 1\n", 5*time.Second), 2222)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(began), time.Second, "the handshake honours the deadline")

	_, err = DialHybrid(ctx, "/"+strings.Repeat("x", 120), 2222)
	assert.ErrorContains(t, err, "socket path")
	_, err = DialHybrid(ctx, filepath.Join(t.TempDir(), "none.sock"), 2222)
	assert.Error(t, err)
}

func TestAFVsock(t *testing.T) {
	if _, err := os.Stat("/dev/vhost-vsock"); err != nil {
		t.Skip("no /dev/vhost-vsock on this machine")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	// CID 1 is loopback where the kernel has it; nothing listens on the port
	_, err := DialVsock(ctx, 1, 65000)
	assert.Error(t, err)
}
