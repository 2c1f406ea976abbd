package probes

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/probes/guest"
	"github.com/vigilhq/vigil/probes/vsock"
)

// Bounds of what an exec probe accepts from the guest.
const (
	MaxExecMessage = 64 << 10 // one gRPC message from the agent
	maxHeaderList  = 16 << 10
)

// Exec runs a command in the guest through its agent, over one pooled gRPC
// connection per instance. The connection is evicted when the agent is
// unavailable and when the prober is closed (lifecycle change, delete).
type Exec struct {
	Target  health.Vsock
	Command []string
	Env     map[string]string
	Dir     string

	mu   sync.Mutex
	conn *grpc.ClientConn
}

// NewExec returns the exec prober of one instance.
func NewExec(v health.Vsock, e health.ExecProbe) *Exec {
	return &Exec{Target: v, Command: e.Command, Env: e.Env, Dir: e.WorkingDir}
}

// client returns the pooled connection, creating it on first use.
func (x *Exec) client() (*grpc.ClientConn, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.conn != nil {
		return x.conn, nil
	}
	target := x.Target
	c, err := grpc.NewClient("passthrough:///guest-agent",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return vsock.Dial(ctx, target) }),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxExecMessage)),
		grpc.WithMaxHeaderListSize(maxHeaderList),
	)
	if err != nil {
		return nil, err
	}
	x.conn = c
	return c, nil
}

// evict drops c if it is still the pooled connection.
func (x *Exec) evict(c *grpc.ClientConn) {
	x.mu.Lock()
	if x.conn == c {
		x.conn = nil
	}
	x.mu.Unlock()
	_ = c.Close()
}

// Close drops the pooled connection.
func (x *Exec) Close() error {
	x.mu.Lock()
	c := x.conn
	x.conn = nil
	x.mu.Unlock()
	if c != nil {
		return c.Close()
	}
	return nil
}

// Probe runs the command once. ctx carries the exact host deadline; the
// agent is told the same deadline in whole seconds as a backstop.
func (x *Exec) Probe(ctx context.Context) health.Result {
	conn, err := x.client()
	if err != nil {
		return health.Result{Outcome: health.Failure, Reason: health.ReasonAgentUnreachable, Message: err.Error()}
	}
	var timeoutSeconds int32
	if dl, ok := ctx.Deadline(); ok {
		timeoutSeconds = int32(min(math.Ceil(time.Until(dl).Seconds()), math.MaxInt32))
		timeoutSeconds = max(timeoutSeconds, 1)
	}
	stream, err := guest.NewGuestServiceClient(conn).Exec(ctx)
	if err != nil {
		return x.fail(ctx, conn, err)
	}
	start := &guest.ExecStart{Command: x.Command, Env: x.Env, Cwd: x.Dir, TimeoutSeconds: timeoutSeconds}
	if err := stream.Send(&guest.ExecRequest{Request: &guest.ExecRequest_Start{Start: start}}); err != nil && !errors.Is(err, io.EOF) {
		return x.fail(ctx, conn, err)
	}
	_ = stream.CloseSend()
	var out tail
	for {
		msg, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the agent ended the call without an exit code")
			}
			r := x.fail(ctx, conn, err)
			r.Output, r.Truncated = out.result()
			return r
		}
		switch m := msg.Response.(type) {
		case *guest.ExecResponse_Stdout:
			out.write(m.Stdout)
		case *guest.ExecResponse_Stderr:
			out.write(m.Stderr)
		case *guest.ExecResponse_ExitCode:
			code := int(m.ExitCode)
			r := health.Result{Outcome: health.Success, ExitCode: &code}
			r.Output, r.Truncated = out.result()
			if code != 0 {
				r.Outcome, r.Reason = health.Failure, health.ReasonExitNonzero
				r.Message = fmt.Sprintf("exit code %d", code)
				if code == -1 {
					r.Message = "killed"
					if ctx.Err() != nil {
						r.Reason = health.ReasonTimeout
					}
				}
			}
			return r
		}
	}
}

// fail classifies an RPC error: an unreachable agent evicts the connection.
func (x *Exec) fail(ctx context.Context, conn *grpc.ClientConn, err error) health.Result {
	if ctx.Err() != nil {
		return Fail(ctx, ctx.Err())
	}
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.Unavailable:
		x.evict(conn)
		return health.Result{Outcome: health.Failure, Reason: health.ReasonAgentUnreachable, Message: "guest agent unreachable: " + st.Message()}
	case codes.DeadlineExceeded:
		return health.Result{Outcome: health.Failure, Reason: health.ReasonTimeout, Message: st.Message()}
	case codes.Canceled:
		return health.Result{Outcome: health.Failure, Reason: health.ReasonCanceled, Message: st.Message()}
	}
	return health.Result{Outcome: health.Failure, Reason: health.ReasonExecError, Message: fmt.Sprintf("exec: %s: %s", st.Code(), st.Message())}
}

// tail keeps the last MaxOutput bytes of a stream and whether more came.
type tail struct {
	buf       []byte
	truncated bool
}

func (t *tail) write(b []byte) {
	t.buf = append(t.buf, b...)
	if len(t.buf) > 2*health.MaxOutput {
		// keep the last MaxOutput bytes from a rune's start, as TailUTF8
		// does: a tail cut inside a rune would begin with invalid UTF-8
		start := len(t.buf) - health.MaxOutput
		i := start
		for i < start+utf8.UTFMax-1 && !utf8.RuneStart(t.buf[i]) {
			i++
		}
		t.buf = append(t.buf[:0], t.buf[i:]...)
		t.truncated = true
	}
}

func (t *tail) result() (string, bool) {
	if len(t.buf) > health.MaxOutput {
		return health.TailUTF8(string(t.buf), health.MaxOutput), true
	}
	return string(t.buf), t.truncated
}
