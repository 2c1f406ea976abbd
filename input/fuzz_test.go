package input

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/health"
)

// specSeeds are instance specs as clients write them, for the fuzz targets
// to start from.
var specSeeds = []string{
	`{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":9}}}`,
	`{"state":"Running","network":{"ip":"10.0.0.2","source_ip":"10.0.0.1"},"health_check":{"http":{"port":80,"path":"/healthz",` +
		`"expected_status":"200-299,304","headers":{"X-A":"b"},"method":"post","body":"{}","content_type":"application/json",` +
		`"body_regex":"ok","condition":"status == 200"},"interval":"30s","timeout":"1s","failure_threshold":2}}`,
	`{"state":"Initializing","started_at":"2026-11-26T10:00:00+01:00","vsock":{"cid":3},"health_check":{"exec":{"command":["true"],` +
		`"env":{"A":"1"},"working_dir":"/"}},"labels":{"app":"web","example.com/tier":"1"}}`,
	`{"state":"Running","network":{"ip":"::1"},"health_check":{"grpc":{"port":50051,"service":"x"},"start_period":"0s"},` +
		`"restart_policy":{"policy":"on_unhealthy","url":"http://127.0.0.1:1/restart"}}`,
	`{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":6379,"send":"PING\\r\\n","expect":"^\\+PONG"}}}`,
	`{"state":"Stopped","vsock":{"socket":"/run/vm.sock","port":52}}`,
	`{"state":"Running","health_check":{"type":"none"},"name":"n"}`,
	`{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"http":{"port":443,"scheme":"https","expected_status":204,` +
		`"tls":{"server_name":"a.example","min_days_valid":7}}}}`,
	`{"health_check":{"tcp":{"port":1e9}}}`,
	`{"state":"Running","state":"Running"}`,
	`{"state":"Running","labels":{"a":1}}`,
	`{"state":"Running","health_check":{"exec":{"command":["a","\ud800"]}}}`,
	"{\"name\":\"\xff\"}",
	`[]`,
	``,
}

// requireInputError checks that err is an *Error whose message names its
// field.
func requireInputError(t *testing.T, err error) {
	t.Helper()
	var ie *Error
	require.True(t, errors.As(err, &ie), "want an *input.Error, got %T: %v", err, err)
	require.NotEmpty(t, ie.Message)
	require.Contains(t, ie.Message, ie.Field, "the message names the field")
}

// requireFieldError checks that err is a *health.FieldError naming a field.
func requireFieldError(t *testing.T, err error) {
	t.Helper()
	var fe *health.FieldError
	require.True(t, errors.As(err, &fe), "want a *health.FieldError, got %T: %v", err, err)
	require.NotEmpty(t, fe.Field)
	require.NotEmpty(t, fe.Message)
}

// requireRoundTrip checks what a decoded spec must satisfy: it encodes to
// JSON that decodes to a spec encoding the same (an empty object may come
// back as none: omitempty) and normalizing the same; it normalizes, or fails
// naming a field; and the normalized form is a fixed point — written out
// with every default, it decodes and normalizes to the same instance.
func requireRoundTrip(t *testing.T, spec health.InstanceSpec) {
	t.Helper()
	b, err := json.Marshal(spec)
	require.NoError(t, err)
	var again health.InstanceSpec
	require.NoError(t, Decode(b, &again), "%s", b)
	b2, err := json.Marshal(again)
	require.NoError(t, err)
	require.Equal(t, string(b), string(b2), "encode, decode, encode gives the same JSON")

	in, err := spec.Normalize("x")
	inAgain, errAgain := again.Normalize("x")
	if err != nil {
		requireFieldError(t, err)
		require.Equal(t, err, errAgain, "the decoded spec fails the same way: %s", b)
		return
	}
	require.NoError(t, errAgain, "%s", b)
	in.Written, inAgain.Written = nil, nil
	require.Equal(t, in, inAgain, "the decoded spec normalizes the same: %s", b)
	b, err = json.Marshal(in.NormalizedSpec())
	require.NoError(t, err)
	var norm health.InstanceSpec
	require.NoError(t, Decode(b, &norm), "%s", b)
	in2, err := norm.Normalize("x")
	require.NoError(t, err, "the normalized spec validates: %s", b)
	in2.Written = nil
	require.Equal(t, in, in2, "normalizing is idempotent: %s", b)

	// what the store keeps: the instance's own JSON decodes to it
	b, err = json.Marshal(in)
	require.NoError(t, err)
	var stored health.Instance
	require.NoError(t, json.Unmarshal(b, &stored), "%s", b)
	require.Equal(t, in, stored, "the stored instance decodes to itself: %s", b)
}

// FuzzDecodeSpec checks the decoder of an instance spec (a PUT body): any
// input is either refused with an error naming its field, or decodes to a
// spec that round-trips (requireRoundTrip).
func FuzzDecodeSpec(f *testing.F) {
	for _, s := range specSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var spec health.InstanceSpec
		if err := Decode(body, &spec); err != nil {
			requireInputError(t, err)
			return
		}
		requireRoundTrip(t, spec)
	})
}

// FuzzMergePatch checks the merge patch of a spec as written: a patch is
// refused naming its field, or the result round-trips (requireRoundTrip),
// applying the same patch again changes nothing (RFC 7396 patches are
// idempotent), and the result normalizes or fails naming a field.
func FuzzMergePatch(f *testing.F) {
	for i, p := range []string{
		`{"state":"Stopped"}`,
		`{"health_check":{"tcp":null,"http":{"port":80}}}`,
		`{"health_check":null,"network":{"ip":"::1"}}`,
		`{"vsock":{"cid":3,"port":0}}`,
		`{"health_check":{"http":{"expected_status":"200-299"}},"labels":{"app":null,"b":"c"}}`,
		`{"health_check":{"interval":5}}`,
		`{"id":"x"}`,
		`{"health_status":{}}`,
		`{"a":1,"a":2}`,
		`{"name":"\ud800"}`,
		`null`,
		`[]`,
	} {
		f.Add(specSeeds[i%5], p)
	}
	f.Fuzz(func(t *testing.T, base, patch string) {
		var cur health.InstanceSpec
		if Decode([]byte(base), &cur) != nil {
			return
		}
		next, err := MergePatch(cur, []byte(patch))
		if err != nil {
			requireInputError(t, err)
			return
		}
		requireRoundTrip(t, next)
		again, err := MergePatch(next, []byte(patch))
		require.NoError(t, err, "a patch accepted once is accepted again")
		require.Equal(t, next, again, "applying a patch twice is applying it once")
	})
}
