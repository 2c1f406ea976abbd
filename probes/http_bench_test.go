//go:build linux

package probes

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vigilhq/vigil/health"
)

// rawHTTPServer serves every connection one fixed response on blocking
// system calls, allocating nothing, so that what a benchmark allocates is
// the prober's alone. It returns the port.
func rawHTTPServer(b *testing.B, response string) int {
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		b.Fatal(err)
	}
	if err := unix.Listen(lfd, 1024); err != nil {
		b.Fatal(err)
	}
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = unix.Shutdown(lfd, unix.SHUT_RDWR); _ = unix.Close(lfd) })
	resp := []byte(response)
	go func() {
		buf := make([]byte, 4096)
		for {
			fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
			if err != nil {
				return
			}
			got := 0
			for !bytes.Contains(buf[:got], []byte("\r\n\r\n")) && got < len(buf) {
				n, err := unix.Read(fd, buf[got:])
				if err != nil || n <= 0 {
					break
				}
				got += n
			}
			_, _ = unix.Write(fd, resp)
			_ = unix.Close(fd)
		}
	}()
	return sa.(*unix.SockaddrInet4).Port
}

// BenchmarkHTTPGet is one HTTP probe, a GET on a fresh connection to a
// loopback target that answers 200 with a small body, through net/http's
// Transport and through the plain path http probes take.
func BenchmarkHTTPGet(b *testing.B) {
	port := rawHTTPServer(b, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
	expect, err := health.ParseStatusSet("expected_status", "200-399")
	if err != nil {
		b.Fatal(err)
	}
	p := &health.HTTPProbe{Scheme: "http", Port: port, Path: "/healthz", Method: "GET", ExpectedStatus: expect}
	for _, mode := range []string{"transport", "plain"} {
		b.Run(mode, func(b *testing.B) {
			h, err := newHTTP("127.0.0.1:"+strconv.Itoa(port), netip.Addr{}, p)
			if err != nil {
				b.Fatal(err)
			}
			if mode == "transport" {
				h.plain = nil
			}
			b.ReportAllocs()
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				r := h.Probe(ctx)
				cancel()
				if r.Outcome != health.Success {
					b.Fatalf("%+v", r)
				}
			}
		})
	}
}

// BenchmarkGRPCHealthCheck is one gRPC probe, Health/Check on a fresh
// connection to a loopback grpc-go server (whose allocations, the same for
// both, are counted too), through a grpc-go client made and closed for the
// call and through the probe's own framing.
func BenchmarkGRPCHealthCheck(b *testing.B) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, grpchealth.NewServer())
	go func() { _ = srv.Serve(l) }()
	b.Cleanup(srv.Stop)
	addr := l.Addr().String()
	g, err := newGRPC(addr, "", netip.Addr{})
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name  string
		probe func(context.Context) bool
	}{
		{"grpc-go-client", func(ctx context.Context) bool {
			conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
			return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
		}},
		{"probe", func(ctx context.Context) bool { return g.Probe(ctx).Outcome == health.Success }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				ok := bc.probe(ctx)
				cancel()
				if !ok {
					b.Fatal("not serving")
				}
			}
		})
	}
}
