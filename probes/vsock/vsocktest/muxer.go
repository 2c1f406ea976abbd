// Package vsocktest plays the VMM's side of hybrid vsock for tests, by the
// Firecracker / Cloud Hypervisor rules: a Unix socket that takes
// "CONNECT <port>\n", connects to the guest (here: the agent's socket) and
// answers "OK <hostport>\n", or closes without a reply on any failure. Fault
// knobs make it misbehave the ways VMMs and guests do. Test helper only.
package vsocktest

import (
	"bufio"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Fault is how the muxer misbehaves for new connections.
type Fault int32

// Faults.
const (
	None    Fault = iota
	SlowOK        // wait Delay before answering OK
	NoReply       // close without a reply, as on any guest-side failure
	Garbage       // answer a malformed line
	Reset         // answer OK, then reset the connection once the guest has sent ResetAfter bytes
	Pause         // answer OK, then forward nothing
)

// Muxer is one VM's hybrid-vsock socket.
type Muxer struct {
	Path       string
	guest      string // the agent's Unix socket
	l          net.Listener
	fault      atomic.Int32
	Delay      time.Duration
	ResetAfter int64
	wg         sync.WaitGroup
	mu         sync.Mutex
	conns      map[net.Conn]struct{}
}

// Start listens on dir/vsock.sock and forwards port 2222 (any port) to the
// agent's Unix socket at guest.
func Start(dir, guest string) (*Muxer, error) {
	path := filepath.Join(dir, "vsock.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	m := &Muxer{Path: path, guest: guest, l: l, conns: map[net.Conn]struct{}{}, Delay: time.Second, ResetAfter: 64}
	m.wg.Add(1)
	go m.serve()
	return m, nil
}

// SetFault changes the behaviour for new connections.
func (m *Muxer) SetFault(f Fault) { m.fault.Store(int32(f)) }

// CloseConns drops every open connection, as when the VM restarts.
func (m *Muxer) CloseConns() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for c := range m.conns {
		_ = c.Close()
	}
}

// Close stops listening and drops every connection.
func (m *Muxer) Close() {
	_ = m.l.Close()
	m.CloseConns()
	m.wg.Wait()
}

func (m *Muxer) track(c net.Conn, on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if on {
		m.conns[c] = struct{}{}
	} else {
		delete(m.conns, c)
	}
}

func (m *Muxer) serve() {
	defer m.wg.Done()
	for {
		c, err := m.l.Accept()
		if err != nil {
			return
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.track(c, true)
			defer m.track(c, false)
			defer c.Close()
			m.handle(c)
		}()
	}
}

func (m *Muxer) handle(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	br := bufio.NewReaderSize(c, 64)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	rest, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "CONNECT ")
	if !ok {
		rest, ok = strings.CutPrefix(strings.TrimSuffix(line, "\n"), "connect ")
	}
	if _, err := strconv.ParseUint(rest, 10, 32); !ok || err != nil {
		return
	}
	fault := Fault(m.fault.Load())
	switch fault {
	case NoReply:
		return
	case Garbage:
		_, _ = c.Write([]byte("ERR no such port\n"))
		return
	case SlowOK:
		time.Sleep(m.Delay)
	}
	g, err := net.Dial("unix", m.guest)
	if err != nil {
		return // nothing listening in the guest: close without a reply
	}
	m.track(g, true)
	defer m.track(g, false)
	defer g.Close()
	if _, err := c.Write([]byte("OK 1073741824\n")); err != nil {
		return
	}
	if fault == Pause {
		_, _ = io.Copy(io.Discard, c)
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(g, br); done <- struct{}{} }()
	go func() {
		if fault == Reset {
			_, _ = io.CopyN(c, g, m.ResetAfter)
			if tc, ok := c.(*net.UnixConn); ok {
				_ = tc.Close()
			}
		} else {
			_, _ = io.Copy(c, g)
		}
		done <- struct{}{}
	}()
	<-done
}
