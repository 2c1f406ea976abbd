//go:build !linux

package probes

import (
	"context"
	"net/netip"
)

// beginConnect leaves the whole dial to finish, through the net package.
func beginConnect(ap netip.AddrPort) (*connecting, error) { return &connecting{ap: ap}, nil }

type connecting struct{ ap netip.AddrPort }

func (c *connecting) finish(ctx context.Context) error { return dialAndReset(ctx, c.ap) }
