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

// Found by FuzzDecodeSpec: malformed JSON inside a field (here a lone
// surrogate escape) named the field in Field but not in the message.
func TestMalformedJSONInsideAFieldNamesIt(t *testing.T) {
	var spec health.InstanceSpec
	err := Decode([]byte(`{"state":"Running","health_check":{"exec":{"command":["a","\ud800"]}}}`), &spec)
	var ie *Error
	require.True(t, errors.As(err, &ie), "%v", err)
	assert.Equal(t, "health_check.exec.command[1]", ie.Field)
	assert.Contains(t, ie.Message, "malformed JSON in health_check.exec.command[1] at byte ")

	err = Decode([]byte(`{"state":`), &spec)
	require.True(t, errors.As(err, &ie), "%v", err)
	assert.Contains(t, ie.Message, "malformed JSON")
	assert.Contains(t, ie.Message, ie.Field)
}
