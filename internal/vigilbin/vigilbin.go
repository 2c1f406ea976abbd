// Package vigilbin builds the real vigil binary for tests that run it as a
// subprocess (the server end to end, the guest agent, the load test's exec
// targets). Test helper only.
//
// Concurrency contract: Path is safe for concurrent use; the build happens
// once per process.
package vigilbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
)

var build = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "vigil-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "vigil")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/vigilhq/vigil")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as the agent ships
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// Path builds the binary on first use and returns its path.
func Path() (string, error) { return build() }
