package probes

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkTCPConnect compares the probe's connect-and-reset with the net
// package's dial against a loopback listener that accepts and closes.
func BenchmarkTCPConnect(b *testing.B) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	ap := netip.MustParseAddrPort(l.Addr().String())
	for _, bc := range []struct {
		name string
		dial func(context.Context, netip.AddrPort) error
	}{{"net", dialAndReset}, {"lean", func(ctx context.Context, ap netip.AddrPort) error {
		c, err := beginConnect(ap)
		if c != nil {
			return c.finish(ctx)
		}
		return err
	}}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				if err := bc.dial(ctx, ap); err != nil {
					b.Fatal(err)
				}
				cancel()
			}
		})
	}
}
