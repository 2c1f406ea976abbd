package health

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	jsonv1 "github.com/go-json-experiment/json/v1"
)

// Lifecycle is an instance's lifecycle state, as its VM manager reports it.
type Lifecycle string

// Lifecycle states (SPEC §1).
const (
	Created      Lifecycle = "Created"
	Initializing Lifecycle = "Initializing"
	Running      Lifecycle = "Running"
	Paused       Lifecycle = "Paused"
	Shutdown     Lifecycle = "Shutdown"
	Standby      Lifecycle = "Standby"
	Stopped      Lifecycle = "Stopped"
	Unknown      Lifecycle = "Unknown"
)

// Valid reports whether l is one of the lifecycle states.
func (l Lifecycle) Valid() bool {
	switch l {
	case Created, Initializing, Running, Paused, Shutdown, Standby, Stopped, Unknown:
		return true
	}
	return false
}

// Active reports whether probes run in this state.
func (l Lifecycle) Active() bool { return l == Initializing || l == Running }

// DefaultVsockPort is the guest agent's vsock port.
const DefaultVsockPort = 2222

// Limits of an instance's fields.
const (
	MaxIDLength     = 128
	MaxNameLength   = 256
	MaxSocketPath   = 107 // sun_path is 108 bytes with its NUL
	MinGuestCID     = 3
	maxVsockPortNum = 1<<32 - 2
)

var idPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// ValidateID checks an instance id: 1–128 characters of [A-Za-z0-9._-].
func ValidateID(id string) error {
	if !idPattern.MatchString(id) {
		return fieldErr("id", "must be 1-128 characters of A-Z a-z 0-9 . _ - (got %q)", truncateForMessage(id))
	}
	if id == "." || id == ".." {
		return fieldErr("id", "must not be . or ..")
	}
	return nil
}

func truncateForMessage(s string) string {
	if len(s) > 64 {
		return TruncateUTF8(s, 64) + "…"
	}
	return s
}

// Network is where http, tcp and grpc probes connect, and the local address
// they connect from (SourceIP; empty: the host's --probe-source-ip, else the
// kernel's choice).
type Network struct {
	IP       string `json:"ip"`
	SourceIP string `json:"source_ip,omitempty"`
}

// hostAddr parses the address of one host: IPv4 or IPv6 without a zone, not
// unspecified, multicast or broadcast; IPv4-mapped IPv6 becomes IPv4.
func hostAddr(field, s string) (netip.Addr, error) {
	addr, err := netip.ParseAddr(s)
	if err != nil || addr.Zone() != "" {
		return netip.Addr{}, fieldErr(field, "must be an IPv4 or IPv6 address (got %q)", truncateForMessage(s))
	}
	addr = addr.Unmap()
	switch {
	case addr.IsUnspecified():
		return netip.Addr{}, fieldErr(field, "must be the address of one host, not the unspecified address %s", addr)
	case addr.IsMulticast():
		return netip.Addr{}, fieldErr(field, "must be the address of one host, not the multicast address %s", addr)
	case addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return netip.Addr{}, fieldErr(field, "must be the address of one host, not the broadcast address %s", addr)
	}
	return addr, nil
}

// Vsock is how to reach the guest agent: CID for AF_VSOCK, or Socket for a
// hybrid-vsock Unix socket.
type Vsock struct {
	CID    uint32 `json:"cid,omitempty"`
	Socket string `json:"socket,omitempty"`
	Port   uint32 `json:"port"`
}

// VsockSpec is the vsock block as a client writes it: Port is nil when it is
// left out (then 2222); an explicit 0 is an error.
type VsockSpec struct {
	CID    uint32  `json:"cid,omitempty"`
	Socket string  `json:"socket,omitempty"`
	Port   *uint32 `json:"port,omitempty"`
}

// InstanceSpec is an instance as a client writes it (without id).
type InstanceSpec struct {
	Name          string             `json:"name,omitempty"`
	State         Lifecycle          `json:"state"`
	StartedAt     *time.Time         `json:"started_at,omitempty"`
	Network       *Network           `json:"network,omitempty"`
	Vsock         *VsockSpec         `json:"vsock,omitempty"`
	HealthCheck   *PolicySpec        `json:"health_check,omitempty"`
	Labels        map[string]string  `json:"labels,omitempty"`
	RestartPolicy *RestartPolicySpec `json:"restart_policy,omitempty"`
}

// Instance is a normalized, valid instance. HealthCheck is nil when health
// checking is disabled (absent, or type none). Written is the spec it was
// normalized from, as the client wrote it: a merge patch applies to that, so
// that derived defaults follow the fields they derive from.
type Instance struct {
	ID          string            `json:"id"`
	Name        string            `json:"name,omitempty"`
	State       Lifecycle         `json:"state"`
	StartedAt   *time.Time        `json:"started_at,omitempty"`
	Network     *Network          `json:"network,omitempty"`
	Vsock       *Vsock            `json:"vsock,omitempty"`
	HealthCheck *Policy           `json:"health_check,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	// RestartPolicy is nil when vigil restarts nothing (absent, or never).
	RestartPolicy *RestartPolicy `json:"restart_policy,omitempty"`
	// Written is the spec as the client wrote it, encoded (as encoding/json
	// writes it): bytes without pointers rather than the decoded spec's
	// dozen small objects, which every instance would hold and the garbage
	// collector scan; read back by Spec. Never changed once made.
	Written []byte `json:"-"`
}

// LifecycleNames lists the lifecycle states for messages.
const LifecycleNames = "Created, Initializing, Running, Paused, Shutdown, Standby, Stopped, Unknown"

// RFC3339Example is how messages show the time format they expect.
const RFC3339Example = "an RFC 3339 time such as 2026-11-26T10:00:00Z"

// writtenOptions encode and decode an instance's written spec.
var writtenOptions = jsonv1.DefaultOptionsV1()

// Normalize validates the spec for instance id and fills in defaults.
func (s InstanceSpec) Normalize(id string) (Instance, error) {
	written, err := jsonv2.Marshal(s, writtenOptions)
	if err != nil {
		return Instance{}, fmt.Errorf("encode the spec of %s: %w", truncateForMessage(id), err)
	}
	return s.NormalizeWritten(id, written)
}

// NormalizeWritten is Normalize for a spec decoded from written, which is
// its encoding as Normalize makes it (a stored record's): the instance keeps
// written instead of encoding the spec again.
func (s InstanceSpec) NormalizeWritten(id string, written []byte) (Instance, error) {
	if err := ValidateID(id); err != nil {
		return Instance{}, err
	}
	in := Instance{ID: id, Name: s.Name, State: s.State, Written: written}
	if len(s.Name) > MaxNameLength || strings.ContainsFunc(s.Name, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return Instance{}, fieldErr("name", "must be at most %d bytes without control characters", MaxNameLength)
	}
	switch {
	case s.State == "":
		return Instance{}, fieldErr("state", "is required (one of %s)", LifecycleNames)
	case !s.State.Valid():
		return Instance{}, fieldErr("state", "must be one of %s (got %q)", LifecycleNames, truncateForMessage(string(s.State)))
	}
	if s.StartedAt != nil {
		if s.StartedAt.IsZero() {
			return Instance{}, fieldErr("started_at", "must be %s", RFC3339Example)
		}
		t := s.StartedAt.UTC()
		in.StartedAt = &t
	}
	if s.Network != nil {
		addr, err := hostAddr("network.ip", s.Network.IP)
		if err != nil {
			return Instance{}, err
		}
		in.Network = &Network{IP: addr.String()}
		if s.Network.SourceIP != "" {
			src, err := hostAddr("network.source_ip", s.Network.SourceIP)
			if err != nil {
				return Instance{}, err
			}
			if src.Is4() != addr.Is4() {
				return Instance{}, fieldErr("network.source_ip", "must be of the same family as network.ip %s (got %s)", addr, src)
			}
			in.Network.SourceIP = src.String()
		}
	}
	if s.Vsock != nil {
		v := Vsock{CID: s.Vsock.CID, Socket: s.Vsock.Socket, Port: DefaultVsockPort}
		if s.Vsock.Port != nil {
			v.Port = *s.Vsock.Port
		}
		switch {
		case v.CID != 0 && v.Socket != "":
			return Instance{}, fieldErr("vsock", "must give either cid or socket, not both")
		case v.CID == 0 && v.Socket == "":
			return Instance{}, fieldErr("vsock", "must give cid (AF_VSOCK) or socket (hybrid vsock)")
		case v.Socket != "" && (!strings.HasPrefix(v.Socket, "/") || len(v.Socket) > MaxSocketPath || strings.IndexByte(v.Socket, 0) >= 0):
			return Instance{}, fieldErr("vsock.socket", "must be an absolute path of at most %d bytes", MaxSocketPath)
		case v.Socket == "" && (v.CID < MinGuestCID || v.CID == 0xffffffff):
			return Instance{}, fieldErr("vsock.cid", "must be a guest CID (3 to 4294967294, got %d)", v.CID)
		case v.Port == 0 || v.Port > maxVsockPortNum:
			return Instance{}, fieldErr("vsock.port", "must be a vsock port from 1 to 4294967294 (got %d; leave it out for %d)", v.Port, DefaultVsockPort)
		}
		in.Vsock = &v
	}
	if s.HealthCheck != nil {
		p, err := s.HealthCheck.Normalize()
		if err != nil {
			return Instance{}, err
		}
		if p.Enabled() {
			in.HealthCheck = &p
		}
	}
	if err := ValidateLabels(s.Labels); err != nil {
		return Instance{}, err
	}
	if len(s.Labels) > 0 {
		in.Labels = make(map[string]string, len(s.Labels))
		for k, v := range s.Labels {
			in.Labels[k] = v
		}
	}
	if s.RestartPolicy != nil {
		rp, err := s.RestartPolicy.Normalize()
		if err != nil {
			return Instance{}, err
		}
		if rp.Enabled() {
			if in.HealthCheck == nil {
				return Instance{}, fieldErr("restart_policy", "needs a health_check: restarts follow the health status")
			}
			in.RestartPolicy = &rp
		}
	}
	if p := in.HealthCheck; p != nil {
		switch {
		case p.Type == TypeExec && in.Vsock == nil:
			return Instance{}, fieldErr("vsock", "is required for exec health checks")
		case p.Type != TypeExec && in.Network == nil:
			return Instance{}, fieldErr("network.ip", "is required for %s health checks", p.Type)
		}
	}
	return in, nil
}

// Spec returns the instance in its input shape: the spec as it was written
// when it is known, else the normalized instance in that shape.
func (in Instance) Spec() InstanceSpec {
	if in.Written != nil {
		var s InstanceSpec
		if err := jsonv2.Unmarshal(in.Written, &s, writtenOptions); err == nil {
			return s
		}
	}
	return in.NormalizedSpec()
}

// NormalizedSpec returns the normalized instance in its input shape, every
// default written out.
func (in Instance) NormalizedSpec() InstanceSpec {
	s := InstanceSpec{Name: in.Name, State: in.State, StartedAt: in.StartedAt, Network: in.Network, Labels: in.Labels}
	if in.RestartPolicy != nil {
		rs := in.RestartPolicy.Spec()
		s.RestartPolicy = &rs
	}
	if v := in.Vsock; v != nil {
		port := v.Port
		s.Vsock = &VsockSpec{CID: v.CID, Socket: v.Socket, Port: &port}
	}
	if in.HealthCheck != nil {
		ps := in.HealthCheck.Spec()
		s.HealthCheck = &ps
	}
	return s
}

// StartTime is started_at, or the zero time when the manager did not give one.
func (in Instance) StartTime() time.Time {
	if in.StartedAt == nil {
		return time.Time{}
	}
	return *in.StartedAt
}

// SameTarget reports whether two instances probe the same addresses.
func (in Instance) SameTarget(o Instance) bool {
	if (in.Network == nil) != (o.Network == nil) || (in.Vsock == nil) != (o.Vsock == nil) {
		return false
	}
	if in.Network != nil && *in.Network != *o.Network {
		return false
	}
	return in.Vsock == nil || *in.Vsock == *o.Vsock
}
