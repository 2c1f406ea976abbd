package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/client"
)

func batchOf(n int, prefix string, in client.InstanceInput) []client.BatchItem {
	items := make([]client.BatchItem, n)
	for i := range items {
		items[i] = client.BatchItem{ID: fmt.Sprintf("%s-%04d", prefix, i), Instance: in}
	}
	return items
}

// TestBatchIsDurableOnceAcknowledged registers a batch through the real
// binary, kills it with SIGKILL the moment the answer comes, and finds every
// item it acknowledged after the restart.
func TestBatchIsDurableOnceAcknowledged(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	ctx := context.Background()
	dir := t.TempDir()
	p := startVigil(t, dir)
	items := batchOf(client.MaxBatch, "vm", client.InstanceInput{State: client.LifecycleStopped,
		Network: &client.Network{Ip: "127.0.0.1"}, HealthCheck: &client.HealthCheck{Tcp: &client.TCPCheck{Port: 9}}})
	items[500].Instance.HealthCheck = &client.HealthCheck{Tcp: &client.TCPCheck{Port: 70000}}
	results, err := p.c.PutBatch(ctx, items)
	require.NoError(t, err)
	require.NoError(t, p.cmd.Process.Kill())
	<-p.done

	var e *client.Error
	require.True(t, errors.As(results[500].Err, &e), "%v", results[500].Err)
	assert.Equal(t, "instances[500].health_check.tcp.port", e.Field)
	for i, r := range results {
		if i != 500 {
			require.NoError(t, r.Err, "item %d", i)
			require.True(t, r.Created, "item %d", i)
		}
	}
	p = startVigil(t, dir)
	sum, err := p.c.Summary(ctx)
	require.NoError(t, err)
	assert.Equal(t, client.MaxBatch-1, sum.Total, "every acknowledged item, and only those")
	var want, got []string
	for i, it := range items {
		if i != 500 {
			want = append(want, it.ID)
		}
	}
	for in, err := range p.c.All(ctx, client.ListOptions{Limit: 1000}) {
		require.NoError(t, err)
		got = append(got, in.Id)
	}
	assert.Equal(t, want, got)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, <-p.done)
}

// TestFleetBatch registers a batch with one node of a real fleet: ids
// nobody owns are claimed by it (more than one etcd transaction holds), an
// id another node owns is that item's conflict, and the others are served
// from anywhere.
func TestFleetBatch(t *testing.T) {
	if testing.Short() {
		t.Skip("runs etcd and two vigil processes")
	}
	ctx := context.Background()
	e := startEtcd(t)
	n1, n2 := startNode(t, "n1", "127.0.0.1", e.url), startNode(t, "n2", "127.0.0.2", e.url)
	require.Eventually(t, func() bool {
		list, err := n1.c.Nodes(ctx)
		return err == nil && len(list) == 2 && list[0].Up && list[1].Up
	}, 10*time.Second, 20*time.Millisecond, "two nodes up")
	stopped := client.InstanceInput{State: client.LifecycleStopped, Network: &client.Network{Ip: "127.0.0.1"},
		HealthCheck: &client.HealthCheck{Tcp: &client.TCPCheck{Port: 9}}}
	_, _, err := n1.c.Put(ctx, "vm-0007", stopped)
	require.NoError(t, err)

	items := batchOf(250, "vm", stopped)
	results, err := n2.c.PutBatch(ctx, items)
	require.NoError(t, err)
	var ce *client.Error
	require.True(t, errors.As(results[7].Err, &ce), "%v", results[7].Err)
	assert.Equal(t, http.StatusConflict, ce.Status)
	assert.Equal(t, "conflict", ce.Code)
	for i, r := range results {
		if i != 7 {
			require.NoError(t, r.Err, "item %d", i)
		}
	}
	in, err := n1.c.Get(ctx, "vm-0100")
	require.NoError(t, err)
	assert.Equal(t, "n2", deref(in.Node), "n1 serves n2's instance")
	in, err = n2.c.Get(ctx, "vm-0007")
	require.NoError(t, err)
	assert.Equal(t, "n1", deref(in.Node), "still n1's")
	sum, err := n2.c.Summary(ctx)
	require.NoError(t, err)
	assert.Equal(t, 249, sum.Total)
	// 249 claims in a few transactions, not one each: three chunks (and the
	// one that met n1's id again without it, when n2's catalog had not
	// heard of it yet)
	claims := etcdOps(t, n2, "claim")
	assert.True(t, claims == 3 || claims == 4, "%d transactions", claims)

	// the same batch again replaces n2's own and still refuses n1's
	results, err = n2.c.PutBatch(ctx, items)
	require.NoError(t, err)
	assert.Error(t, results[7].Err)
	assert.False(t, results[8].Created)
	assert.NoError(t, results[8].Err)
}

// etcdOps is how many round trips to etcd of this operation the node made.
func etcdOps(t *testing.T, n *fleetNode, op string) int {
	t.Helper()
	resp, err := http.Get("http://" + n.api + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^vigil_fleet_etcd_seconds_count\{op="` + op + `"\} (\d+)$`).FindSubmatch(b)
	require.NotNil(t, m, "no %s in the metrics", op)
	count, err := strconv.Atoi(string(m[1]))
	require.NoError(t, err)
	return count
}
