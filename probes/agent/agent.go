// Package agent is vigil's guest agent: the gRPC GuestService (package
// guest) that runs exec probes inside the VM, wire-compatible with
// hypeman's agent. It runs each command in its own process group, kills the
// group at the deadline or when the host cancels, streams stdout and stderr
// in chunks of at most 32 KiB, and sends the exit code last (-1 when killed).
//
// Concurrency contract: a Server serves concurrent calls up to its cap and
// refuses the rest with ResourceExhausted.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	mdvsock "github.com/mdlayher/vsock"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/probes/guest"
	"github.com/vigilhq/vigil/probes/vsock"
)

// Defaults and limits.
const (
	DefaultListen        = "vsock://:2222"
	DefaultMaxConcurrent = 16
	ChunkSize            = 32 << 10
	MaxArgs              = 256
	MaxRecvMsg           = 256 << 10
)

// Server implements guest.GuestService's Exec.
type Server struct {
	guest.UnimplementedGuestServiceServer
	log   zerolog.Logger
	slots chan struct{}
}

// New returns a server running at most maxConcurrent commands at once.
func New(log zerolog.Logger, maxConcurrent int) *Server {
	if maxConcurrent <= 0 {
		maxConcurrent = DefaultMaxConcurrent
	}
	return &Server{log: log, slots: make(chan struct{}, maxConcurrent)}
}

// GRPC returns a gRPC server with the service registered and bounded
// receive sizes.
func (s *Server) GRPC() *grpc.Server {
	g := grpc.NewServer(
		grpc.MaxRecvMsgSize(MaxRecvMsg),
		grpc.MaxHeaderListSize(16<<10),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Minute}),
	)
	guest.RegisterGuestServiceServer(g, s)
	return g
}

// Exec runs one command.
func (s *Server) Exec(stream guest.GuestService_ExecServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return status.Error(codes.InvalidArgument, "the first message must be start")
	}
	if len(start.Command) == 0 || start.Command[0] == "" {
		return status.Error(codes.InvalidArgument, "command is empty")
	}
	if len(start.Command) > MaxArgs {
		return status.Errorf(codes.InvalidArgument, "command has %d arguments, over %d", len(start.Command), MaxArgs)
	}
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	default:
		return status.Errorf(codes.ResourceExhausted, "agent is running its maximum of %d commands", cap(s.slots))
	}
	ctx := stream.Context()
	if start.TimeoutSeconds > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(start.TimeoutSeconds)*time.Second)
		defer cancel()
	}
	code, err := s.run(ctx, start, stream)
	if err != nil {
		return err
	}
	return stream.Send(&guest.ExecResponse{Response: &guest.ExecResponse_ExitCode{ExitCode: code}})
}

// run starts the command in its own process group, streams its output and
// returns its exit code; a launch failure is a codes.Unknown error.
func (s *Server) run(ctx context.Context, start *guest.ExecStart, stream guest.GuestService_ExecServer) (int32, error) {
	cmd := exec.Command(start.Command[0], start.Command[1:]...)
	cmd.Dir = start.Cwd
	cmd.Env = os.Environ()
	for k, v := range start.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	outR, outW, err := os.Pipe()
	if err != nil {
		return 0, status.Errorf(codes.Internal, "pipe: %v", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		_ = outR.Close()
		_ = outW.Close()
		return 0, status.Errorf(codes.Internal, "pipe: %v", err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	err = cmd.Start()
	_ = outW.Close()
	_ = errW.Close()
	if err != nil {
		_ = outR.Close()
		_ = errR.Close()
		return 0, status.Errorf(codes.Unknown, "start %s: %v", start.Command[0], err)
	}
	pgid := cmd.Process.Pid
	killGroup := func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) }

	var sendMu sync.Mutex
	var sendErr error
	send := func(r *guest.ExecResponse) {
		sendMu.Lock()
		defer sendMu.Unlock()
		if sendErr == nil {
			sendErr = stream.Send(r)
		}
	}
	var readers sync.WaitGroup
	pump := func(f *os.File, wrap func([]byte) *guest.ExecResponse) {
		defer readers.Done()
		defer f.Close()
		buf := make([]byte, ChunkSize)
		for {
			n, err := f.Read(buf)
			if n > 0 {
				send(wrap(append([]byte(nil), buf[:n]...)))
			}
			if err != nil {
				return
			}
		}
	}
	readers.Add(2)
	go pump(outR, func(b []byte) *guest.ExecResponse {
		return &guest.ExecResponse{Response: &guest.ExecResponse_Stdout{Stdout: b}}
	})
	go pump(errR, func(b []byte) *guest.ExecResponse {
		return &guest.ExecResponse{Response: &guest.ExecResponse_Stderr{Stderr: b}}
	})

	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var werr error
	killed := false
	select {
	case werr = <-waited:
	case <-ctx.Done():
		killed = true
		killGroup()
		werr = <-waited
	}
	// whatever the command left behind in its group goes too, so the
	// pipes close and nothing outlives the probe
	killGroup()
	readers.Wait()
	if killed {
		s.log.Debug().Str("command", start.Command[0]).Err(ctx.Err()).Msg("exec_killed")
		if stream.Context().Err() != nil {
			return 0, status.FromContextError(stream.Context().Err()).Err()
		}
		return -1, sendErr
	}
	if sendErr != nil {
		return 0, sendErr
	}
	var ee *exec.ExitError
	switch {
	case werr == nil:
		return 0, nil
	case errors.As(werr, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return -1, nil
		}
		return int32(ee.ExitCode()), nil
	}
	return 0, status.Errorf(codes.Unknown, "wait: %v", werr)
}

// Listen opens the agent's listener: vsock://:PORT (only the host, CID 2, is
// accepted), unix:///path or tcp://host:port.
func Listen(addr string) (net.Listener, error) {
	scheme, rest, ok := strings.Cut(addr, "://")
	if !ok {
		return nil, fmt.Errorf("--listen %q: want vsock://:PORT, unix:///path or tcp://host:port", addr)
	}
	switch scheme {
	case "vsock":
		_, p, err := net.SplitHostPort(rest)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: %w", addr, err)
		}
		port, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: port: %w", addr, err)
		}
		l, err := mdvsock.Listen(uint32(port), nil)
		if err != nil {
			return nil, fmt.Errorf("vsock listen port %d: %w", port, err)
		}
		return hostOnly{l}, nil
	case "unix":
		_ = os.Remove(rest) // a stale socket of an earlier run
		return net.Listen("unix", rest)
	case "tcp":
		return net.Listen("tcp", rest)
	}
	return nil, fmt.Errorf("--listen %q: unknown scheme %q", addr, scheme)
}

// hostOnly accepts vsock connections from the host only.
type hostOnly struct{ net.Listener }

func (l hostOnly) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if a, ok := c.RemoteAddr().(*mdvsock.Addr); ok && a.ContextID == vsock.HostCID {
			return c, nil
		}
		_ = c.Close()
	}
}
