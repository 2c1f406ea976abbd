package act

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/health"
)

// A notifier's spec is refused naming the field that is wrong; parallel 0
// (or absent) is the default, one lane.
func TestNotifierSpecIsRefusedNamingTheField(t *testing.T) {
	ok := NotifierSpec{URL: "http://127.0.0.1:9/hook"}
	for _, c := range []struct {
		name  string
		spec  func(NotifierSpec) NotifierSpec
		nname string
		field string
	}{
		{"name", func(s NotifierSpec) NotifierSpec { return s }, "a b", "name"},
		{"url", func(s NotifierSpec) NotifierSpec { s.URL = "ftp://127.0.0.1/"; return s }, "n", "url"},
		{"secret", func(s NotifierSpec) NotifierSpec { s.Secret = strings.Repeat("s", maxSecret+1); return s }, "n", "secret"},
		{"parallel below", func(s NotifierSpec) NotifierSpec { s.Parallel = -1; return s }, "n", "parallel"},
		{"parallel above", func(s NotifierSpec) NotifierSpec { s.Parallel = maxParallel + 1; return s }, "n", "parallel"},
		{"match.to", func(s NotifierSpec) NotifierSpec { s.Match.To = []health.Status{"bogus"}; return s }, "n", "match.to[0]"},
	} {
		spec := c.spec(ok)
		err := spec.Validate(c.nname)
		var e *Error
		require.True(t, errors.As(err, &e), "%s: %v", c.name, err)
		assert.Equal(t, c.field, e.Field, c.name)
		assert.Contains(t, e.Message, strings.SplitN(c.field, "[", 2)[0], c.name)
	}
	for _, p := range []int{0, 1, maxParallel} {
		spec := ok
		spec.Parallel = p
		require.NoError(t, spec.Validate("n"), "parallel %d", p)
		assert.Equal(t, max(p, 1), spec.lanes())
	}
}
