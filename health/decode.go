package health

import (
	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// The store reads its records through json v2 with encoding/json's
// semantics. These are the UnmarshalJSON methods of the types in a record,
// for that decoder: the same reading and the same checks, from the tokens it
// has read instead of bytes each level validates and scans again.

// UnmarshalJSONFrom reads a stored state as UnmarshalJSON does.
func (s *State) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	type plain State
	var v plain
	if err := jsonv2.UnmarshalDecode(dec, &v); err != nil {
		return err
	}
	if err := (*State)(&v).check(); err != nil {
		return err
	}
	*s = State(v)
	return nil
}

// UnmarshalJSONFrom reads a PolicySpec and normalizes it, as UnmarshalJSON
// does.
func (p *Policy) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	var s PolicySpec
	if err := jsonv2.UnmarshalDecode(dec, &s); err != nil {
		return err
	}
	n, err := s.Normalize()
	if err != nil {
		return err
	}
	*p = n
	return nil
}

// UnmarshalJSONFrom reads a written restart policy and normalizes it, as
// UnmarshalJSON does.
func (p *RestartPolicy) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	var s RestartPolicySpec
	if err := jsonv2.UnmarshalDecode(dec, &s); err != nil {
		return err
	}
	n, err := s.Normalize()
	if err != nil {
		return err
	}
	*p = n
	return nil
}

// UnmarshalJSONFrom reads results oldest first, keeping the newest
// HistorySize, as UnmarshalJSON does.
func (h *History) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	var rs []Result
	if err := jsonv2.UnmarshalDecode(dec, &rs); err != nil {
		return err
	}
	*h = History{}
	for _, r := range rs {
		h.Add(r)
	}
	return nil
}
