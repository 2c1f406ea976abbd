package client_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/api"
	"github.com/vigilhq/vigil/client"
)

// holding is a registry whose Get of "vm-hold" waits until released: while
// probing is behind, that GET holds the API's one slot, and every other
// metered request finds it taken.
type holding struct {
	api.Registry
	entered chan struct{}
	release atomic.Pointer[chan struct{}]
}

func (h *holding) Get(ctx context.Context, id string) (actors.Info, error) {
	if id == "vm-hold" {
		release := *h.release.Load()
		h.entered <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
	}
	return h.Registry.Get(ctx, id)
}

// serveBehind runs the real API over a real scheduler whose probing counts
// as behind schedule: the API works on one request at a time, and one that
// finds it taken is a 503 with Retry-After. hold takes the one slot until
// the function it returns is called.
func serveBehind(t *testing.T) (srv *httptest.Server, hold func() (stop func())) {
	t.Helper()
	s, err := actors.New(context.Background())
	require.NoError(t, err)
	reg := &holding{Registry: s, entered: make(chan struct{})}
	srv = httptest.NewServer(api.New(reg, api.Options{Log: zerolog.Nop(), Token: token, QueueWait: 50 * time.Millisecond,
		Behind: func() bool { return true }}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		require.NoError(t, s.Close(context.Background()))
	})
	return srv, func() func() {
		release, exited := make(chan struct{}), make(chan struct{})
		reg.release.Store(&release)
		go func() {
			defer close(exited)
			req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/instances/vm-hold", nil)
			req.Header.Set("Authorization", "Bearer "+token)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				_ = resp.Body.Close()
			}
		}()
		<-reg.entered
		return func() { close(release); <-exited }
	}
}

func is503(t *testing.T, err error) {
	t.Helper()
	var e *client.Error
	require.True(t, errors.As(err, &e), "%v", err)
	assert.Equal(t, http.StatusServiceUnavailable, e.Status)
	assert.Equal(t, "unavailable", e.Code)
	assert.Equal(t, time.Second, e.RetryAfter)
}

// With WithRetryUnavailable a PUT, a GET and a DELETE turned away while
// probing is behind are tried again after the Retry-After until the server
// takes them, within the time given; a POST is not; without it, each 503
// is the caller's.
func TestRetryUnavailableTriesIdempotentRequestsAgain(t *testing.T) {
	srv, hold := serveBehind(t)
	tg := newTarget(t)
	ctx := context.Background()
	plain, err := client.New(srv.URL, client.WithToken(token))
	require.NoError(t, err)
	retrying, err := client.New(srv.URL, client.WithToken(token), client.WithRetryUnavailable(20*time.Second))
	require.NoError(t, err)

	stop := hold()
	_, _, err = plain.Put(ctx, "vm-1", tcpInstance(tg.port, client.LifecycleRunning))
	is503(t, err)

	began := time.Now()
	time.AfterFunc(700*time.Millisecond, stop)
	_, created, err := retrying.Put(ctx, "vm-1", tcpInstance(tg.port, client.LifecycleRunning))
	require.NoError(t, err, "tried again until the server took it")
	assert.True(t, created)
	assert.GreaterOrEqual(t, time.Since(began), 700*time.Millisecond)

	stop = hold()
	time.AfterFunc(700*time.Millisecond, stop)
	got, err := retrying.Get(ctx, "vm-1")
	require.NoError(t, err)
	assert.Equal(t, "vm-1", got.Id)

	stop = hold()
	_, err = retrying.Silence(ctx, client.SilenceInput{Match: client.SilenceMatch{Ids: &[]string{"vm-1"}}, Until: time.Now().Add(time.Hour)})
	is503(t, err) // a POST is never tried again
	shortly, err := client.New(srv.URL, client.WithToken(token), client.WithRetryUnavailable(100*time.Millisecond))
	require.NoError(t, err)
	began = time.Now()
	err = shortly.Delete(ctx, "vm-1")
	is503(t, err) // no second try fits in 100 ms
	assert.Less(t, time.Since(began), 400*time.Millisecond)
	time.AfterFunc(700*time.Millisecond, stop)
	require.NoError(t, retrying.Delete(ctx, "vm-1"))
	_, err = plain.Get(ctx, "vm-1")
	assert.True(t, client.IsNotFound(err), "%v", err)
}

// PutBatchWhenAvailable tries a batch the server turned away again until
// it takes it; PutBatch leaves the 503 to the caller.
func TestPutBatchWhenAvailableTriesAgain(t *testing.T) {
	srv, hold := serveBehind(t)
	tg := newTarget(t)
	ctx := context.Background()
	c, err := client.New(srv.URL, client.WithToken(token))
	require.NoError(t, err)
	items := []client.BatchItem{{ID: "vm-1", Instance: tcpInstance(tg.port, client.LifecycleRunning)},
		{ID: "vm-2", Instance: tcpInstance(tg.port, client.LifecycleRunning)}}

	stop := hold()
	_, err = c.PutBatch(ctx, items)
	is503(t, err)
	time.AfterFunc(700*time.Millisecond, stop)
	results, err := c.PutBatchWhenAvailable(ctx, items, 20*time.Second)
	require.NoError(t, err)
	assert.Equal(t, []client.BatchResult{{ID: "vm-1", Created: true}, {ID: "vm-2", Created: true}}, results)
}
