//go:build !linux

package probes

import (
	"context"
	"net/netip"
)

func connectAndReset(ctx context.Context, ap netip.AddrPort) error { return dialAndReset(ctx, ap) }
