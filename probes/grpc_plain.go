package probes

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/vigilhq/vigil/health"
)

// A gRPC probe is one unary call of grpc.health.v1.Health/Check on an
// HTTP/2 connection of its own, framed with golang.org/x/net/http2 (the
// framer and HPACK that grpc-go's own transport is built on) rather than a
// grpc-go client: a client made and closed for one call starts a resolver,
// a balancer and the transport's goroutines, most of a probe's cost. The
// request (its header block and its length-prefixed message) is encoded
// once; each probe dials, writes the preface, its settings and the request
// in one write, and reads frames until the call's trailers, within
// grpcReadLimit bytes and the probe's deadline.

// grpcReadLimit bounds what a probe reads from its target: a response of
// MaxGRPCMessage, 16 KiB of headers and trailers, and frames around them.
const grpcReadLimit = MaxGRPCMessage + 64<<10

// grpcWindow is the flow-control window a probe offers, for its call and its
// connection: a response message of MaxGRPCMessage and its prefix fit, and
// one past it is refused as too large rather than left waiting for a window.
const grpcWindow = MaxGRPCMessage + 1<<10

// initialWindow is HTTP/2's window before the settings (RFC 9113 §6.9.2).
const initialWindow = 65535

// errGRPCTooLarge ends a response past grpcReadLimit.
var errGRPCTooLarge = fmt.Errorf("response exceeded %d bytes; aborted", grpcReadLimit)

// healthCheckPath is the method a gRPC probe calls.
const healthCheckPath = "/grpc.health.v1.Health/Check"

// newGRPC is the prober for a grpc check of service at addr.
func newGRPC(addr, service string, src netip.Addr) (*GRPC, error) {
	g := &GRPC{Addr: addr, Service: service, src: src, dial: dialer(src), url: "http://" + addr + healthCheckPath}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", healthCheckPath},
		{":authority", addr}, {"content-type", "application/grpc"}, {"user-agent", "vigil-probe/1"}, {"te", "trailers"}} {
		if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
			return nil, fmt.Errorf("probes: grpc request: %w", err)
		}
	}
	msg, err := proto.Marshal(&healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return nil, fmt.Errorf("probes: grpc request: %w", err)
	}
	g.headers = block.Bytes()
	g.message = append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg))), msg...)
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		g.raddr = ap
	}
	return g, nil
}

// grpcSession is what a probe needs to speak HTTP/2 on one connection:
// buffers both ways and a framer over them. Pooled: a session goes back
// only after a call that ended cleanly, with its HPACK table emptied, and
// its buffers are emptied as it is taken again — what the last target sent
// after the end of its call (a PING, a GOAWAY, a reset), or an error its
// writer kept, belong to that connection, not the next.
type grpcSession struct {
	conn    net.Conn
	left    int // bytes still to be read
	br      *bufio.Reader
	bw      *bufio.Writer
	fr      *http2.Framer
	hdec    *hpack.Decoder
	message []byte // the response message, as read
}

func (s *grpcSession) Read(p []byte) (int, error) {
	if s.left <= 0 {
		return 0, errGRPCTooLarge
	}
	n, err := s.conn.Read(p[:min(len(p), s.left)])
	s.left -= n
	return n, err
}

func (s *grpcSession) Write(p []byte) (int, error) { return s.conn.Write(p) }

var grpcSessions = sync.Pool{New: func() any {
	s := &grpcSession{message: make([]byte, 0, 64)}
	s.bw = bufio.NewWriterSize(s, 1<<10)
	s.br = bufio.NewReaderSize(s, 4<<10)
	s.fr = http2.NewFramer(s.bw, s.br)
	// the protocol's default: we never offer more, and the framer sizes a
	// frame's buffer by the length the peer declares
	s.fr.SetMaxReadFrameSize(16 << 10)
	s.hdec = hpack.NewDecoder(4096, nil)
	s.fr.ReadMetaHeaders = s.hdec
	s.fr.MaxHeaderListSize = 16 << 10
	s.fr.SetReuseFrames()
	return s
}}

// grpcAnswer is what a call's frames said.
type grpcAnswer struct {
	httpStatus, contentType string
	grpcStatus              int // -1 until the trailers say
	grpcMessage             string
}

// Probe calls Health/Check and closes.
func (g *GRPC) Probe(ctx context.Context) health.Result {
	fail := func(err error) health.Result { return connFailure(ctx, "Post", g.url, err) }
	conn, err := dialProbe(ctx, g.dial, g.Addr, g.raddr, g.src)
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	defer bindToContext(ctx, conn)()

	s := grpcSessions.Get().(*grpcSession)
	s.conn, s.left, s.message = conn, grpcReadLimit, s.message[:0]
	s.br.Reset(s)
	s.bw.Reset(s)
	ans, err := g.call(s)
	if err == nil && cap(s.message) <= 4<<10 {
		s.conn = nil
		s.hdec.SetMaxDynamicTableSize(0) // the next connection starts with an empty table
		s.hdec.SetMaxDynamicTableSize(4096)
		defer grpcSessions.Put(s)
	}
	if err != nil {
		return fail(err)
	}
	return g.judge(ctx, ans, s.message)
}

// call writes the request and reads frames until the call ends.
func (g *GRPC) call(s *grpcSession) (grpcAnswer, error) {
	ans := grpcAnswer{grpcStatus: -1}
	if _, err := s.bw.WriteString(http2.ClientPreface); err != nil {
		return ans, err
	}
	// windows that hold the largest response a probe accepts: with the
	// protocol's 65 535 bytes a target's response of MaxGRPCMessage would
	// wait for a WINDOW_UPDATE the probe never sends, until its deadline
	if err := s.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: 16 << 10},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: grpcWindow}); err != nil {
		return ans, err
	}
	if err := s.fr.WriteWindowUpdate(0, grpcWindow-initialWindow); err != nil {
		return ans, err
	}
	if err := s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: g.headers, EndHeaders: true}); err != nil {
		return ans, err
	}
	if err := s.fr.WriteData(1, true, g.message); err != nil {
		return ans, err
	}
	if err := s.bw.Flush(); err != nil {
		return ans, err
	}
	for {
		f, err := s.fr.ReadFrame()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // the call had not ended
			}
			return ans, err
		}
		ended := false
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				err = s.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				err = s.fr.WritePing(true, f.Data)
			}
		case *http2.GoAwayFrame:
			if f.LastStreamID < 1 || f.ErrCode != http2.ErrCodeNo {
				return ans, fmt.Errorf("the server went away: %v", f.ErrCode)
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				return ans, fmt.Errorf("the server reset the call: %v", f.ErrCode)
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID != 1 {
				continue
			}
			for _, hf := range f.Fields {
				switch hf.Name {
				case ":status":
					ans.httpStatus = hf.Value
				case "content-type":
					ans.contentType = hf.Value
				case "grpc-status":
					if ans.grpcStatus, err = strconv.Atoi(hf.Value); err != nil || ans.grpcStatus < 0 {
						return ans, fmt.Errorf("malformed grpc-status %q", hf.Value)
					}
				case "grpc-message":
					ans.grpcMessage = hf.Value
				}
			}
			ended = f.StreamEnded()
		case *http2.DataFrame:
			if f.StreamID == 1 {
				if len(s.message)+len(f.Data()) > MaxGRPCMessage+5 {
					return ans, fmt.Errorf("response message over %d bytes", MaxGRPCMessage)
				}
				s.message = append(s.message, f.Data()...)
				ended = f.StreamEnded()
			}
		}
		if err == nil && s.bw.Buffered() > 0 {
			err = s.bw.Flush()
		}
		if err != nil {
			return ans, err
		}
		if ended {
			// a goodbye, as a client closing its connection says it
			if s.fr.WriteGoAway(0, http2.ErrCodeNo, nil) == nil {
				_ = s.bw.Flush()
			}
			return ans, nil
		}
	}
}

// judge turns what the call answered into the probe's result.
func (g *GRPC) judge(ctx context.Context, ans grpcAnswer, msg []byte) health.Result {
	io := func(m string) health.Result {
		return health.Result{Outcome: health.Failure, Reason: health.ReasonIOError, Message: m}
	}
	switch {
	case ans.httpStatus != "200":
		return io("not a gRPC server: HTTP status " + strconv.Quote(ans.httpStatus) + " to " + healthCheckPath)
	case ans.grpcStatus < 0:
		return io("the call ended without a grpc-status")
	case ans.grpcStatus != int(codes.OK):
		m, _ := url.PathUnescape(ans.grpcMessage) // grpc-message is percent-encoded
		return grpcFailure(ctx, status.Error(codes.Code(ans.grpcStatus), m))
	case len(msg) < 5 || msg[0] != 0 || int(binary.BigEndian.Uint32(msg[1:5])) != len(msg)-5:
		return io("malformed response message")
	}
	st, ok := servingStatus(msg[5:])
	if !ok {
		return io("malformed HealthCheckResponse")
	}
	if st != healthpb.HealthCheckResponse_SERVING {
		return health.Result{Outcome: health.Failure, Reason: health.ReasonNotServing, Message: "health status " + st.String()}
	}
	return health.Result{Outcome: health.Success}
}

// servingStatus reads HealthCheckResponse's status (field 1) from its
// encoding without decoding it into a message.
func servingStatus(b []byte) (healthpb.HealthCheckResponse_ServingStatus, bool) {
	var value uint64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, false
		}
		b = b[n:]
		if num == 1 && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return 0, false
			}
			value, b = v, b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return 0, false
		}
		b = b[m:]
	}
	return healthpb.HealthCheckResponse_ServingStatus(value), true
}
