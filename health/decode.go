package health

import (
	"encoding/json"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// The store reads its records through json v2 with encoding/json's
// semantics. The types in a record read themselves for it
// (UnmarshalJSONFrom) as for encoding/json (UnmarshalJSON) — one reading
// and one set of checks, given the decoder's read of the value — but from
// the tokens json v2 has read, instead of bytes each level validates and
// scans again.

// fromTokens is read for json v2: the value at dec.
func fromTokens(dec *jsontext.Decoder) func(any) error {
	return func(v any) error { return jsonv2.UnmarshalDecode(dec, v) }
}

// fromBytes is read for encoding/json: the value b.
func fromBytes(b []byte) func(any) error {
	return func(v any) error { return json.Unmarshal(b, v) }
}

// readNormalized reads a spec S and sets *dst to its normalized form.
func readNormalized[S interface{ Normalize() (N, error) }, N any](read func(any) error, dst *N) error {
	var s S
	if err := read(&s); err != nil {
		return err
	}
	n, err := s.Normalize()
	if err != nil {
		return err
	}
	*dst = n
	return nil
}

// UnmarshalJSONFrom reads a stored state as UnmarshalJSON does.
func (s *State) UnmarshalJSONFrom(dec *jsontext.Decoder) error { return s.read(fromTokens(dec)) }

// UnmarshalJSONFrom reads a PolicySpec and normalizes it, as UnmarshalJSON
// does.
func (p *Policy) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	return readNormalized[PolicySpec](fromTokens(dec), p)
}

// UnmarshalJSONFrom reads a written restart policy and normalizes it, as
// UnmarshalJSON does.
func (p *RestartPolicy) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	return readNormalized[RestartPolicySpec](fromTokens(dec), p)
}

// UnmarshalJSONFrom reads results as UnmarshalJSON does.
func (h *History) UnmarshalJSONFrom(dec *jsontext.Decoder) error { return h.read(fromTokens(dec)) }
