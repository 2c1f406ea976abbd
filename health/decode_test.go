package health

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Found by FuzzStateJSON: a stored state was decoded as it came, and one
// with the flapping ring's position outside the ring made the next status
// change panic (index out of range) in the actor that resumed it; a status
// outside the statuses was shown as it was, and negative counters counted
// on from there. Each is refused, naming the field.
func TestDecodedStateIsOneTheMachineCanDrive(t *testing.T) {
	for js, field := range map[string]string{
		`{"flap":{"next":6}}`:                           "state.flap.next",
		`{"flap":{"next":-1}}`:                          "state.flap.next",
		`{"status":"bogus"}`:                            "state.status",
		`{"status":"healthy","eval":"disabled"}`:        "state.eval",
		`{"consecutive_failures":-3}`:                   "state.consecutive_failures",
		`{"consecutive_successes":9223372036854775807}`: "state.consecutive_successes",
		`{"restart":{"attempts":-1}}`:                   "state.restart.attempts",
	} {
		var s State
		err := json.Unmarshal([]byte(js), &s)
		var fe *FieldError
		require.True(t, errors.As(err, &fe), "%s: %v", js, err)
		assert.Equal(t, field, fe.Field, js)
		assert.Equal(t, State{}, s, "%s: nothing decoded", js)
	}
	var s State
	require.NoError(t, json.Unmarshal([]byte(`{"status":"unhealthy","eval":"unhealthy","consecutive_failures":3,"flap":{"next":5}}`), &s))
	assert.Equal(t, StatusUnhealthy, s.Status)
	require.NotNil(t, s.Flap)
	assert.Equal(t, 5, s.Flap.Next)
	var older State
	require.NoError(t, json.Unmarshal([]byte(`{"status":"healthy","restart":{"attempts":0,"blocked_reason":""},`+
		`"flap":{"changes":[0,0,0,0,0,0],"next":0,"flapping":false}}`), &older))
	assert.Nil(t, older.Restart, "an older record's empty bookkeeping is not held")
	assert.Nil(t, older.Flap, "nor its empty ring")
}
