package health

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestInstanceNormalize(t *testing.T) {
	var s InstanceSpec
	require.NoError(t, json.Unmarshal([]byte(`{"name":"web-1","state":"Running","started_at":"2026-11-26T10:00:00+01:00",
		"network":{"ip":"::ffff:10.0.0.12"},"vsock":{"socket":"/run/vms/vm-42/vsock.sock"},
		"health_check":{"http":{"port":8080,"path":"/healthz"}}}`), &s))
	in, err := s.Normalize("vm-42")
	require.NoError(t, err)
	assert.Equal(t, "10.0.0.12", in.Network.IP, "IPv4-mapped addresses are unmapped")
	assert.Equal(t, uint32(2222), in.Vsock.Port)
	assert.Equal(t, "2026-11-26T09:00:00Z", in.StartedAt.Format("2006-01-02T15:04:05Z07:00"))
	assert.Equal(t, TypeHTTP, in.HealthCheck.Type)

	again, err := in.Spec().Normalize("vm-42")
	require.NoError(t, err)
	assert.Equal(t, in, again, "an instance's spec normalizes to itself")
}

func TestInstanceTypeNoneIsDisabled(t *testing.T) {
	in, err := InstanceSpec{State: Running, HealthCheck: &PolicySpec{Type: "none"}}.Normalize("a")
	require.NoError(t, err)
	assert.Nil(t, in.HealthCheck)
}

func TestInstanceRejections(t *testing.T) {
	long := strings.Repeat("a", 129)
	for _, tc := range []struct {
		id, js, field string
	}{
		{"", `{"state":"Running"}`, "id"},
		{long, `{"state":"Running"}`, "id"},
		{"a/b", `{"state":"Running"}`, "id"},
		{"..", `{"state":"Running"}`, "id"},
		{"a", `{}`, "state"},
		{"a", `{"state":"running"}`, "state"},
		{"a", `{"state":"Running","network":{"ip":"10.0.0.300"}}`, "network.ip"},
		{"a", `{"state":"Running","network":{"ip":"fe80::1%eth0"}}`, "network.ip"},
		{"a", `{"state":"Running","vsock":{"cid":3,"socket":"/x"}}`, "vsock"},
		{"a", `{"state":"Running","vsock":{"port":5}}`, "vsock"},
		{"a", `{"state":"Running","vsock":{"cid":2}}`, "vsock.cid"},
		{"a", `{"state":"Running","vsock":{"socket":"rel.sock"}}`, "vsock.socket"},
		{"a", `{"state":"Running","vsock":{"socket":"/` + strings.Repeat("s", 120) + `"}}`, "vsock.socket"},
		{"a", `{"state":"Running","health_check":{"tcp":{"port":1}}}`, "network.ip"},
		{"a", `{"state":"Running","health_check":{"exec":{"command":["true"]}}}`, "vsock"},
		{"a", `{"state":"Running","name":"a\u0001"}`, "name"},
	} {
		var s InstanceSpec
		require.NoError(t, json.Unmarshal([]byte(tc.js), &s))
		_, err := s.Normalize(tc.id)
		var fe *FieldError
		require.True(t, errors.As(err, &fe), "%s %s: %v", tc.id, tc.js, err)
		assert.Equal(t, tc.field, fe.Field, tc.js)
	}
}

func TestSameTarget(t *testing.T) {
	a := Instance{Network: &Network{IP: "10.0.0.1"}}
	b := Instance{Network: &Network{IP: "10.0.0.1"}}
	c := Instance{Network: &Network{IP: "10.0.0.2"}}
	assert.True(t, a.SameTarget(b))
	assert.False(t, a.SameTarget(c))
	assert.False(t, a.SameTarget(Instance{}))
}

func TestTruncateUTF8(t *testing.T) {
	s := "ab€cd" // € is 3 bytes at [2,5)
	assert.Equal(t, "ab", TruncateUTF8(s, 3))
	assert.Equal(t, "ab", TruncateUTF8(s, 4))
	assert.Equal(t, "ab€", TruncateUTF8(s, 5))
	assert.Equal(t, s, TruncateUTF8(s, 100))
	assert.Equal(t, "cd", TailUTF8(s, 3))
	assert.Equal(t, "€cd", TailUTF8(s, 5))
}

func TestInstanceKeepsTheSpecAsWritten(t *testing.T) {
	var s InstanceSpec
	require.NoError(t, json.Unmarshal([]byte(`{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":9},"interval":"60s"}}`), &s))
	in, err := s.Normalize("vm-1")
	require.NoError(t, err)
	require.NotNil(t, in.Written)
	assert.Equal(t, s, in.Spec(), "Spec is the spec as written")
	assert.Equal(t, "", in.Spec().HealthCheck.StartInterval, "a derived default is not written")
	assert.Equal(t, "12s", in.NormalizedSpec().HealthCheck.StartInterval, "the normalized spec writes every default")

	in.Written = nil // an instance stored before the written spec was kept
	again, err := in.Spec().Normalize("vm-1")
	require.NoError(t, err)
	assert.True(t, in.HealthCheck.Equal(again.HealthCheck))
}

func TestVsockPortIsExplicitOrDefault(t *testing.T) {
	zero, high := uint32(0), uint32(4294967295)
	for _, tc := range []struct {
		port *uint32
		want uint32
		ok   bool
	}{{nil, 2222, true}, {&zero, 0, false}, {&high, 0, false}} {
		in, err := InstanceSpec{State: Running, Vsock: &VsockSpec{CID: 3, Port: tc.port}}.Normalize("a")
		if !tc.ok {
			var fe *FieldError
			require.ErrorAs(t, err, &fe)
			assert.Equal(t, "vsock.port", fe.Field)
			continue
		}
		require.NoError(t, err)
		assert.Equal(t, tc.want, in.Vsock.Port)
	}
}

func TestNetworkIPMustBeOneHost(t *testing.T) {
	for ip, ok := range map[string]bool{
		"10.0.0.1": true, "127.0.0.2": true, "::1": true, "169.254.1.1": true, "::ffff:10.0.0.1": true,
		"0.0.0.0": false, "::": false, "255.255.255.255": false, "224.0.0.1": false, "239.1.1.1": false, "ff02::1": false,
		"::ffff:0.0.0.0": false,
	} {
		_, err := InstanceSpec{State: Running, Network: &Network{IP: ip}}.Normalize("a")
		assert.Equal(t, ok, err == nil, "%s: %v", ip, err)
	}
}
