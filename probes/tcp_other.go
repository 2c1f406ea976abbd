//go:build !linux

package probes

import (
	"context"
	"net/netip"
	"syscall"
)

// bindNoPort is a Dialer's Control for a source address; where there is no
// IP_BIND_ADDRESS_NO_PORT, the bind chooses the port.
var bindNoPort func(network, address string, c syscall.RawConn) error

// beginConnect leaves the whole dial to finish, through the net package.
func beginConnect(ap netip.AddrPort, src netip.Addr) (*connecting, error) {
	return &connecting{ap: ap, src: src}, nil
}

type connecting struct {
	ap  netip.AddrPort
	src netip.Addr
}

func (c *connecting) finish(ctx context.Context) error { return dialAndReset(ctx, c.ap, c.src) }
