package input

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/health"
)

func TestMergePatchOfTheWrittenSpec(t *testing.T) {
	var cur health.InstanceSpec
	require.NoError(t, Decode([]byte(`{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":9},"interval":"60s"}}`), &cur))
	next, err := MergePatch(cur, []byte(`{"health_check":{"tcp":null,"http":{"port":9}},"name":"web"}`))
	require.NoError(t, err)
	assert.Nil(t, next.HealthCheck.TCP)
	assert.Equal(t, 9, next.HealthCheck.HTTP.Port)
	assert.Equal(t, "60s", next.HealthCheck.Interval)
	assert.Equal(t, "web", next.Name)
	assert.Equal(t, "127.0.0.1", cur.Network.IP, "the current spec is left as it was")
	assert.NotNil(t, cur.HealthCheck.TCP)

	for patch, field := range map[string]string{
		`{"id":"x"}`: "id", `{"health_status":{}}`: "health_status", `{"colour":1}`: "colour", `[]`: "",
		`{"health_check":{"interval":5}}`: "health_check.interval", `{"a":1,"a":2}`: "a",
	} {
		_, err := MergePatch(cur, []byte(patch))
		var ie *Error
		require.True(t, errors.As(err, &ie), patch)
		assert.Equal(t, field, ie.Field, patch)
	}
}

// FuzzMergePatch checks that no patch makes merging panic, and that what it
// accepts decodes again to the same spec.
func FuzzMergePatch(f *testing.F) {
	f.Add(`{"state":"Stopped"}`)
	f.Add(`{"health_check":{"tcp":null,"http":{"port":80}}}`)
	f.Add(`{"health_check":null,"network":{"ip":"::1"}}`)
	f.Add(`{"vsock":{"cid":3,"port":0}}`)
	var cur health.InstanceSpec
	if err := Decode([]byte(`{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":9}}}`), &cur); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, patch string) {
		next, err := MergePatch(cur, []byte(patch))
		if err != nil {
			return
		}
		again, err := MergePatch(next, []byte(`{}`))
		require.NoError(t, err)
		assert.Equal(t, next, again)
		_, _ = next.Normalize("x")
	})
}
