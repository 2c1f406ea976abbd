package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	mdvsock "github.com/mdlayher/vsock"
)

// rawCodec sends and receives bytes as they are, so this test speaks the
// wire format from its own copy of hypeman's field numbers, not from our
// generated code.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(b []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), b...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// hypeman's guest.proto, as field numbers:
// ExecRequest{start=1 ExecStart}; ExecStart{command=1 repeated string,
// tty=2, env=3 map<string,string>, cwd=4, timeout_seconds=5 int32};
// ExecResponse{stdout=1 bytes, stderr=2 bytes, exit_code=3 int32}.
func encodeStart(argv []string, env map[string]string, cwd string, timeout int32) []byte {
	var start []byte
	for _, a := range argv {
		start = protowire.AppendTag(start, 1, protowire.BytesType)
		start = protowire.AppendString(start, a)
	}
	for k, v := range env {
		var entry []byte
		entry = protowire.AppendTag(entry, 1, protowire.BytesType)
		entry = protowire.AppendString(entry, k)
		entry = protowire.AppendTag(entry, 2, protowire.BytesType)
		entry = protowire.AppendString(entry, v)
		start = protowire.AppendTag(start, 3, protowire.BytesType)
		start = protowire.AppendBytes(start, entry)
	}
	start = protowire.AppendTag(start, 4, protowire.BytesType)
	start = protowire.AppendString(start, cwd)
	start = protowire.AppendTag(start, 5, protowire.VarintType)
	start = protowire.AppendVarint(start, uint64(int64(timeout)))
	var req []byte
	req = protowire.AppendTag(req, 1, protowire.BytesType)
	return protowire.AppendBytes(req, start)
}

type decoded struct {
	stdout, stderr string
	exit           *int32
}

func decodeResponse(t *testing.T, b []byte, into *decoded) {
	t.Helper()
	num, typ, n := protowire.ConsumeTag(b)
	require.GreaterOrEqual(t, n, 0)
	b = b[n:]
	switch {
	case num == 1 && typ == protowire.BytesType:
		v, _ := protowire.ConsumeBytes(b)
		into.stdout += string(v)
	case num == 2 && typ == protowire.BytesType:
		v, _ := protowire.ConsumeBytes(b)
		into.stderr += string(v)
	case num == 3 && typ == protowire.VarintType:
		v, _ := protowire.ConsumeVarint(b)
		code := int32(v)
		into.exit = &code
	default:
		t.Fatalf("unexpected field %d type %d", num, typ)
	}
}

func TestWireCompatibleWithHypemanFieldNumbers(t *testing.T) {
	defer goleak.VerifyNone(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	g := New(zerolog.Nop(), 4).GRPC()
	go func() { _ = g.Serve(l) }()
	defer g.Stop()

	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	exec := func(req []byte) (decoded, error) {
		s, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true},
			"/guest.GuestService/Exec", grpc.ForceCodec(rawCodec{}))
		require.NoError(t, err)
		require.NoError(t, s.SendMsg(&req))
		require.NoError(t, s.CloseSend())
		var out decoded
		for {
			var b []byte
			if err := s.RecvMsg(&b); err != nil {
				if err == io.EOF {
					return out, nil
				}
				return out, err
			}
			decodeResponse(t, b, &out)
		}
	}

	out, err := exec(encodeStart([]string{"/bin/sh", "-c", "echo $GREETING; pwd; echo oops >&2; exit 7"}, map[string]string{"GREETING": "hello"}, "/tmp", 5))
	require.NoError(t, err)
	assert.Equal(t, "hello\n/tmp\n", out.stdout)
	assert.Equal(t, "oops\n", out.stderr)
	require.NotNil(t, out.exit, "exit code sent last")
	assert.Equal(t, int32(7), *out.exit)

	// killed by the agent's own timeout: exit code -1 (a negative varint)
	out, err = exec(encodeStart([]string{"/bin/sleep", "30"}, nil, "", 1))
	require.NoError(t, err)
	require.NotNil(t, out.exit)
	assert.Equal(t, int32(-1), *out.exit)

	// a missing binary fails the RPC with Unknown and no exit code, as hypeman's does
	out, err = exec(encodeStart([]string{"/no/such/binary"}, nil, "", 5))
	assert.Equal(t, codes.Unknown, status.Code(err), fmt.Sprint(err))
	assert.Nil(t, out.exit)

	// an empty argv is refused instead of running a shell
	_, err = exec(encodeStart(nil, nil, "", 5))
	assert.Equal(t, codes.InvalidArgument, status.Code(err))

	// other methods of hypeman's service answer Unimplemented
	var empty []byte
	err = conn.Invoke(ctx, "/guest.GuestService/StatPath", &empty, &empty, grpc.ForceCodec(rawCodec{}))
	assert.Equal(t, codes.Unimplemented, status.Code(err))
}

// fakeListener hands out connections from a list.
type fakeListener struct {
	net.Listener
	conns []net.Conn
}

func (f *fakeListener) Accept() (net.Conn, error) {
	if len(f.conns) == 0 {
		return nil, net.ErrClosed
	}
	c := f.conns[0]
	f.conns = f.conns[1:]
	return c, nil
}

type vsockConn struct {
	net.Conn
	cid    uint32
	closed bool
}

func (c *vsockConn) RemoteAddr() net.Addr { return &mdvsock.Addr{ContextID: c.cid, Port: 1234} }
func (c *vsockConn) Close() error         { c.closed = true; return nil }

func TestVsockListenerAcceptsOnlyTheHost(t *testing.T) {
	guest, host := &vsockConn{cid: 7}, &vsockConn{cid: 2}
	l := hostOnly{&fakeListener{conns: []net.Conn{guest, host}}}
	c, err := l.Accept()
	require.NoError(t, err)
	assert.Same(t, host, c)
	assert.True(t, guest.closed, "a connection from another CID is closed")
}

func TestListenAddresses(t *testing.T) {
	for _, bad := range []string{"2222", "http://x", "vsock://nope", "vsock://:x"} {
		_, err := Listen(bad)
		assert.Error(t, err, bad)
	}
	l, err := Listen("tcp://127.0.0.1:0")
	require.NoError(t, err)
	require.NoError(t, l.Close())
	l, err = Listen("unix://" + t.TempDir() + "/a.sock")
	require.NoError(t, err)
	require.NoError(t, l.Close())
}
