package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/client"
)

func TestPutBatch(t *testing.T) {
	srv, s := serve(t)
	tg := newTarget(t)
	c, err := client.New(srv.URL, client.WithToken(token))
	require.NoError(t, err)
	ctx := context.Background()
	_, _, err = c.Put(ctx, "vm-0", tcpInstance(tg.port, client.LifecycleStopped))
	require.NoError(t, err)

	bad := tcpInstance(tg.port, client.LifecycleRunning)
	bad.HealthCheck.Interval, bad.HealthCheck.Timeout = ptr("1s"), ptr("2s")
	results, err := c.PutBatch(ctx, []client.BatchItem{
		{ID: "vm-0", Instance: tcpInstance(tg.port, client.LifecycleRunning)},
		{ID: "vm-1", Instance: tcpInstance(tg.port, client.LifecycleRunning)},
		{ID: "vm-2", Instance: bad},
		{ID: "no good", Instance: tcpInstance(tg.port, client.LifecycleRunning)},
	})
	require.NoError(t, err)
	require.Len(t, results, 4)
	assert.Equal(t, client.BatchResult{ID: "vm-0"}, results[0], "replaced")
	assert.Equal(t, client.BatchResult{ID: "vm-1", Created: true}, results[1])
	var e *client.Error
	require.True(t, errors.As(results[2].Err, &e), "%v", results[2].Err)
	assert.Equal(t, client.Error{Status: http.StatusBadRequest, Code: "invalid_request", Field: "instances[2].health_check.timeout",
		Message: "health_check.timeout must be less than or equal to health_check.interval"}, *e)
	require.True(t, errors.As(results[3].Err, &e))
	assert.Equal(t, "instances[3].id", e.Field)
	assert.Equal(t, 2, s.Len())
	in, err := c.Get(ctx, "vm-0")
	require.NoError(t, err)
	assert.Equal(t, client.LifecycleRunning, in.State)

	// a batch the server refuses whole is the call's error
	many := make([]client.BatchItem, client.MaxBatch+1)
	for i := range many {
		many[i] = client.BatchItem{ID: fmt.Sprintf("vm-%d", i), Instance: tcpInstance(tg.port, client.LifecycleStopped)}
	}
	results, err = c.PutBatch(ctx, many)
	require.True(t, errors.As(err, &e), "%v", err)
	assert.Equal(t, http.StatusBadRequest, e.Status)
	assert.Equal(t, "instances", e.Field)
	assert.Nil(t, results)
	assert.Equal(t, 2, s.Len())
}
