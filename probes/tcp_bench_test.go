package probes

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/tcptest"
)

// BenchmarkTCPConnect compares the probe's connect-and-reset with the net
// package's dial against a loopback listener that accepts and closes.
func BenchmarkTCPConnect(b *testing.B) {
	ap := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(tcptest.AcceptAndClose(b)))
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
