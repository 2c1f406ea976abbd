package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vigilhq/vigil/internal/vigilbin"
)

// codeBlock returns the body of the first fenced block of the given
// language after the heading in README.md.
func codeBlock(t *testing.T, heading, lang string) string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	require.NoError(t, err)
	_, after, ok := strings.Cut(string(b), "\n"+heading+"\n")
	require.True(t, ok, "README has %q", heading)
	_, block, ok := strings.Cut(after, "```"+lang+"\n")
	require.True(t, ok)
	block, _, ok = strings.Cut(block, "```")
	require.True(t, ok)
	return block
}

// TestReadmeEmbeddingIsTheExample checks that README's embedding snippet is
// the body of actors/example_test.go's Example, which go test runs.
func TestReadmeEmbeddingIsTheExample(t *testing.T) {
	src, err := os.ReadFile("actors/example_test.go")
	require.NoError(t, err)
	_, body, ok := strings.Cut(string(src), "func Example() {\n")
	require.True(t, ok)
	body, _, ok = strings.Cut(body, "\t// Output:")
	require.True(t, ok)
	var want []string
	for _, l := range strings.Split(strings.TrimRight(body, "\n"), "\n") {
		want = append(want, strings.TrimPrefix(l, "\t"))
	}
	assert.Equal(t, strings.Join(want, "\n")+"\n", codeBlock(t, "## Embedding", "go"))
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestReadmeTourRuns pastes README's tour into bash against the real binary
// (on free ports instead of 8484 and 9000): it runs top to bottom and shows
// what README says it shows.
func TestReadmeTourRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary and the tour (≈ 20 s)")
	}
	for _, tool := range []string{"bash", "curl", "python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the tour needs %s, which this machine lacks", tool)
		}
	}
	t.Parallel()
	p := startVigilWith(t, t.TempDir())
	api := strings.TrimPrefix(p.url, "http://")
	target := strconv.Itoa(freePort(t))
	tour := codeBlock(t, "## A short tour", "sh")
	tour = strings.ReplaceAll(tour, "localhost:8484", api)
	tour = strings.ReplaceAll(tour, "9000", target)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-e", "-o", "pipefail", "-c", tour)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Run(), out.String())
	got := out.String()
	for _, want := range []string{
		`"from":"unknown","to":"starting"`,
		`"reason":"registered"`,
		`"from":"starting","to":"healthy"`,
		`"from":"healthy","to":"unhealthy"`,
		`"reason":"connection_refused"`,
		`"total":1`,
		`"outcome":"success"`,
		`"state":"Stopped"`,
		`vigil_instances{status="unknown"} 1`,
		"OpenAPI 3.0.3 ",
	} {
		assert.Contains(t, got, want)
	}
	// the resumed stream replayed from seq 2 on: the healthy transition again
	assert.Equal(t, 2, len(regexp.MustCompile(`"seq":2,`).FindAllString(got, -1)), got)
}

// TestReadmeFleetTourRuns pastes README's fleet tour into bash, with its
// ports made free ones: three real nodes and a real etcd.
func TestReadmeFleetTourRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("runs etcd, three nodes and the tour (≈ 15 s)")
	}
	for _, tool := range []string{"bash", "curl", "python3", "etcd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the fleet tour needs %s, which this machine lacks", tool)
		}
	}
	bin, err := vigilbin.Path()
	require.NoError(t, err)
	tour := codeBlock(t, "## Running a fleet", "sh")
	tour = strings.Replace(tour, "make build\n", "", 1)
	tour = strings.ReplaceAll(tour, "./bin/vigil", bin)
	for _, port := range []string{"2379", "2380", "9000"} {
		tour = strings.ReplaceAll(tour, ":"+port, ":"+strconv.Itoa(freePort(t)))
	}
	api, peer := strconv.Itoa(freePortOn(t, "127.0.0.1")), strconv.Itoa(freePortOn(t, "127.0.0.1"))
	tour = strings.ReplaceAll(tour, ":8484", ":"+api)
	tour = strings.ReplaceAll(tour, ":7946", ":"+peer)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-e", "-o", "pipefail", "-c", tour)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	require.NoError(t, err, out.String())
	got := out.String()
	for _, want := range []string{
		`"up":true`,
		`"status":"healthy"`,
		`"code":"conflict"`,
		`"node":"node-2"`,
		`"reason":"node_down"`,
		`"last_known_status":"healthy"`,
	} {
		assert.Contains(t, got, want)
	}
}
