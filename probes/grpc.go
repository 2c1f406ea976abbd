package probes

import (
	"context"
	"net"
	"net/netip"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/health"
)

// MaxGRPCMessage bounds a health response read from a target.
const MaxGRPCMessage = 64 << 10

// GRPC calls grpc.health.v1.Health/Check on a fresh connection; SERVING is
// success.
type GRPC struct {
	Addr    string
	Service string
	src     netip.Addr // the local address to connect from, if any
}

// Probe dials, checks and closes.
func (g *GRPC) Probe(ctx context.Context) health.Result {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxGRPCMessage)),
		grpc.WithMaxHeaderListSize(16 << 10),
		grpc.WithUserAgent("vigil-probe/1"),
	}
	if g.src.IsValid() {
		d := dialer(g.src)
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}))
	}
	conn, err := grpc.NewClient("passthrough:///"+g.Addr, opts...)
	if err != nil {
		return health.Result{Outcome: health.Failure, Reason: health.ReasonIOError, Message: err.Error()}
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: g.Service}, grpc.WaitForReady(false))
	if err != nil {
		return grpcFailure(ctx, err)
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return health.Result{Outcome: health.Failure, Reason: health.ReasonNotServing, Message: "health status " + s.String()}
	}
	return health.Result{Outcome: health.Success}
}

func grpcFailure(ctx context.Context, err error) health.Result {
	st, _ := status.FromError(err)
	r := health.Result{Outcome: health.Failure, Reason: health.ReasonIOError, Message: st.Message()}
	switch st.Code() {
	case codes.DeadlineExceeded:
		r.Reason = health.ReasonTimeout
	case codes.Canceled:
		r.Reason = health.ReasonCanceled
	case codes.NotFound:
		r.Reason, r.Message = health.ReasonNotServing, "service unknown: "+st.Message()
	case codes.Unimplemented:
		r.Reason, r.Message = health.ReasonNotServing, "health service not implemented: "+st.Message()
	case codes.Unavailable:
		switch msg := st.Message(); {
		case strings.Contains(msg, "connection refused"):
			r.Reason = health.ReasonConnectionRefused
		case strings.Contains(msg, "no route to host"), strings.Contains(msg, "network is unreachable"):
			r.Reason = health.ReasonUnreachable
		case strings.Contains(msg, "deadline exceeded"), strings.Contains(msg, "timeout"):
			r.Reason = health.ReasonTimeout
		}
	}
	if ctx.Err() != nil && r.Reason == health.ReasonIOError {
		r.Reason = Classify(ctx, ctx.Err())
	}
	return r
}
