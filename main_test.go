package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vigilhq/vigil/fleet"
	"github.com/vigilhq/vigil/health"
)

func TestVersionAndUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	assert.Equal(t, 0, dispatch([]string{"version"}, &out, &errOut))
	assert.Contains(t, out.String(), "vigil dev")
	assert.Equal(t, 2, dispatch(nil, &out, &errOut))
	assert.Equal(t, 2, dispatch([]string{"frobnicate"}, &out, &errOut))
	assert.Contains(t, errOut.String(), `unknown command "frobnicate"`)
}

func TestServeRejectsBadFlags(t *testing.T) {
	var out, errOut bytes.Buffer
	assert.Equal(t, 2, dispatch([]string{"serve", "--log-format", "xml"}, &out, &errOut))
	assert.Contains(t, errOut.String(), "--log-format")
	errOut.Reset()
	assert.Equal(t, 2, dispatch([]string{"serve", "--listen", "0.0.0.0:0", "--data-dir", t.TempDir()}, &out, &errOut))
	assert.Contains(t, errOut.String(), "not a loopback address")
	assert.Contains(t, errOut.String(), "--token")
	errOut.Reset()
	assert.Equal(t, 2, dispatch([]string{"serve", "extra"}, &out, &errOut))
	assert.Contains(t, errOut.String(), `unexpected argument "extra"`)
}

func TestCheckListen(t *testing.T) {
	for _, tc := range []struct {
		c  serveConfig
		ok bool
	}{
		{serveConfig{listen: "127.0.0.1:8484"}, true},
		{serveConfig{listen: "[::1]:8484"}, true},
		{serveConfig{listen: "localhost:8484"}, true},
		{serveConfig{listen: "0.0.0.0:8484"}, false},
		{serveConfig{listen: ":8484"}, false},
		{serveConfig{listen: "10.0.0.5:8484"}, false},
		{serveConfig{listen: "10.0.0.5:8484", token: "t"}, true},
		{serveConfig{listen: ":8484", insecure: true}, true},
		{serveConfig{listen: "no-port"}, false},
	} {
		err := checkListen(tc.c)
		assert.Equal(t, tc.ok, err == nil, "%+v: %v", tc.c, err)
	}
}

func TestServeReportsLockedDataDir(t *testing.T) {
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	// a second process on the same directory is covered by persistence; here
	// an unusable directory gives a clear error and a non-zero exit
	assert.Equal(t, 1, dispatch([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", dir + "/\x00bad"}, &out, &errOut))
	assert.Contains(t, errOut.String(), "data directory")
}

func TestFleetSettings(t *testing.T) {
	base := serveConfig{listen: "127.0.0.1:8484", budget: 1, etcd: []string{"http://127.0.0.1:2379"}, node: "n1",
		incidents: health.DefaultIncidentRules}
	for _, tc := range []struct {
		mod  func(*serveConfig)
		want string
	}{
		{func(c *serveConfig) { c.peerListen = "127.0.0.2:7946" }, ""},
		{func(c *serveConfig) { c.peerListen = "" }, "--peer-listen is required with --etcd"},
		{func(c *serveConfig) { c.peerListen = "10.0.0.5:7946" }, "--peer-listen 10.0.0.5:7946 is not a loopback address: set --peer-token"},
		{func(c *serveConfig) { c.peerListen = "10.0.0.5:7946"; c.peerToken = "s" }, ""},
		{func(c *serveConfig) { c.peerListen = "127.0.0.1:7946"; c.node = "Node_1" }, `--node "Node_1" must be 1-63 characters`},
		{func(c *serveConfig) { c.peerListen = "nope" }, `--peer-listen "nope" must be host:port`},
		{func(c *serveConfig) { c.etcd = nil; c.node = "Bad!" }, ""}, // without --etcd the fleet flags are not read
	} {
		c := base
		tc.mod(&c)
		err := c.check()
		if tc.want == "" {
			assert.NoError(t, err, "%+v", c)
			continue
		}
		require.Error(t, err, "%+v", c)
		assert.Contains(t, err.Error(), tc.want)
	}
	assert.NoError(t, fleet.ValidName(defaultNodeName()), "the host name makes a valid node name")
}
