package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/internal/vigilbin"
)

// TestUnitFileVerifies checks deploy/vigil.service with systemd's own
// checker, with ExecStart pointed at the real binary.
func TestUnitFileVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	bin, err := vigilbin.Path()
	require.NoError(t, err)
	unit, err := os.ReadFile("deploy/vigil.service")
	require.NoError(t, err)
	text := strings.ReplaceAll(string(unit), "/usr/local/bin/vigil", bin)
	assert.Contains(t, text, "Type=notify")
	path := filepath.Join(t.TempDir(), "vigil.service")
	require.NoError(t, os.WriteFile(path, []byte(text), 0o644))
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	var problems []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		// the checker also reads units this machine happens to have
		if line != "" && strings.Contains(line, "vigil.service") {
			problems = append(problems, line)
		}
	}
	assert.Empty(t, problems, "%s", out)
	if err != nil && len(problems) > 0 {
		t.Logf("systemd-analyze: %v", err)
	}
}
