//go:build !linux

package probes

import (
	"context"
	"net/netip"
)

// beginConnect leaves the whole dial to finish, through the net package.
func beginConnect(ap netip.AddrPort, src netip.Addr) (*connecting, error) {
	return &connecting{ap: ap, src: src}, nil
}

type connecting struct {
	ap  netip.AddrPort
	src netip.Addr
}

func (c *connecting) finish(ctx context.Context) error { return dialAndReset(ctx, c.ap, c.src) }
