package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/client"
	"github.com/vigilhq/vigil/internal/vigilbin"
	"github.com/vigilhq/vigil/persistence"
)

// mountTmpfs mounts a tmpfs of size bytes for the test, or skips where the
// test may not mount (CI runs as root and does not skip).
func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount tmpfs: %v: %s", err, out)
		}
		t.Skipf("cannot mount a tmpfs here (%v: %s): the full-disk test needs root", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	require.NoError(t, syscall.Statfs(dir, &st))
	return int64(st.Bavail) * st.Bsize
}

// fill writes a file of zeros until only keep bytes are free.
func fill(t *testing.T, dir string, keep int64) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for freeBytes(t, dir) > keep+int64(len(chunk)) {
		_, err := f.Write(chunk)
		require.NoError(t, err)
	}
	return path
}

// TestFullDiskKeepsProbingAndRecovers fills the data dir's file system
// under the real binary: changes are refused with 503 storage_unavailable
// (never acknowledged), reads and probing go on, /readyz says why, and once
// space returns vigil writes again on its own, with nothing acknowledged
// lost and the transitions of the outage in the log, in order.
func TestFullDiskKeepsProbingAndRecovers(t *testing.T) {
	if testing.Short() {
		t.Skip("mounts a tmpfs and runs the binary")
	}
	t.Parallel()
	ctx := context.Background()
	mnt := mountTmpfs(t, persistence.FreeFloor+96<<20)
	dataDir := filepath.Join(mnt, "data")
	p := startVigil(t, dataDir)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	tcp := func() client.InstanceInput {
		in := instance(port)
		in.HealthCheck.Http, in.HealthCheck.Tcp = nil, &client.TCPCheck{Port: port}
		return in
	}
	acked := []string{}
	for i := range 20 {
		id := "vm-" + strconv.Itoa(i)
		_, _, err := p.c.Put(ctx, id, tcp())
		require.NoError(t, err)
		acked = append(acked, id)
	}
	require.Eventually(t, func() bool { s, err := p.c.Summary(ctx); return err == nil && s.Healthy == 20 }, 10*time.Second, 20*time.Millisecond)
	lastBefore := int64(0)
	for ev, err := range p.c.Events(ctx, client.EventsOptions{After: "0"}) {
		require.NoError(t, err)
		lastBefore = ev.Transition.Seq
		if lastBefore == 40 {
			break
		}
	}

	filler := fill(t, mnt, persistence.FreeFloor/2) // below what the store keeps free
	_, _, err = p.c.Put(ctx, "vm-late", tcp())
	var ae *client.Error
	require.ErrorAs(t, err, &ae, "a registration that cannot be made durable is refused")
	assert.Equal(t, http.StatusServiceUnavailable, ae.Status)
	assert.Equal(t, "storage_unavailable", ae.Code)
	assert.Positive(t, ae.RetryAfter)
	_, err = p.c.Patch(ctx, "vm-0", map[string]any{"name": "x"})
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "storage_unavailable", ae.Code)
	err = p.c.Ready(ctx)
	require.ErrorAs(t, err, &ae, "/readyz says why")
	assert.Contains(t, ae.Message, "free")
	in, err := p.c.Get(ctx, "vm-0")
	require.NoError(t, err, "reads go on")
	assert.Nil(t, in.Name, "the refused patch changed nothing")

	// probing goes on: the workload dies, every instance reads unhealthy
	require.NoError(t, l.Close())
	require.Eventually(t, func() bool { s, err := p.c.Summary(ctx); return err == nil && s.Unhealthy == 20 }, 10*time.Second, 20*time.Millisecond)

	require.NoError(t, os.Remove(filler)) // space returns
	require.Eventually(t, func() bool { return p.c.Ready(ctx) == nil }, 10*time.Second, 50*time.Millisecond, "vigil recovers on its own")
	_, _, err = p.c.Put(ctx, "vm-late", tcp())
	require.NoError(t, err)
	acked = append(acked, "vm-late")

	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	<-p.done
	p = startVigil(t, dataDir)
	for _, id := range acked {
		_, err := p.c.Get(ctx, id)
		assert.NoError(t, err, "%s kept", id)
	}
	var seqs []int64
	unhealthy := map[string]bool{}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for ev, err := range p.c.Events(rctx, client.EventsOptions{After: strconv.FormatInt(lastBefore, 10)}) {
		if errors.Is(err, context.DeadlineExceeded) || err != nil {
			break
		}
		seqs = append(seqs, ev.Transition.Seq)
		if ev.Transition.To == "unhealthy" {
			unhealthy[deref(ev.Transition.InstanceId)] = true
		}
		if len(unhealthy) == 20 {
			break
		}
	}
	assert.Len(t, unhealthy, 20, "the outage's transitions were made durable once space returned")
	for i := 1; i < len(seqs); i++ {
		assert.Equal(t, seqs[i-1]+1, seqs[i], "without gaps, in order")
	}
}

// damagedDir registers n stopped instances with the real binary, stops it
// with sig and returns the data dir and the ids acknowledged, in order.
func damagedDir(t *testing.T, n int, sig syscall.Signal) (string, []string) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	p := startVigil(t, dir)
	var ids []string
	for i := range n {
		id := fmt.Sprintf("vm-%03d", i)
		in := instance(9000 + i)
		in.State = client.LifecycleStopped
		_, _, err := p.c.Put(ctx, id, in)
		require.NoError(t, err)
		ids = append(ids, id)
	}
	require.NoError(t, p.cmd.Process.Signal(sig))
	<-p.done
	return dir, ids
}

// newest returns the data dir's newest file matching the pattern (the one
// with the highest number; Badger numbers its files in order).
func newest(t *testing.T, dir, pattern string) string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, pattern))
	require.NoError(t, err)
	require.NotEmpty(t, files, "no %s in %s", pattern, dir)
	sort.Strings(files)
	return files[len(files)-1]
}

// intact asserts that every instance vigil lists is the spec it was given.
func intact(t *testing.T, p *proc) []string {
	t.Helper()
	var ids []string
	for in, err := range p.c.All(context.Background(), client.ListOptions{}) {
		require.NoError(t, err)
		var id int
		_, err := fmt.Sscanf(in.Id, "vm-%03d", &id)
		require.NoError(t, err)
		require.NotNil(t, in.HealthCheck.Http)
		assert.Equal(t, 9000+id, in.HealthCheck.Http.Port, "%s is the spec it was given", in.Id)
		ids = append(ids, in.Id)
	}
	return ids
}

// TestDamagedDataDir damages a real data dir the ways a host damages one and
// starts the real binary on it: what is intact is served, what is not is
// skipped and reported, and a dir that cannot be opened at all is a clear
// error that says what to do.
func TestDamagedDataDir(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	t.Parallel()
	const n = 200

	t.Run("torn last write", func(t *testing.T) {
		t.Parallel()
		// killed mid-write: the end of the newest write-ahead log is garbage
		dir, ids := damagedDir(t, n, syscall.SIGKILL)
		wal := newest(t, dir, "*.mem")
		b, err := os.ReadFile(wal)
		require.NoError(t, err)
		at := bytes.LastIndex(b, []byte("i/"+ids[n-1])) // its spec's key
		require.Positive(t, at, "the log holds the last registration")
		for i := at; i < at+24; i++ {
			b[i] ^= 0xa5
		}
		require.NoError(t, os.WriteFile(wal, b, 0o600))
		p := startVigil(t, dir)
		got := intact(t, p)
		t.Logf("%d of %d after the torn write", len(got), n)
		// the torn write is the last registration's: every spec
		// acknowledged before it is there
		assert.NotContains(t, got, ids[n-1])
		assert.Subset(t, got, ids[:n-1])
	})

	t.Run("truncated value log", func(t *testing.T) {
		t.Parallel()
		dir, ids := damagedDir(t, n, syscall.SIGTERM)
		vlog := newest(t, dir, "*.vlog")
		st, err := os.Stat(vlog)
		require.NoError(t, err)
		require.NoError(t, os.Truncate(vlog, st.Size()/2))
		p := startVigil(t, dir)
		assert.Equal(t, ids, intact(t, p), "no spec depends on the value log")
	})

	t.Run("garbage after the value log", func(t *testing.T) {
		t.Parallel()
		dir, ids := damagedDir(t, n, syscall.SIGKILL)
		f, err := os.OpenFile(newest(t, dir, "*.vlog"), os.O_APPEND|os.O_WRONLY, 0)
		require.NoError(t, err)
		_, err = f.Write(bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 1024))
		require.NoError(t, err)
		require.NoError(t, f.Close())
		p := startVigil(t, dir)
		assert.Equal(t, ids, intact(t, p))
	})

	t.Run("corrupt table", func(t *testing.T) {
		t.Parallel()
		// SIGTERM: the clean close writes everything into tables
		dir, _ := damagedDir(t, n, syscall.SIGTERM)
		tables, err := filepath.Glob(filepath.Join(dir, "*.sst"))
		require.NoError(t, err)
		require.NotEmpty(t, tables)
		for _, f := range tables {
			b, err := os.ReadFile(f)
			require.NoError(t, err)
			for i := len(b) / 3; i < len(b)/3+200; i++ {
				b[i] ^= 0xff
			}
			require.NoError(t, os.WriteFile(f, b, 0o600))
		}
		p := startVigil(t, dir)
		got := intact(t, p)
		t.Logf("%d of %d after the damaged block", len(got), n)
		require.Less(t, len(got), n, "the damaged block's records are gone")
		lines := p.logged("store_records_unreadable")
		require.Len(t, lines, 1, "the start says how many it could not read")
		assert.EqualValues(t, n, lines[0]["expected"])
		assert.EqualValues(t, n-len(got), lines[0]["unreadable"])
		assert.Contains(t, metricsText(t, p), fmt.Sprintf(`vigil_store_records_not_loaded{reason="unreadable"} %d`, n-len(got)))
	})

	t.Run("corrupt manifest", func(t *testing.T) {
		t.Parallel()
		dir, _ := damagedDir(t, 20, syscall.SIGTERM)
		manifest := filepath.Join(dir, "MANIFEST")
		b, err := os.ReadFile(manifest)
		require.NoError(t, err)
		for i := 10; i < 40 && i < len(b); i++ {
			b[i] ^= 0xff
		}
		require.NoError(t, os.WriteFile(manifest, b, 0o600))
		code, stderr := runServeToExit(t, nil, "--listen", "127.0.0.1:0", "--data-dir", dir)
		assert.Equal(t, 1, code)
		assert.Contains(t, stderr, manifest, "the error names the file")
		assert.Contains(t, stderr, "move the directory aside")
	})

	t.Run("too few files allowed", func(t *testing.T) {
		t.Parallel()
		// the host's fault, not the files': the advice is to fix the
		// limit, and the directory, untouched, serves everything after
		dir, ids := damagedDir(t, 20, syscall.SIGTERM)
		bin, err := vigilbin.Path()
		require.NoError(t, err)
		out, err := exec.Command("sh", "-c", `ulimit -n 12 && exec "$0" serve --listen 127.0.0.1:0 --data-dir "$1"`, bin, dir).CombinedOutput()
		require.Error(t, err, "%s", out)
		assert.Contains(t, string(out), "may open only 12 files")
		assert.Contains(t, string(out), "not damaged")
		assert.Contains(t, string(out), "LimitNOFILE")
		assert.NotContains(t, string(out), "move the directory aside")
		p := startVigil(t, dir)
		assert.Equal(t, ids, intact(t, p))
	})

	t.Run("a file for a directory", func(t *testing.T) {
		t.Parallel()
		file := filepath.Join(t.TempDir(), "data")
		require.NoError(t, os.WriteFile(file, []byte("not a data dir"), 0o600))
		code, stderr := runServeToExit(t, nil, "--listen", "127.0.0.1:0", "--data-dir", file)
		assert.Equal(t, 1, code)
		assert.Contains(t, stderr, "not a directory")
		assert.NotContains(t, stderr, "move the directory aside")
		b, err := os.ReadFile(file)
		require.NoError(t, err)
		assert.Equal(t, "not a data dir", string(b), "left as it was")
	})

	t.Run("missing table", func(t *testing.T) {
		t.Parallel()
		dir, _ := damagedDir(t, 20, syscall.SIGTERM)
		table := newest(t, dir, "*.sst")
		require.NoError(t, os.Remove(table))
		code, stderr := runServeToExit(t, nil, "--listen", "127.0.0.1:0", "--data-dir", dir)
		assert.Equal(t, 1, code)
		assert.Contains(t, stderr, filepath.Base(table), "the error names the file")
		assert.Contains(t, stderr, "move the directory aside")
	})
}

// metricsText is the process's /metrics page.
func metricsText(t *testing.T, p *proc) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, p.url+"/metrics", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+e2eToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}
