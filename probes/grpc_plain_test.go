package probes

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/vigilhq/vigil/health"
)

// failingHealth is a health server whose Check fails with the code it is given.
type failingHealth struct {
	healthpb.UnimplementedHealthServer
	code codes.Code
}

func (f failingHealth) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	return nil, status.Error(f.code, "50% of replicas down")
}

func grpcServer(t *testing.T, register func(*grpc.Server)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	register(srv)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return l.Addr().String()
}

// TestGRPCAnswers runs the probe's own framing against real grpc-go servers
// answering in each way a health check can, and against what is not one.
func TestGRPCAnswers(t *testing.T) {
	serving := grpcServer(t, func(s *grpc.Server) {
		hs := grpchealth.NewServer()
		hs.SetServingStatus("db", healthpb.HealthCheckResponse_NOT_SERVING)
		healthpb.RegisterHealthServer(s, hs)
	})
	noHealth := grpcServer(t, func(*grpc.Server) {})
	unavailable := grpcServer(t, func(s *grpc.Server) { healthpb.RegisterHealthServer(s, failingHealth{code: codes.Unavailable}) })
	http1, _ := scriptedTarget(t, func(c net.Conn) {})
	for _, tc := range []struct {
		name, addr, service string
		outcome             health.Outcome
		reason              health.Reason
		message             string
	}{
		{name: "serving", addr: serving, outcome: health.Success},
		{name: "serving, many times on pooled sessions", addr: serving, outcome: health.Success},
		{name: "not serving", addr: serving, service: "db", reason: health.ReasonNotServing, message: "NOT_SERVING"},
		{name: "unknown service", addr: serving, service: "nope", reason: health.ReasonNotServing, message: "service unknown"},
		{name: "no health service", addr: noHealth, reason: health.ReasonNotServing, message: "not implemented"},
		{name: "an error with a message", addr: unavailable, reason: health.ReasonIOError, message: "50% of replicas down"},
		{name: "not HTTP/2", addr: http1, reason: health.ReasonIOError, message: `Post "http://` + http1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := instance(t, tc.addr, `{"grpc":{"port":PORT,"service":"`+tc.service+`"}}`)
			for range 3 {
				r, took := probe(t, in, 2*time.Second)
				if tc.outcome == health.Success {
					require.Equal(t, health.Success, r.Outcome, r.Message)
					continue
				}
				assert.Equal(t, health.Failure, r.Outcome)
				assert.Equal(t, tc.reason, r.Reason, r.Message)
				assert.Contains(t, r.Message, tc.message)
				assert.Less(t, took, time.Second, "answered at once: nothing waits for the deadline")
			}
		})
	}
}

// TestGRPCCanceled: a probe canceled while the target holds the call ends
// at once, as canceled.
func TestGRPCCanceled(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	addr := grpcServer(t, func(s *grpc.Server) { healthpb.RegisterHealthServer(s, &blockingHealth{release: release}) })
	p, err := New(instance(t, addr, `{"grpc":{"port":PORT}}`))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	r := p.Probe(ctx)
	assert.Equal(t, health.ReasonCanceled, r.Reason, r.Message)
	assert.Less(t, time.Since(start), 5*time.Second)
}

type blockingHealth struct {
	healthpb.UnimplementedHealthServer
	release chan struct{}
}

func (b *blockingHealth) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	select {
	case <-b.release:
	case <-ctx.Done():
	}
	return nil, status.Error(codes.Canceled, "released")
}

// h2Target answers every call SERVING, in one write with whatever extra
// frames after the call's end (a reset of the stream, a PING), as a target
// may; it returns the address.
func h2Target(t *testing.T, extra func(fr *http2.Framer)) string {
	t.Helper()
	msg, err := proto.Marshal(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING})
	require.NoError(t, err)
	return eachConn(t, func(c net.Conn) {
		if _, err := io.ReadFull(c, make([]byte, len(http2.ClientPreface))); err != nil {
			return
		}
		var out bytes.Buffer
		fr := http2.NewFramer(&out, c)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if f.Header().StreamID == 1 && f.Header().Flags.Has(http2.FlagDataEndStream) {
				break
			}
		}
		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		field := func(k, v string) { _ = enc.WriteField(hpack.HeaderField{Name: k, Value: v}) }
		_ = fr.WriteSettings()
		field(":status", "200")
		field("content-type", "application/grpc")
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true})
		_ = fr.WriteData(1, false, append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg))), msg...))
		block.Reset()
		field("grpc-status", "0")
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true, EndStream: true})
		extra(fr)
		_, _ = c.Write(out.Bytes()) // the call and what follows it, together
		_, _ = io.Copy(io.Discard, c)
	})
}

// What a target sends after its call's end stays with its connection: a
// reset of the stream or a PING in the same read as the trailers does not
// reach the next probe on the pooled session, whatever target that has.
func TestGRPCSessionsStartClean(t *testing.T) {
	healthy := grpcServer(t, func(s *grpc.Server) { healthpb.RegisterHealthServer(s, grpchealth.NewServer()) })
	for name, extra := range map[string]func(*http2.Framer){
		"a reset":  func(fr *http2.Framer) { _ = fr.WriteRSTStream(1, http2.ErrCodeCancel) },
		"a ping":   func(fr *http2.Framer) { _ = fr.WritePing(false, [8]byte{1}) },
		"a goaway": func(fr *http2.Framer) { _ = fr.WriteGoAway(1, http2.ErrCodeEnhanceYourCalm, []byte("bye")) },
	} {
		t.Run(name, func(t *testing.T) {
			noisy, err := New(instance(t, h2Target(t, extra), `{"grpc":{"port":PORT}}`))
			require.NoError(t, err)
			next, err := New(instance(t, healthy, `{"grpc":{"port":PORT}}`))
			require.NoError(t, err)
			for i := range 20 {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				r := noisy.Probe(ctx)
				require.Equal(t, health.Success, r.Outcome, "noisy %d: %s", i, r.Message)
				r = next.Probe(ctx)
				cancel()
				require.Equal(t, health.Success, r.Outcome, "the probe after it %d: %s", i, r.Message)
			}
		})
	}
}

// paddedHealth answers SERVING in a response message of size bytes, the
// status and an unknown field of padding, as a newer server's may carry.
type paddedHealth struct {
	healthpb.UnimplementedHealthServer
	size int
}

func (p paddedHealth) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	r := &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}
	base := proto.Size(r)
	// field 15, bytes: a one-byte tag, the length's varint, the padding
	pad := p.size - base - 1 - protowire.SizeVarint(uint64(p.size))
	r.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 15, protowire.BytesType), make([]byte, pad)))
	if proto.Size(r) != p.size {
		return nil, status.Errorf(codes.Internal, "padded to %d bytes, not %d", proto.Size(r), p.size)
	}
	return r, nil
}

// A response of the largest size a probe accepts arrives whole, past
// HTTP/2's first window of 65 535 bytes; one a byte larger is refused as
// too large at once, not left waiting for a window until the deadline.
func TestGRPCLargestResponse(t *testing.T) {
	for _, tc := range []struct {
		size int
		ok   bool
	}{{size: MaxGRPCMessage, ok: true}, {size: MaxGRPCMessage + 1}} {
		addr := grpcServer(t, func(s *grpc.Server) { healthpb.RegisterHealthServer(s, paddedHealth{size: tc.size}) })
		in := instance(t, addr, `{"grpc":{"port":PORT}}`)
		for range 2 { // a session goes back to the pool after the large response
			r, took := probe(t, in, 5*time.Second)
			assert.Less(t, took, time.Second, "%d bytes: answered, not timed out: %s", tc.size, r.Message)
			if tc.ok {
				assert.Equal(t, health.Success, r.Outcome, r.Message)
				continue
			}
			assert.Equal(t, health.Failure, r.Outcome)
			assert.Equal(t, health.ReasonIOError, r.Reason, r.Message)
			assert.Contains(t, r.Message, "response message over 65536 bytes")
		}
	}
}
