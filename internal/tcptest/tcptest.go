// Package tcptest serves loopback TCP targets for tests and benchmarks.
package tcptest

import (
	"net"
	"testing"
)

// AcceptAndClose listens on a free loopback port and closes every connection
// it accepts, until the test ends. It returns the port.
func AcceptAndClose(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	Serve(tb, l)
	return l.Addr().(*net.TCPAddr).Port
}

// Serve closes every connection l accepts, until l closes or the test ends.
func Serve(tb testing.TB, l net.Listener) {
	tb.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
}
