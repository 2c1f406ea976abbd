package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/act"
	"github.com/vigilhq/vigil/client"
)

// TestNotifierDeliversAcrossAKill runs the real binary with two notifiers
// whose receiver is down, one delivering an event at a time and one four
// instances' at once: a SIGKILL with events undelivered, a restart, and the
// receiver, up again, gets every one of them from each.
func TestNotifierDeliversAcrossAKill(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	t.Parallel()
	ctx := context.Background()
	var up atomic.Bool
	var mu sync.Mutex
	got := map[string]map[int64]int{"1": {}, "4": {}} // notifier → seq → deliveries
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !up.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if r.Header.Get(act.SignatureHeader) != act.Sign("k", body) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var ce struct {
			Data struct {
				Seq int64 `json:"seq"`
			} `json:"data"`
		}
		_ = json.Unmarshal(body, &ce)
		mu.Lock()
		if m := got[r.URL.Query().Get("parallel")]; m != nil {
			m[ce.Data.Seq]++
		}
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	defer rcv.Close()

	dir := t.TempDir()
	p := startVigil(t, dir)
	_, created, err := p.c.PutNotifier(ctx, "pager", client.NotifierInput{Url: rcv.URL + "?parallel=1", Secret: ptr("k")})
	require.NoError(t, err)
	require.True(t, created)
	_, created, err = p.c.PutNotifier(ctx, "pager-4", client.NotifierInput{Url: rcv.URL + "?parallel=4", Secret: ptr("k"), Parallel: ptr(4)})
	require.NoError(t, err)
	require.True(t, created)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	for i := range 5 {
		in := instance(port)
		in.HealthCheck.Http = nil
		in.HealthCheck.Tcp = &client.TCPCheck{Port: port}
		_, _, err := p.c.Put(ctx, "vm-"+strconv.Itoa(i), in)
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { s, err := p.c.Summary(ctx); return err == nil && s.Healthy == 5 }, 10*time.Second, 20*time.Millisecond)
	require.NoError(t, l.Close()) // every instance goes unhealthy: more events
	require.Eventually(t, func() bool { s, err := p.c.Summary(ctx); return err == nil && s.Unhealthy == 5 }, 10*time.Second, 20*time.Millisecond)
	n, err := p.c.Notifier(ctx, "pager")
	require.NoError(t, err)
	require.GreaterOrEqual(t, n.Backlog, int64(10), "undelivered: the receiver is down")
	require.NotEmpty(t, n.LastError)
	var seqs []int64
	for ev, err := range p.c.Events(ctx, client.EventsOptions{After: "0"}) {
		require.NoError(t, err)
		seqs = append(seqs, ev.Transition.Seq)
		if len(seqs) == 15 { // 5 × registered, healthy, unhealthy
			break
		}
	}

	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	<-p.done
	up.Store(true)
	p = startVigil(t, dir)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range got {
			for _, s := range seqs {
				if m[s] == 0 {
					return false
				}
			}
		}
		return true
	}, 20*time.Second, 50*time.Millisecond, "every event delivered after the restart, by each notifier")
	for name, parallel := range map[string]int{"pager": 1, "pager-4": 4} {
		n, err = p.c.Notifier(ctx, name)
		require.NoError(t, err)
		assert.Empty(t, n.LastError, name)
		assert.True(t, n.SecretSet, name)
		assert.Equal(t, parallel, n.Parallel, name)
	}
}

// TestActingOverHTTP drives labels, notifiers, silences and incidents
// through the real server.
func TestActingOverHTTP(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	t.Parallel()
	ctx := context.Background()
	p := startVigil(t, t.TempDir())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	for i, svc := range []string{"web", "web", "db"} {
		in := instance(port)
		in.HealthCheck.Http, in.HealthCheck.Tcp = nil, &client.TCPCheck{Port: port}
		in.Labels = &map[string]string{"service": svc, "n": strconv.Itoa(i)}
		_, _, err := p.c.Put(ctx, "vm-"+strconv.Itoa(i), in)
		require.NoError(t, err)
	}
	page, err := p.c.List(ctx, client.ListOptions{Labels: map[string]string{"service": "web"}})
	require.NoError(t, err)
	assert.Len(t, page.Instances, 2)
	page, err = p.c.List(ctx, client.ListOptions{Labels: map[string]string{"service": "web", "n": "1"}})
	require.NoError(t, err)
	require.Len(t, page.Instances, 1, "several labels are ANDed")
	assert.Equal(t, "vm-1", page.Instances[0].Id)

	bad := instance(port)
	bad.Labels = &map[string]string{"-x": "y"}
	_, _, err = p.c.Put(ctx, "vm-bad", bad)
	var ae *client.Error
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "labels.-x", ae.Field)
	_, err = p.c.List(ctx, client.ListOptions{Labels: map[string]string{"": "x"}})
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "label", ae.Field)
	rp := instance(port)
	rp.RestartPolicy = &client.RestartPolicy{Policy: ptr(client.RestartPolicyPolicy("on_unhealthy"))}
	_, _, err = p.c.Put(ctx, "vm-rp", rp)
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "restart_policy.url", ae.Field)

	_, _, err = p.c.PutNotifier(ctx, "n", client.NotifierInput{Url: "not a url"})
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "url", ae.Field)
	_, created, err := p.c.PutNotifier(ctx, "n", client.NotifierInput{Url: "http://127.0.0.1:9/x", Match: &client.Match{To: &[]client.Status{"unhealthy"}}})
	require.NoError(t, err)
	assert.True(t, created)
	list, err := p.c.Notifiers(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Equal(t, "n", list[0].Name)
	require.NoError(t, p.c.DeleteNotifier(ctx, "n"))
	_, err = p.c.Notifier(ctx, "n")
	assert.True(t, client.IsNotFound(err))

	sl, err := p.c.Silence(ctx, client.SilenceInput{Match: client.SilenceMatch{Labels: &map[string]string{"service": "db"}},
		Until: time.Now().Add(time.Hour), Comment: ptr("maintenance")})
	require.NoError(t, err)
	sls, err := p.c.Silences(ctx)
	require.NoError(t, err)
	require.Len(t, sls, 1)
	assert.Equal(t, sl.Id, sls[0].Id)
	require.NoError(t, p.c.Unsilence(ctx, sl.Id))
	assert.True(t, client.IsNotFound(p.c.Unsilence(ctx, sl.Id)))
	_, err = p.c.Silence(ctx, client.SilenceInput{Match: client.SilenceMatch{Node: ptr("x")}, Until: time.Now().Add(-time.Hour)})
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "until", ae.Field)

	incs, err := p.c.Incidents(ctx)
	require.NoError(t, err)
	assert.Empty(t, incs)
}
