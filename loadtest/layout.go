package loadtest

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"unsafe"

	"github.com/vigilhq/vigil/health"
)

// MaxInstances is how many 127.x.y.z addresses the fleet hands out.
const MaxInstances = 1 << 20

// addrOf is instance i's own loopback address: 127.(16+i>>16).(i>>8).(i).
// Every address of 127.0.0.0/8 is the loopback interface's on Linux, so
// each instance has a destination of its own on the targets' one port: the
// target tells instances apart by the address a connection came to.
func addrOf(i int) string {
	return netip.AddrFrom4(addr4(i)).String()
}

func addr4(i int) [4]byte { return [4]byte{127, byte(16 + i>>16), byte(i >> 8), byte(i)} }

// indexOf maps a destination address back to its instance (-1 if none).
func indexOf(a net.Addr, n int) int {
	v, ok := a.(*net.TCPAddr)
	if !ok {
		return -1
	}
	ip, _ := netip.AddrFromSlice(v.IP)
	return indexOf4(ip.Unmap().As4(), n)
}

// indexOf4 maps a destination IPv4 address back to its instance (-1 if
// none).
func indexOf4(b [4]byte, n int) int {
	if b[0] != 127 || b[1] < 16 || b[1] >= 16+MaxInstances>>16 {
		return -1
	}
	i := int(b[1]-16)<<16 | int(b[2])<<8 | int(b[3])
	if i >= n {
		return -1
	}
	return i
}

// fleet is the synthetic fleet's layout: which instance is which type, which
// are hung or flipping, and the ports the target process serves them on.
// Both processes compute it from the same settings (newFleet is
// deterministic); the scheduler's side fills in the ports the target
// process reports.
type fleet struct {
	n     int
	ids   string // every instance's id, end to end (fleet.id)
	types []health.Type
	hung  []bool
	flips []bool
	ports ports
}

// ports are where the target process serves the fleet.
type ports struct {
	TCP      int    `json:"tcp,omitempty"`
	TCPFlip  int    `json:"tcp_flip,omitempty"`
	HTTP     int    `json:"http,omitempty"`
	GRPC     int    `json:"grpc,omitempty"`
	Vsock    string `json:"vsock,omitempty"`     // the hybrid-vsock muxer's socket (exec)
	DownFile string `json:"down_file,omitempty"` // exists while the flipping exec targets fail
}

// newFleet lays out a fleet of cfg.Instances: hung and flipping instances
// spread evenly, never both; a TCP target cannot hang (it accepts and
// closes), so in a mixed fleet the TCP instances among the hung share are
// plain healthy ones.
func newFleet(cfg Config) *fleet {
	f := &fleet{n: cfg.Instances, ids: makeIDs(cfg.Instances), types: make([]health.Type, cfg.Instances),
		hung: make([]bool, cfg.Instances), flips: make([]bool, cfg.Instances)}
	kinds := f.kinds(cfg.Type)
	hungEvery, flipEvery := every(cfg.Hung), every(cfg.Flip)
	for i := range f.n {
		f.types[i] = kinds[i%len(kinds)]
		f.hung[i] = hungEvery > 0 && i%hungEvery == hungEvery/2 && f.types[i] != health.TypeTCP
		f.flips[i] = !f.hung[i] && flipEvery > 0 && i%flipEvery == flipEvery/3
	}
	return f
}

func (f *fleet) kinds(typ string) []health.Type {
	if typ == "mixed" {
		return []health.Type{health.TypeTCP, health.TypeHTTP, health.TypeGRPC}
	}
	return []health.Type{health.Type(typ)}
}

// healthy reports whether instance i's target always answers healthy.
func (f *fleet) healthy(i int) bool { return !f.hung[i] && !f.flips[i] }

// count is how many instances of the fleet pred holds for.
func (f *fleet) count(pred func(i int) bool) int {
	n := 0
	for i := range f.n {
		if pred(i) {
			n++
		}
	}
	return n
}

// every turns a fraction into "one instance in k" (0 when none).
func every(frac float64) int {
	if frac <= 0 {
		return 0
	}
	return max(1, int(1/frac+0.5))
}

// index is the fleet position of an instance id (-1 for another id). The
// scheduler hands back the id string it was given, which points into the
// fleet's block of ids: its place there is its position, found without
// reading it (for an instance probed once an interval that read is a cache
// miss, billed to vigil's CPU). Any other string with a fleet id is parsed.
func (f *fleet) index(id string) int {
	if uintptr(len(id)) == idWidth && len(f.ids) > 0 {
		off := uintptr(unsafe.Pointer(unsafe.StringData(id))) - uintptr(unsafe.Pointer(unsafe.StringData(f.ids)))
		if off < uintptr(len(f.ids)) && off%idWidth == 0 {
			return int(off / idWidth)
		}
	}
	n, ok := strings.CutPrefix(id, idPrefix)
	if !ok || len(n) != int(idWidth)-len(idPrefix) {
		return -1
	}
	i, err := strconv.Atoi(n)
	if err != nil || i < 0 || i >= f.n {
		return -1
	}
	return i
}

// idWidth is the length of every fleet id: the prefix and 7 digits (more
// than MaxInstances needs).
const idWidth = uintptr(len(idPrefix) + 7)

const idPrefix = "lt-"

// makeIDs lays the ids of a fleet of n end to end in one string.
func makeIDs(n int) string {
	var b strings.Builder
	b.Grow(n * int(idWidth))
	for i := range n {
		fmt.Fprintf(&b, "%s%07d", idPrefix, i)
	}
	return b.String()
}

// id is instance i's id.
func (f *fleet) id(i int) string { w := int(idWidth); return f.ids[i*w : (i+1)*w] }

// spec is instance i's registration.
func (f *fleet) spec(i int, cfg Config) health.InstanceSpec {
	p := &health.PolicySpec{Interval: cfg.Interval.String(), Timeout: cfg.Timeout.String()}
	if cfg.StartPeriod >= 0 {
		p.StartPeriod = cfg.StartPeriod.String()
	}
	s := health.InstanceSpec{State: health.Running, HealthCheck: p}
	switch f.types[i] {
	case health.TypeTCP:
		port := f.ports.TCP
		if f.flips[i] {
			port = f.ports.TCPFlip
		}
		p.TCP = &health.TCPSpec{Port: port}
	case health.TypeHTTP:
		p.HTTP = &health.HTTPSpec{Port: f.ports.HTTP, Path: "/healthz", Condition: cfg.Condition}
	case health.TypeGRPC:
		p.GRPC = &health.GRPCSpec{Port: f.ports.GRPC}
	case health.TypeExec:
		cmd := []string{"/bin/true"}
		switch {
		case f.hung[i]:
			cmd = []string{"/bin/sleep", "3600"}
		case f.flips[i]:
			cmd = []string{"/bin/sh", "-c", "test ! -e " + f.ports.DownFile}
		}
		p.Exec = &health.ExecSpec{Command: cmd}
		s.Vsock = &health.VsockSpec{Socket: f.ports.Vsock}
		return s
	}
	s.Network = &health.Network{IP: addrOf(i)}
	return s
}
