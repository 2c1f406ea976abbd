package health

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// escape writes b as tcp.send may be written: printable ASCII as it is, a
// backslash doubled, \r \n \t, and every other byte as \xNN.
func escape(b []byte) string {
	var sb strings.Builder
	for _, c := range b {
		switch {
		case c == '\\':
			sb.WriteString(`\\`)
		case c == '\r':
			sb.WriteString(`\r`)
		case c == '\n':
			sb.WriteString(`\n`)
		case c == '\t':
			sb.WriteString(`\t`)
		case c >= ' ' && c < 0x7f:
			sb.WriteByte(c)
		default:
			fmt.Fprintf(&sb, `\x%02X`, c)
		}
	}
	return sb.String()
}

var atByte = regexp.MustCompile(`at byte (\d+)`)

// FuzzDecodeEscapes checks tcp.send's escapes: any bytes, escaped, decode
// to themselves; a string either decodes to bytes that escape and decode
// to the same bytes, never longer than the string, or is refused with an
// error whose byte offset points at the backslash at fault; and the policy
// names health_check.tcp.send in its error.
func FuzzDecodeEscapes(f *testing.F) {
	for _, s := range []string{`PING\r\n`, `\x00\xff\xFf`, `a\\b\t`, `\q`, `\x4`, `\xg0`, `end\`, "\xff", `é\n`, ``} {
		f.Add(s, []byte(s))
	}
	f.Fuzz(func(t *testing.T, s string, raw []byte) {
		got, err := DecodeEscapes(escape(raw))
		require.NoError(t, err, "%q", escape(raw))
		require.True(t, bytes.Equal(raw, got), "escaped bytes decode to themselves")

		b, err := DecodeEscapes(s)
		_, perr := PolicySpec{TCP: &TCPSpec{Port: 1, Send: s, Expect: "x"}}.Normalize()
		if err != nil {
			require.NotEmpty(t, err.Error())
			if m := atByte.FindStringSubmatch(err.Error()); m != nil {
				i, _ := strconv.Atoi(m[1])
				require.Less(t, i, len(s))
				require.Equal(t, byte('\\'), s[i], "the offset in %q points at the backslash", err)
			}
			var fe *FieldError
			require.True(t, errors.As(perr, &fe), "%v", perr)
			require.Equal(t, "health_check.tcp.send", fe.Field)
			return
		}
		require.LessOrEqual(t, len(b), len(s), "decoding never grows")
		if !strings.Contains(s, `\`) {
			require.Equal(t, s, string(b), "without a backslash, what is written is sent")
		}
		again, err := DecodeEscapes(escape(b))
		require.NoError(t, err)
		require.Equal(t, b, again)
		if perr != nil {
			var fe *FieldError
			require.True(t, errors.As(perr, &fe), "%v", perr)
			require.Equal(t, "health_check.tcp.send", fe.Field, "only the size can be wrong: %v", perr)
			require.Greater(t, len(b), MaxTCPSend)
		}
	})
}

// FuzzHistory checks the compact history: results of every shape, added to
// a history, come back as they were (the newest HistorySize of them, oldest
// first); the history's JSON decodes to the same results; and any JSON is
// refused or decodes to a history of at most HistorySize results whose JSON
// is a fixed point.
func FuzzHistory(f *testing.F) {
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24},
		"message", `[{"outcome":"success","start":"2026-11-26T10:00:00Z","duration":"1ms","http_status":200}]`)
	f.Add([]byte{255, 0, 128, 7}, "", `[{"outcome":"failure","reason":"x","message":"m","exit_code":-1,"output":"o",`+
		`"output_truncated":true,"cert_not_after":"2027-01-01T00:00:00Z","phases":{"connect_ms":0.5}}]`)
	f.Add([]byte{}, "é", `[{"outcome":"bogus","start":"0001-01-01T00:00:01Z","duration":"-1ns","http_status":99999}]`)
	f.Add([]byte{}, "", `[{"phases":{"connect_ms":1e300}}]`)
	f.Add([]byte{}, "", `{}`)
	f.Fuzz(func(t *testing.T, fields []byte, text, js string) {
		var in []Result
		var h History
		for i := 0; len(fields) >= 8; i++ {
			r := fuzzResult(fields[:8], text)
			fields = fields[8:]
			in = append(in, r)
			h.Add(r)
		}
		want := in[max(len(in)-HistorySize, 0):]
		got := h.Results()
		require.Len(t, got, len(want))
		for i := range want {
			require.Equal(t, want[i], got[i], "result %d comes back as it was added", i)
		}
		if len(want) > 0 {
			last, ok := h.Last()
			require.True(t, ok)
			require.Equal(t, want[len(want)-1], last)
		}
		b, err := h.MarshalJSON()
		require.NoError(t, err)
		var back History
		require.NoError(t, back.UnmarshalJSON(b), "%s", b)
		if utf8.ValidString(text) {
			require.Equal(t, got, back.Results(), "the JSON keeps every result: %s", b)
		}

		var dec History
		if dec.UnmarshalJSON([]byte(js)) != nil {
			return
		}
		require.LessOrEqual(t, dec.Len(), HistorySize)
		b1, err := dec.MarshalJSON()
		require.NoError(t, err)
		var dec2 History
		require.NoError(t, dec2.UnmarshalJSON(b1), "%s", b1)
		b2, err := dec2.MarshalJSON()
		require.NoError(t, err)
		require.Equal(t, string(b1), string(b2), "decoding a history's JSON and writing it again changes nothing")
	})
}

// fuzzResult builds a result a probe could produce from 8 bytes and a text:
// times inside what unix nanoseconds hold, and not at the epoch itself
// (0 stands for none), a known outcome.
func fuzzResult(b []byte, text string) Result {
	r := Result{Outcome: []Outcome{Success, Failure, Skipped}[int(b[0])%3],
		Start:      time.Unix(int64(b[1])<<24|int64(b[2])<<8|1, int64(b[3])<<16).UTC(),
		Duration:   Duration(int64(b[4])<<20 - 1<<26),
		HTTPStatus: int(b[5]) * 3,
	}
	if b[6]&1 != 0 {
		code := int(int32(uint32(b[7])<<24 | uint32(b[2])))
		r.ExitCode = &code
	}
	reasons := append(reasonCodes[:], "custom", Reason(text))
	r.Reason = reasons[int(b[7])%len(reasons)]
	if b[6]&2 != 0 {
		r.Message = text
	}
	if b[6]&4 != 0 {
		r.Output, r.Truncated = text+text, b[6]&8 != 0
	}
	if b[6]&16 != 0 {
		r.CertNotAfter = time.Unix(int64(b[1])<<28+1, 0).UTC()
	}
	if b[6]&32 != 0 {
		r.Phases = Phases{Connect: time.Duration(b[3]) * time.Microsecond, TLS: time.Duration(b[4]) * time.Millisecond,
			FirstByte: time.Duration(b[5]) * 10 * time.Microsecond}
	}
	if r.Start.UnixNano() > math.MaxInt64/2 {
		r.Start = t0
	}
	return r
}

// FuzzCutUTF8 checks the cuts that bound a message and an output:
// TruncateUTF8 keeps a prefix and TailUTF8 a suffix of at most n bytes and
// at most utf8.UTFMax-1 fewer, whatever the bytes; of valid UTF-8 they keep
// valid UTF-8, as many whole runes as fit.
func FuzzCutUTF8(f *testing.F) {
	for _, s := range []string{"", "abc", "héllo wörld", "€€€€", "\x80\x80\x80\x80\x80\x80", "a\xffb\xe2\x82", "😀😀"} {
		f.Add(s, uint8(3))
	}
	f.Fuzz(func(t *testing.T, s string, n uint8) {
		for _, c := range []struct {
			name string
			cut  string
			ok   func(string, string) bool
			next func(string) (rune, int)
		}{
			{"TruncateUTF8", TruncateUTF8(s, int(n)), strings.HasPrefix, func(rest string) (rune, int) { return utf8.DecodeRuneInString(rest) }},
			{"TailUTF8", TailUTF8(s, int(n)), strings.HasSuffix, func(rest string) (rune, int) { return utf8.DecodeLastRuneInString(rest) }},
		} {
			require.True(t, c.ok(s, c.cut), "%s keeps an end of the string", c.name)
			require.LessOrEqual(t, len(c.cut), int(n), c.name)
			require.GreaterOrEqual(t, len(c.cut), min(len(s), int(n)-(utf8.UTFMax-1)), "%s drops at most 3 bytes", c.name)
			if utf8.ValidString(s) {
				require.True(t, utf8.ValidString(c.cut), "%s of valid UTF-8 is valid", c.name)
				if len(c.cut) < len(s) {
					var rest string
					if c.name == "TruncateUTF8" {
						rest = s[len(c.cut):]
					} else {
						rest = s[:len(s)-len(c.cut)]
					}
					_, size := c.next(rest)
					require.Greater(t, len(c.cut)+size, int(n), "%s keeps every rune that fits", c.name)
				}
			}
		}
	})
}
