package main

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestProbeSourceIPIsCheckedAtStart: --probe-source-ip (VIGIL_PROBE_SOURCE_IP)
// must be an address this host can bind; anything else is exit 2 before
// anything opens.
func TestProbeSourceIPIsCheckedAtStart(t *testing.T) {
	const msg = "vigil serve: --probe-source-ip must be an IPv4 or IPv6 address of this host (got %q)\n"
	for _, bad := range []string{"nope", "0.0.0.0", "224.0.0.1", "192.0.2.1"} {
		clearVigilEnv(t)
		code, stdout, stderr := runCLI(t, "serve", "--probe-source-ip", bad, "--data-dir", t.TempDir())
		assert.Equal(t, 2, code, stderr)
		assert.Equal(t, fmt.Sprintf(msg, bad), stderr)
		assert.Empty(t, stdout)
	}
	clearVigilEnv(t)
	t.Setenv("VIGIL_PROBE_SOURCE_IP", "192.0.2.1")
	code, _, stderr := runCLI(t, "serve", "--data-dir", t.TempDir())
	assert.Equal(t, 2, code, stderr)
	assert.Contains(t, stderr, `--probe-source-ip must be an IPv4 or IPv6 address of this host (got "192.0.2.1")`)
}
