package health

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func testCertPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, IsCA: true,
		BasicConstraintsValid: true, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestResponseCheckRules(t *testing.T) {
	ca := testCertPEM(t)
	https := func(tls string) string { return `{"http":{"port":443,"scheme":"https","tls":` + tls + `}}` }
	for _, tc := range []struct {
		js, field, msg string
	}{
		{`{"http":{"port":80,"condition":"   "}}`, "health_check.http.condition", "not only spaces"},
		{`{"http":{"port":80,"condition":"` + strings.Repeat("a", MaxCondition+1) + `"}}`, "health_check.http.condition", "at most 4096 bytes"},
		{`{"http":{"port":80,"body_regex":"a("}}`, "health_check.http.body_regex", "must be an RE2 regular expression: missing closing ): `a(`"},
		{`{"http":{"port":80,"body_regex":"(?<=a)b"}}`, "health_check.http.body_regex", "RE2"},
		{`{"http":{"port":80,"body_regex":"` + strings.Repeat("a", MaxPattern+1) + `"}}`, "health_check.http.body_regex", "at most 1024"},
		{`{"http":{"port":80,"body":"x"}}`, "health_check.http.body", "must be left out unless health_check.http.method is POST or PUT"},
		{`{"http":{"port":80,"method":"HEAD","content_type":"text/plain"}}`, "health_check.http.content_type", "unless"},
		{`{"http":{"port":80,"method":"POST","body":"` + strings.Repeat("a", MaxRequestBody+1) + `"}}`, "health_check.http.body", "at most 65536"},
		{`{"http":{"port":80,"method":"POST","content_type":"not a type"}}`, "health_check.http.content_type", "media type"},
		{`{"http":{"port":80,"method":"PUT","content_type":"text/plain","headers":{"content-type":"x"}}}`,
			"health_check.http.content_type", "conflicts with health_check.http.headers.content-type"},
		{`{"http":{"port":80,"tls":{"min_days_valid":7}}}`, "health_check.http.tls", "unless health_check.http.scheme is https"},
		{https(`{"server_name":"a b"}`), "health_check.http.tls.server_name", "DNS name"},
		{https(`{"server_name":"a..b"}`), "health_check.http.tls.server_name", "DNS name"},
		{https(`{"ca_pem":"hello"}`), "health_check.http.tls.ca_pem", "at least one PEM certificate"},
		{https(`{"ca_pem":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}`), "health_check.http.tls.ca_pem",
			"only CERTIFICATE blocks (found a PRIVATE KEY block)"},
		{https(`{"ca_pem":"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}`), "health_check.http.tls.ca_pem",
			"certificate 1"},
		{https(`{"ca_pem":` + quote(ca+"junk") + `}`), "health_check.http.tls.ca_pem", "text after its last certificate"},
		{`{"http":{"port":443,"scheme":"https","tls_skip_verify":true,"tls":{"ca_pem":` + quote(ca) + `}}}`,
			"health_check.http.tls.ca_pem", "conflicts with health_check.http.tls_skip_verify"},
		{https(`{"min_days_valid":-1}`), "health_check.http.tls.min_days_valid", "between 1 and 3650"},
		{https(`{"min_days_valid":3651}`), "health_check.http.tls.min_days_valid", "between 1 and 3650"},

		{`{"tcp":{"port":6379,"send":"PING\\q","expect":"x"}}`, "health_check.tcp.send", `unknown escape \q at byte 4`},
		{`{"tcp":{"port":6379,"send":"\\x4","expect":"x"}}`, "health_check.tcp.send", `\x not followed by two hex digits`},
		{`{"tcp":{"port":6379,"send":"PING\\","expect":"x"}}`, "health_check.tcp.send", "lone backslash"},
		{`{"tcp":{"port":6379,"send":"PING"}}`, "health_check.tcp.send", "needs health_check.tcp.expect"},
		{`{"tcp":{"port":6379,"send":"` + strings.Repeat("a", MaxTCPSend+1) + `","expect":"x"}}`, "health_check.tcp.send", "at most 4096 bytes"},
		{`{"tcp":{"port":6379,"expect":"+PONG"}}`, "health_check.tcp.expect", "missing argument to repetition operator"},
	} {
		_, err := decodePolicy(t, tc.js)
		var fe *FieldError
		require.True(t, errors.As(err, &fe), "%s: want a FieldError, got %v", tc.js, err)
		assert.Equal(t, tc.field, fe.Field, tc.js)
		assert.Contains(t, err.Error(), tc.msg, tc.js)
	}
}

func TestResponseChecksNormalize(t *testing.T) {
	ca := testCertPEM(t)
	js := `{"http":{"port":443,"scheme":"https","method":"post","body":"{}","content_type":"application/json",` +
		`"body_regex":"ok","condition":"status == 200","tls":{"server_name":"app.example","ca_pem":` + quote(ca) + `,"min_days_valid":7}}}`
	p, err := decodePolicy(t, js)
	require.NoError(t, err)
	h := p.HTTP
	assert.Equal(t, "POST", h.Method)
	assert.Equal(t, "{}", h.Body)
	assert.Equal(t, "application/json", h.ContentType)
	assert.Equal(t, "ok", h.BodyRegex)
	assert.Equal(t, "status == 200", h.Condition)
	assert.Equal(t, &TLSSpec{ServerName: "app.example", CAPEM: ca, MinDaysValid: 7}, h.TLS)
	// the normalized form reads back as itself
	b, err := json.Marshal(p)
	require.NoError(t, err)
	var again Policy
	require.NoError(t, json.Unmarshal(b, &again))
	assert.True(t, p.Equal(&again), string(b))

	p, err = decodePolicy(t, `{"http":{"port":443,"scheme":"https","tls":{}}}`)
	require.NoError(t, err)
	assert.Nil(t, p.HTTP.TLS, "an empty tls block is no block")

	p, err = decodePolicy(t, `{"tcp":{"port":6379,"send":"PING\\r\\n","expect":"^\\+PONG"}}`)
	require.NoError(t, err)
	assert.True(t, p.TCP.Dialogue())
	assert.Equal(t, `PING\r\n`, p.TCP.Send, "kept as written")
	b, err = json.Marshal(p)
	require.NoError(t, err)
	assert.Contains(t, string(b), `"tcp":{"port":6379,"send":"PING\\r\\n","expect":"^\\+PONG"}`)

	p, err = decodePolicy(t, `{"tcp":{"port":25,"expect":"^220 "}}`)
	require.NoError(t, err)
	assert.True(t, p.TCP.Dialogue(), "expect alone: a banner")

	// the JSON of a policy without the new fields is what it was
	p, err = decodePolicy(t, `{"http":{"port":80},"interval":"10s"}`)
	require.NoError(t, err)
	b, err = json.Marshal(p)
	require.NoError(t, err)
	assert.JSONEq(t, `{"type":"http","interval":"10s","timeout":"2s","start_period":"30s","start_interval":"2s",`+
		`"failure_threshold":3,"success_threshold":1,"http":{"port":80,"path":"/","scheme":"http","expected_status":200,"method":"GET"}}`, string(b))
	p, err = decodePolicy(t, `{"tcp":{"port":22}}`)
	require.NoError(t, err)
	assert.False(t, p.TCP.Dialogue())
}

func TestDecodeEscapes(t *testing.T) {
	for in, want := range map[string]string{
		``:                   ``,
		`PING\r\n`:           "PING\r\n",
		`a\tb\\c`:            "a\tb\\c",
		`\x00\xff\x7F`:       "\x00\xff\x7f",
		`EHLO vigil\r\nQUIT`: "EHLO vigil\r\nQUIT",
		`héllo`:              "héllo",
	} {
		got, err := DecodeEscapes(in)
		require.NoError(t, err, in)
		assert.Equal(t, []byte(want), got, in)
	}
	for _, bad := range []string{`\`, `\0`, `\x`, `\xg0`, `\u00e9`, "\xff"} {
		_, err := DecodeEscapes(bad)
		assert.Error(t, err, bad)
	}
}

func TestSourceIP(t *testing.T) {
	net := func(ip, src string) *Network { return &Network{IP: ip, SourceIP: src} }
	spec := InstanceSpec{State: Running, HealthCheck: &PolicySpec{TCP: &TCPSpec{Port: 22}}}
	for _, tc := range []struct {
		n          *Network
		want, msg  string
		wantSource string
	}{
		{n: net("10.0.0.5", "10.0.0.1"), wantSource: "10.0.0.1"},
		{n: net("10.0.0.5", "::ffff:10.0.0.1"), wantSource: "10.0.0.1"},
		{n: net("fd00::5", "fd00::1"), wantSource: "fd00::1"},
		{n: net("10.0.0.5", ""), wantSource: ""},
		{n: net("10.0.0.5", "fd00::1"), msg: "network.source_ip must be of the same family as network.ip 10.0.0.5 (got fd00::1)"},
		{n: net("10.0.0.5", "0.0.0.0"), msg: "network.source_ip must be the address of one host, not the unspecified address 0.0.0.0"},
		{n: net("10.0.0.5", "host"), msg: `network.source_ip must be an IPv4 or IPv6 address (got "host")`},
		{n: net("10.0.0.5", "224.0.0.1"), msg: "network.source_ip must be the address of one host, not the multicast address 224.0.0.1"},
	} {
		s := spec
		s.Network = tc.n
		in, err := s.Normalize("vm")
		if tc.msg != "" {
			assert.EqualError(t, err, tc.msg)
			continue
		}
		require.NoError(t, err)
		assert.Equal(t, tc.wantSource, in.Network.SourceIP)
	}
	a, err := InstanceSpec{State: Running, Network: net("10.0.0.5", "")}.Normalize("vm")
	require.NoError(t, err)
	b, err := InstanceSpec{State: Running, Network: net("10.0.0.5", "10.0.0.1")}.Normalize("vm")
	require.NoError(t, err)
	assert.False(t, a.SameTarget(b), "a new source is a new target: the probe in flight is aborted")
	j, err := json.Marshal(a.Network)
	require.NoError(t, err)
	assert.Equal(t, `{"ip":"10.0.0.5"}`, string(j), "no source, no field")
}

func TestHistoryKeepsCertificateAndPhases(t *testing.T) {
	at := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	notAfter := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	phases := Phases{Connect: 210 * time.Microsecond, TLS: 1400 * time.Microsecond, FirstByte: 350 * time.Microsecond}
	results := []Result{
		{Outcome: Success, Start: at, Duration: Duration(2 * time.Millisecond), HTTPStatus: 200, Phases: phases, CertNotAfter: notAfter},
		{Outcome: Failure, Reason: ReasonCertExpiring, Message: "expires", Start: at.Add(time.Second), HTTPStatus: 200, CertNotAfter: notAfter},
		{Outcome: Success, Start: at.Add(2 * time.Second), Phases: Phases{Connect: time.Millisecond}},
		{Outcome: Failure, Reason: ReasonConditionFailed, Start: at.Add(3 * time.Second)},
		{Outcome: Failure, Reason: ReasonExpectMismatch, Output: "-ERR\r\n", Start: at.Add(4 * time.Second)},
		{Outcome: Success, Start: at.Add(5 * time.Second), CertNotAfter: time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)},
	}
	var h History
	for _, r := range results {
		h.Add(r)
	}
	assert.Equal(t, results, h.Results())
	b, err := json.Marshal(h)
	require.NoError(t, err)
	assert.Contains(t, string(b), `"cert_not_after":"2026-11-29T10:00:00Z","phases":{"connect_ms":0.21,"tls_ms":1.4,"first_byte_ms":0.35}`)
	assert.Contains(t, string(b), `"phases":{"connect_ms":1}`)
	var back History
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, results, back.Results(), "the snapshot's JSON round-trips")

	// a plain result still carries no text, and its JSON has no new fields
	var plain History
	plain.Add(Result{Outcome: Success, Start: at})
	assert.Nil(t, plain.texts)
	b, err = json.Marshal(plain)
	require.NoError(t, err)
	assert.Equal(t, `[{"outcome":"success","start":"2026-11-26T10:00:00Z","duration":"0s"}]`, string(b))
	for _, r := range []Reason{ReasonBodyMismatch, ReasonConditionFailed, ReasonConditionError, ReasonCertExpiring, ReasonExpectMismatch} {
		_, known := codeOf(reasonCodes[:], r)
		assert.True(t, known, "%s has a code", r)
	}
}
