package probes

import (
	"context"
	"net"
	"net/netip"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/health"
)

// MaxGRPCMessage bounds a health response read from a target.
const MaxGRPCMessage = 64 << 10

// GRPC calls grpc.health.v1.Health/Check on a fresh connection; SERVING is
// success. Made by newGRPC.
type GRPC struct {
	Addr    string
	Service string
	src     netip.Addr // the local address to connect from, if any

	dial             *net.Dialer
	raddr            netip.AddrPort // addr parsed, when it is an address (dialed without the resolver)
	headers, message []byte         // the request, encoded once
	url              string         // how errors name the call
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
