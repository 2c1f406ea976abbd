package persistence

import (
	"context"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// TestPutInstancesIsOneCommit: a batch of specs is one write batch and one
// sync, durable when PutInstances returns.
func TestPutInstancesIsOneCommit(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	ins := make([]health.Instance, 1000)
	for i := range ins {
		ins[i] = inst(t, fmt.Sprintf("vm-%04d", i))
	}
	before := testutil.ToFloat64(s.metrics.commits)
	require.NoError(t, s.PutInstances(context.Background(), ins))
	assert.Equal(t, before+1, testutil.ToFloat64(s.metrics.commits))
	assert.Equal(t, float64(len(ins)), testutil.ToFloat64(s.metrics.specs))
	require.NoError(t, s.Close())

	s = open(t, dir)
	defer func() { require.NoError(t, s.Close()) }()
	n := 0
	require.NoError(t, s.Load(context.Background(), func(in health.Instance, _ *actors.Snapshot) error {
		assert.Equal(t, ins[n].ID, in.ID)
		n++
		return nil
	}))
	assert.Equal(t, len(ins), n)
	assert.Zero(t, s.Unreadable())
}
