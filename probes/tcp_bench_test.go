//go:build linux

package probes

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkTCPConnect compares the probe's connect-and-reset with the net
// package's dial against a loopback listener that the loop itself drains
// (accept and close after each probe, counted in the figures): a listener
// served by another goroutine falls behind a loop this fast, and its
// overflowing queue drops handshakes.
func BenchmarkTCPConnect(b *testing.B) {
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = unix.Close(lfd) })
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		b.Fatal(err)
	}
	if err := unix.Listen(lfd, 128); err != nil {
		b.Fatal(err)
	}
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		b.Fatal(err)
	}
	ap := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(sa.(*unix.SockaddrInet4).Port))
	drain := func() {
		for {
			nfd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
			if err != nil {
				return
			}
			_ = unix.Close(nfd)
		}
	}
	lean := func(src netip.Addr) func(context.Context, netip.AddrPort) error {
		return func(ctx context.Context, ap netip.AddrPort) error {
			c, err := beginConnect(ap, src)
			if c != nil {
				return c.finish(ctx)
			}
			return err
		}
	}
	// bound: from a source address (network.source_ip), on a fresh socket
	// bound before the connect instead of a pooled one
	bound := netip.MustParseAddr("127.0.0.2")
	for _, bc := range []struct {
		name string
		dial func(context.Context, netip.AddrPort) error
	}{
		{"net", func(ctx context.Context, ap netip.AddrPort) error { return dialAndReset(ctx, ap, netip.Addr{}) }},
		{"lean", lean(netip.Addr{})},
		{"lean-bound", lean(bound)},
		{"net-bound", func(ctx context.Context, ap netip.AddrPort) error { return dialAndReset(ctx, ap, bound) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				if err := bc.dial(ctx, ap); err != nil {
					b.Fatal(err)
				}
				cancel()
				drain()
			}
		})
	}
}
