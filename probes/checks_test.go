package probes

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/vigilhq/vigil/health"
)

// quoteJSON writes s as a JSON string, for policies built in tests.
func quoteJSON(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// checkCase is one probe and what it must observe.
type checkCase struct {
	name, policy string
	outcome      health.Outcome
	reason       health.Reason
	message      string // a part of the message, when set
}

func runChecks(t *testing.T, addr string, cases []checkCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := instance(t, addr, tc.policy)
			require.NoError(t, Validate(in))
			r, _ := probe(t, in, time.Second)
			assert.Equal(t, tc.outcome, r.Outcome, r.Message)
			assert.Equal(t, tc.reason, r.Reason, r.Message)
			assert.Contains(t, r.Message, tc.message)
		})
	}
}

func TestHTTPConditions(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Build", "42")
		_, _ = io.WriteString(w, `{"status":"ok","checks":[{"name":"db","ok":true}],"queue":7}`)
	})
	mux.HandleFunc("/degraded", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"status":"degraded","queue":900}`)
	})
	mux.HandleFunc("/text", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ready: yes\n") })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(60 * time.Millisecond)
		_, _ = io.WriteString(w, "late")
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, r.Method+" "+r.Header.Get("Content-Type")+" "+string(b))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	cond := func(path, expr string) string {
		return `{"http":{"port":PORT,"path":"` + path + `","condition":` + quoteJSON(expr) + `}}`
	}
	runChecks(t, srv.Listener.Addr().String(), []checkCase{
		{"status", cond("/status", `status == 200`), health.Success, "", ""},
		{"status false", cond("/status", `status == 201`), health.Failure, health.ReasonConditionFailed, "condition is false: status=200"},
		{"headers", cond("/status", `headers["x-build"] == "42" && headers["content-type"].startsWith("application/json")`),
			health.Success, "", ""},
		{"headers false", cond("/status", `headers["x-build"] == "41"`), health.Failure, health.ReasonConditionFailed, `headers["x-build"]="42"`},
		{"body", cond("/text", `body.contains("ready: yes")`), health.Success, "", ""},
		{"body false", cond("/text", `body.startsWith("ready: no")`), health.Failure, health.ReasonConditionFailed, `body="ready: yes\n"`},
		{"json", cond("/status", `json.status == "ok" && json.queue < 100 && json.checks.all(c, c.ok)`), health.Success, "", ""},
		{"json false", cond("/degraded", `json.status == "ok" && json.queue < 100`), health.Failure, health.ReasonConditionFailed,
			`json.status="degraded" json.queue=900`},
		{"json absent key", cond("/degraded", `json.checks.all(c, c.ok)`), health.Failure, health.ReasonConditionError, "no such key: checks"},
		{"not json", cond("/text", `json == null`), health.Success, "", ""},
		{"duration", cond("/status", `duration_ms < 1000`), health.Success, "", ""},
		{"duration false", cond("/slow", `duration_ms < 50`), health.Failure, health.ReasonConditionFailed, "duration_ms="},
		{"tls absent over http", cond("/status", `!has(tls.days_left)`), health.Success, "", ""},
		{"tls over http is an error", cond("/status", `tls.days_left > 1`), health.Failure, health.ReasonConditionError, "days_left"},
		{"the example", cond("/status", `status == 200 && json.status == "ok" && duration_ms < 5000`), health.Success, "", ""},
		{"runaway", cond("/text", `[0,1,2,3,4,5,6,7,8,9].map(a, [0,1,2,3,4,5,6,7,8,9].map(b, [0,1,2,3,4,5,6,7,8,9].map(c, `+
			`[0,1,2,3,4,5,6,7,8,9].map(d, [0,1,2,3,4,5,6,7,8,9].map(e, [0,1,2,3,4,5,6,7,8,9].map(f, a)))))).size() > 0`),
			health.Failure, health.ReasonConditionError, "cost limit exceeded"},
		{"status checked first", `{"http":{"port":PORT,"path":"/nope","condition":"status == 404"}}`,
			health.Failure, health.ReasonStatusMismatch, ""},
		{"status left to the condition", `{"http":{"port":PORT,"path":"/nope","expected_status":"100-599","condition":"status == 404"}}`,
			health.Success, "", ""},

		{"body_regex", `{"http":{"port":PORT,"path":"/text","body_regex":"^ready: (yes|true)\\s*$"}}`, health.Success, "", ""},
		{"body_regex multiline", `{"http":{"port":PORT,"path":"/text","body_regex":"(?m)^ready: yes$"}}`, health.Success, "", ""},
		{"body_regex mismatch", `{"http":{"port":PORT,"path":"/text","body_regex":"^ready: no"}}`, health.Failure, health.ReasonBodyMismatch,
			"body does not match body_regex ^ready: no"},

		{"POST", `{"http":{"port":PORT,"path":"/echo","method":"POST","body":"{\"q\":1}","content_type":"application/json",` +
			`"body_regex":"^POST application/json \\{\"q\":1\\}$"}}`, health.Success, "", ""},
		{"PUT", `{"http":{"port":PORT,"path":"/echo","method":"PUT","body":"x=1",` +
			`"condition":"body == 'PUT  x=1'"}}`, health.Success, "", ""},
		{"POST without a body", `{"http":{"port":PORT,"path":"/echo","method":"POST","condition":"body == 'POST  '"}}`, health.Success, "", ""},
	})
}

func TestHTTPPhases(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(5 * time.Millisecond)
	}))
	defer srv.Close()
	r, _ := probe(t, instance(t, srv.Listener.Addr().String(), `{"http":{"port":PORT,"scheme":"https","tls_skip_verify":true}}`), time.Second)
	require.Equal(t, health.Success, r.Outcome, r.Message)
	assert.Positive(t, r.Phases.Connect)
	assert.Positive(t, r.Phases.TLS)
	assert.GreaterOrEqual(t, r.Phases.FirstByte, 5*time.Millisecond)
	assert.Equal(t, time.Duration(0), r.Phases.Connect%time.Microsecond, "whole microseconds")
	assert.Equal(t, srv.Certificate().NotAfter.UTC(), r.CertNotAfter, "skip-verify: the certificates sent")

	plain := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer plain.Close()
	r, _ = probe(t, instance(t, plain.Listener.Addr().String(), `{"http":{"port":PORT}}`), time.Second)
	assert.Positive(t, r.Phases.Connect)
	assert.Zero(t, r.Phases.TLS)
	assert.Positive(t, r.Phases.FirstByte)
	assert.True(t, r.CertNotAfter.IsZero())

	r, _ = probe(t, instance(t, refusedAddr(t), `{"http":{"port":PORT}}`), time.Second)
	assert.Equal(t, health.ReasonConnectionRefused, r.Reason)
	assert.Zero(t, r.Phases.Connect, "no connection, no connect phase")
}

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vigil test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return &testCA{cert: cert, key: key, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// serve starts an https server whose certificate, for name and 127.0.0.1,
// the CA signed, valid for validFor from now.
func (ca *testCA) serve(t *testing.T, name string, validFor time.Duration) (*httptest.Server, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		DNSNames: []string{name}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(validFor).Truncate(time.Second),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"sni":"`+r.TLS.ServerName+`"}`)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshakes refused on purpose
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, leaf
}

func TestHTTPSVerification(t *testing.T) {
	ca := newCA(t)
	good, goodLeaf := ca.serve(t, "good.example", 90*24*time.Hour)
	expiring, expiringLeaf := ca.serve(t, "good.example", 3*24*time.Hour)
	tlsBlock := func(extra string) string {
		return `{"http":{"port":PORT,"scheme":"https","tls":{"ca_pem":` + quoteJSON(ca.pem) + extra + `}` + `}}`
	}
	t.Run("verified", func(t *testing.T) {
		runChecks(t, good.Listener.Addr().String(), []checkCase{
			{"ca_pem, by the IP address", tlsBlock(``), health.Success, "", ""},
			{"ca_pem and server_name", tlsBlock(`,"server_name":"good.example"`), health.Success, "", ""},
			{"server_name is sent", strings.Replace(tlsBlock(`,"server_name":"good.example"`), `}}}`, `},"condition":"json.sni == 'good.example'"}}`, 1),
				health.Success, "", ""},
			{"server_name mismatch", tlsBlock(`,"server_name":"bad.example"`), health.Failure, health.ReasonTLS, "bad.example"},
			{"system roots", `{"http":{"port":PORT,"scheme":"https"}}`, health.Failure, health.ReasonTLS, "unknown authority"},
			{"days_left", strings.Replace(tlsBlock(``), `}}}`, `},"condition":"tls.days_left > 89.0 && tls.days_left < 91.0"}}`, 1),
				health.Success, "", ""},
			{"long enough", tlsBlock(`,"min_days_valid":30`), health.Success, "", ""},
		})
		r, _ := probe(t, instance(t, good.Listener.Addr().String(), tlsBlock(``)), time.Second)
		assert.Equal(t, goodLeaf.NotAfter.UTC(), r.CertNotAfter, "the leaf expires before the CA")
	})
	t.Run("expiring", func(t *testing.T) {
		runChecks(t, expiring.Listener.Addr().String(), []checkCase{
			{"3 days against 7", tlsBlock(`,"min_days_valid":7`), health.Failure, health.ReasonCertExpiring,
				"sooner than tls.min_days_valid 7"},
			{"3 days against 2", tlsBlock(`,"min_days_valid":2`), health.Success, "", ""},
			{"without verification", `{"http":{"port":PORT,"scheme":"https","tls_skip_verify":true,"tls":{"min_days_valid":7}}}`,
				health.Failure, health.ReasonCertExpiring, "in 3.0 days"},
		})
		r, _ := probe(t, instance(t, expiring.Listener.Addr().String(), tlsBlock(`,"min_days_valid":7`)), time.Second)
		assert.Equal(t, expiringLeaf.NotAfter.UTC(), r.CertNotAfter)
		assert.Equal(t, 200, r.HTTPStatus)
		// the history keeps it, so it shows coming
		var h health.History
		h.Add(r)
		last, _ := h.Last()
		assert.Equal(t, r.CertNotAfter, last.CertNotAfter)
		assert.Equal(t, r.Phases, last.Phases)
	})
}

// dialogueServer answers each connection with answer(what it read).
func dialogueServer(t *testing.T, addr string, answer func(c net.Conn)) (string, func() []string) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	var (
		mu      sync.Mutex
		remotes []string
		wg      sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			remotes = append(remotes, c.RemoteAddr().(*net.TCPAddr).IP.String())
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(2 * time.Second))
				answer(c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		wg.Wait()
	})
	return l.Addr().String(), func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), remotes...)
	}
}

// readLine reads up to a newline.
func readLine(c net.Conn) string {
	var b strings.Builder
	buf := make([]byte, 1)
	for {
		if _, err := c.Read(buf); err != nil {
			return b.String()
		}
		b.WriteByte(buf[0])
		if buf[0] == '\n' {
			return b.String()
		}
	}
}

func TestTCPDialogues(t *testing.T) {
	redis := func(c net.Conn) {
		switch readLine(c) {
		case "PING\r\n":
			_, _ = io.WriteString(c, "+PONG\r\n")
		case "WRONG\r\n":
			_, _ = io.WriteString(c, "-ERR unknown command\r\n") // then closes
		case "HOLD\r\n":
			_, _ = io.WriteString(c, "-ERR wait\r\n")
			_, _ = c.Read(make([]byte, 1)) // kept open
		case "PARTIAL\r\n":
			_, _ = io.WriteString(c, "+PO")
			_, _ = c.Read(make([]byte, 1))
		case "SILENT\r\n":
			_, _ = c.Read(make([]byte, 1))
		case "FLOOD\r\n":
			_, _ = io.WriteString(c, strings.Repeat("z", 8<<10))
		}
	}
	addr, _ := dialogueServer(t, "127.0.0.1:0", redis)
	tcp := func(send, expect string) string {
		return `{"tcp":{"port":PORT,"send":` + quoteJSON(send) + `,"expect":` + quoteJSON(expect) + `}}`
	}
	cases := []checkCase{
		{"answers right", tcp(`PING\r\n`, `^\+PONG\r\n`), health.Success, "", ""},
		{"answers right, escaped as hex", tcp(`\x50ING\x0d\x0a`, `^\+PONG`), health.Success, "", ""},
		{"answers wrong and closes", tcp(`WRONG\r\n`, `^\+PONG`), health.Failure, health.ReasonExpectMismatch,
			`does not match tcp.expect: "-ERR unknown command\r\n"`},
		{"answers wrong and waits", tcp(`HOLD\r\n`, `^\+PONG`), health.Failure, health.ReasonExpectMismatch, `"-ERR wait\r\n"`},
		{"answers partially", tcp(`PARTIAL\r\n`, `^\+PONG`), health.Failure, health.ReasonTimeout, `a partial answer within the timeout: "+PO"`},
		{"never answers", tcp(`SILENT\r\n`, `^\+PONG`), health.Failure, health.ReasonTimeout, "no answer within the timeout"},
		{"answers too much", tcp(`FLOOD\r\n`, `^\+PONG`), health.Failure, health.ReasonExpectMismatch, "the first 4096 bytes"},
	}
	for i := range cases {
		cases[i].policy = strings.Replace(cases[i].policy, `{"tcp"`, `{"timeout":"300ms","tcp"`, 1)
	}
	runChecks(t, addr, cases)

	banner, _ := dialogueServer(t, "127.0.0.1:0", func(c net.Conn) {
		_, _ = io.WriteString(c, "220 mail.example ESMTP ready\r\n")
		_, _ = c.Read(make([]byte, 1))
	})
	runChecks(t, banner, []checkCase{
		{"SMTP banner", `{"tcp":{"port":PORT,"expect":"^220 "}}`, health.Success, "", ""},
		{"SMTP banner mismatch", `{"timeout":"300ms","tcp":{"port":PORT,"expect":"^554 "}}`, health.Failure, health.ReasonExpectMismatch,
			`"220 mail.example ESMTP ready\r\n"`},
	})
	r, _ := probe(t, instance(t, banner, `{"tcp":{"port":PORT,"expect":"^220 "}}`), time.Second)
	assert.Equal(t, "220 mail.example ESMTP ready\r\n", r.Output)

	// answers before reading, then closes: what was sent unread makes the
	// close a reset, and the answer is still the answer
	rude, _ := dialogueServer(t, "127.0.0.1:0", func(c net.Conn) { _, _ = io.WriteString(c, "-ERR not ready\r\n") })
	for range 5 {
		r, _ := probe(t, instance(t, rude, tcp(`PING\r\n`, `^\+PONG`)), time.Second)
		assert.Equal(t, health.ReasonExpectMismatch, r.Reason, r.Message)
		assert.Equal(t, "-ERR not ready\r\n", r.Output)
	}

	invalid, _ := dialogueServer(t, "127.0.0.1:0", func(c net.Conn) { _, _ = c.Write([]byte{0xff, 0xfe, 'o', 'k', '\n'}) })
	r, _ = probe(t, instance(t, invalid, `{"tcp":{"port":PORT,"expect":"^ok"}}`), time.Second)
	assert.Equal(t, health.ReasonExpectMismatch, r.Reason)
	assert.Equal(t, "\uFFFDok\n", r.Output, "the output is valid UTF-8")

	r, _ = probe(t, instance(t, refusedAddr(t), tcp(`PING\r\n`, `^\+PONG`)), time.Second)
	assert.Equal(t, health.ReasonConnectionRefused, r.Reason)

	p, err := New(instance(t, addr, tcp(`PING\r\n`, `^\+PONG`)))
	require.NoError(t, err)
	_, ok := p.(Starter)
	assert.False(t, ok, "a dialogue is not started on the actor's goroutine")
	p, err = New(instance(t, addr, `{"tcp":{"port":PORT}}`))
	require.NoError(t, err)
	_, ok = p.(Starter)
	assert.True(t, ok, "the plain probe stays a Starter")
}

// withSource sets network.source_ip.
func withSource(in health.Instance, src string) health.Instance {
	n := *in.Network
	n.SourceIP = src
	in.Network = &n
	return in
}

func TestSourceAddress(t *testing.T) {
	const src = "127.0.0.2"
	addr, remotes := dialogueServer(t, "127.0.0.1:0", func(c net.Conn) {
		if readLine(c) == "PING\n" {
			_, _ = io.WriteString(c, "PONG\n")
		}
	})
	seen := func(t *testing.T, in health.Instance, opt Options) string {
		t.Helper()
		before := len(remotes())
		p, err := opt.New(in)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r := p.Probe(ctx)
		require.Equal(t, health.Success, r.Outcome, r.Message)
		require.Eventually(t, func() bool { return len(remotes()) > before }, time.Second, time.Millisecond)
		return remotes()[before]
	}
	plain := instance(t, addr, `{"tcp":{"port":PORT}}`)
	talk := instance(t, addr, `{"tcp":{"port":PORT,"send":"PING\\n","expect":"^PONG"}}`)
	assert.Equal(t, "127.0.0.1", seen(t, plain, Options{}), "the kernel's choice")
	assert.Equal(t, src, seen(t, withSource(plain, src), Options{}), "raw connect, bound")
	assert.Equal(t, src, seen(t, withSource(talk, src), Options{}), "dialogue")
	assert.Equal(t, src, seen(t, plain, Options{Source: netip.MustParseAddr(src)}), "the host's source")
	assert.Equal(t, "127.0.0.3", seen(t, withSource(plain, "127.0.0.3"), Options{Source: netip.MustParseAddr(src)}), "the instance's wins")
	assert.Equal(t, "127.0.0.1", seen(t, plain, Options{Source: netip.MustParseAddr("::1")}), "another family is not used")
	for range 3 { // a bound socket is never pooled: the next plain probe is the kernel's again
		assert.Equal(t, src, seen(t, withSource(plain, src), Options{}))
		assert.Equal(t, "127.0.0.1", seen(t, plain, Options{}))
	}

	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		_, _ = io.WriteString(w, host)
	}))
	defer web.Close()
	in := withSource(instance(t, web.Listener.Addr().String(), `{"http":{"port":PORT,"condition":"body == '127.0.0.2'"}}`), src)
	r, _ := probe(t, in, time.Second)
	assert.Equal(t, health.Success, r.Outcome, r.Message)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var peers []string
	var mu sync.Mutex
	gs := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if p, ok := peerAddr(ctx); ok {
			mu.Lock()
			peers = append(peers, p)
			mu.Unlock()
		}
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(gs, grpchealth.NewServer())
	go func() { _ = gs.Serve(l) }()
	defer gs.Stop()
	in = withSource(instance(t, l.Addr().String(), `{"grpc":{"port":PORT}}`), src)
	r, _ = probe(t, in, time.Second)
	assert.Equal(t, health.Success, r.Outcome, r.Message)
	mu.Lock()
	assert.Equal(t, []string{src}, peers)
	mu.Unlock()
}

func TestValidate(t *testing.T) {
	in := instance(t, "127.0.0.1:80", `{"http":{"port":PORT,"condition":"stauts == 200"}}`)
	err := Validate(in)
	var fe *health.FieldError
	require.True(t, errors.As(err, &fe), err)
	assert.Equal(t, "health_check.http.condition", fe.Field)
	assert.Equal(t, "health_check.http.condition is not a valid CEL condition: 1:1: undeclared reference to 'stauts' (in container '')", fe.Error())
	_, err = New(in)
	assert.Error(t, err, "New refuses what Validate refuses")

	in = instance(t, "127.0.0.1:80", `{"http":{"port":PORT,"condition":"status + 1"}}`)
	assert.ErrorContains(t, Validate(in), "must be true or false, but is of type int")
	assert.NoError(t, Validate(instance(t, "127.0.0.1:80", `{"http":{"port":PORT,"condition":"status == 200"}}`)))
	assert.NoError(t, Validate(instance(t, "127.0.0.1:80", `{"tcp":{"port":PORT}}`)))
	assert.NoError(t, Validate(health.Instance{ID: "x", State: health.Running}))
}

// peerAddr is the IP address a gRPC call came from.
func peerAddr(ctx context.Context) (string, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", false
	}
	a, ok := p.Addr.(*net.TCPAddr)
	if !ok {
		return "", false
	}
	return a.IP.String(), true
}
