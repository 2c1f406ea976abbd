package api

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/ui"
)

// stalled is a registry whose Get waits until release is closed: a request
// that reads one instance stays in progress, and says so on entered.
type stalled struct {
	Registry
	entered chan struct{}
	release chan struct{}
}

func (s stalled) Get(ctx context.Context, id string) (actors.Info, error) {
	select {
	case s.entered <- struct{}{}:
	case <-ctx.Done():
		return actors.Info{}, ctx.Err()
	}
	select {
	case <-s.release:
	case <-ctx.Done():
		return actors.Info{}, ctx.Err()
	}
	return s.Registry.Get(ctx, id)
}

// stalledGet starts a GET of url that reg holds in its Get, and returns once
// it is held; the channel gets its status when it is answered (0: no answer).
func stalledGet(t *testing.T, url string, reg stalled) <-chan int {
	t.Helper()
	read := make(chan int, 1)
	go func() {
		resp, err := http.Get(url)
		if err != nil {
			read <- 0
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		read <- resp.StatusCode
	}()
	select {
	case <-reg.entered:
	case <-time.After(5 * time.Second):
		require.FailNow(t, "the GET never reached the registry")
	}
	return read
}

// slowPut starts a PUT of id over its own connection and sends only the
// start of its body, so the server is still reading it; finish sends the
// rest and returns the answer's status.
func slowPut(t *testing.T, addr, id string) (finish func() int) {
	t.Helper()
	body := `{"state":"Stopped","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":9}}}`
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.WriteString(c, "PUT /v1/instances/"+id+" HTTP/1.1\r\nHost: vigil\r\nContent-Type: application/json\r\n"+
		"Content-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body[:10])
	require.NoError(t, err)
	return func() int {
		t.Helper()
		_, err := io.WriteString(c, body[10:])
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
}

// answer makes one request and returns the response with its body read,
// checked against the OpenAPI document.
func answer(t *testing.T, method, url string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	conforms(t, req, resp, b)
	return resp, b
}

// TestRequestCapAnswers503AndLeavesUnmeteredRoutesAlone holds every one of
// MaxRequests with requests in progress whose handlers wait on the registry
// (beside a PUT whose body is still arriving, which holds none while it
// does) and checks that one more
// metered request is a 503 with Retry-After and the API's error, that the
// unmetered routes answer all the same, and that a metered request is served
// again once the slots are given back.
func TestRequestCapAnswers503AndLeavesUnmeteredRoutesAlone(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		http.DefaultClient.CloseIdleConnections()
		goleak.VerifyNone(t, leaks,
			goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"))
	})
	const queueWait = 100 * time.Millisecond
	reg := stalled{entered: make(chan struct{}, 1), release: make(chan struct{})}
	srv, _ := server(t, Options{MaxRequests: 2, QueueWait: queueWait, Metrics: NewMetrics(), UI: ui.Handler()},
		func(s *actors.Scheduler) Registry { reg.Registry = s; return reg })
	release := func() {
		select {
		case <-reg.release:
		default:
			close(reg.release)
		}
	}
	t.Cleanup(release) // before the server closes, if the test stops early
	register(t, srv.URL, "vm-1", tcpTarget(t))

	// a PUT whose body has not all arrived holds no slot while it arrives
	// (given the time to take one if it did)
	finish := slowPut(t, srv.Listener.Addr().String(), "vm-2")
	time.Sleep(200 * time.Millisecond)
	// slots one and two: GETs whose registry reads wait
	read := stalledGet(t, srv.URL+"/v1/instances/vm-1", reg)
	read2 := stalledGet(t, srv.URL+"/v1/instances/vm-1", reg)
	require.Eventually(t, func() bool {
		resp, err := http.Get(srv.URL + "/v1/summary")
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	}, 5*time.Second, 10*time.Millisecond, "with both slots held, a metered request is turned away")

	for _, path := range []string{"/v1/summary", "/v1/instances", "/v1/incidents", "/v1/silences", "/v1/notifiers", "/v1/nodes"} {
		began := time.Now()
		resp, b := answer(t, http.MethodGet, srv.URL+path)
		assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, path)
		assert.Equal(t, "1", resp.Header.Get("Retry-After"), path)
		assert.GreaterOrEqual(t, time.Since(began), queueWait, "%s waited its turn first", path)
		var e ErrorBody
		require.NoError(t, json.Unmarshal(b, &e), string(b))
		assert.Equal(t, ErrorDetail{Code: "unavailable", Message: "too many requests at once; retry"}, e.Error, path)
	}

	// the unmetered routes answer while every slot is held
	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/v1/openapi.json", "/ui", "/ui/", "/ui/app.js"} {
		code, out := call(t, http.MethodGet, srv.URL+path, "", "")
		assert.Equal(t, http.StatusOK, code, "%s %v", path, out)
	}
	code, _ := call(t, http.MethodHead, srv.URL+"/healthz", "", "")
	assert.Equal(t, http.StatusOK, code, "HEAD /healthz")
	code, out := call(t, http.MethodPost, srv.URL+"/v1/instances/vm-1/probe", "", "")
	assert.Equal(t, http.StatusOK, code, "probe-now %v", out)
	events := openEvents(t, srv.URL+"/v1/events")
	require.NoError(t, events.resp.Body.Close())

	release()
	assert.Equal(t, http.StatusOK, <-read, "the held GET is answered")
	assert.Equal(t, http.StatusOK, <-read2, "the held GET is answered")
	assert.Equal(t, http.StatusCreated, finish(), "the slow PUT is answered")
	code, out = call(t, http.MethodGet, srv.URL+"/v1/summary", "", "")
	assert.Equal(t, http.StatusOK, code, "the slots were given back")
	assert.Equal(t, float64(2), out["total"])
	code, _ = call(t, http.MethodGet, srv.URL+"/v1/instances/vm-2", "", "")
	assert.Equal(t, http.StatusOK, code)
}

// While probing is behind (Options.Behind), the metered requests are worked
// on one at a time: with one in progress, the next waits its turn and gets
// a 503 saying why, though MaxRequests has room; the unmetered routes are
// not held; once probing has caught up, the cap is MaxRequests again.
func TestBehindProbingTheAPIWorksOneRequestAtATime(t *testing.T) {
	const queueWait = 100 * time.Millisecond
	var behind atomic.Bool
	behind.Store(true)
	reg := stalled{entered: make(chan struct{}, 1), release: make(chan struct{})}
	srv, _ := server(t, Options{MaxRequests: 8, QueueWait: queueWait, Metrics: NewMetrics(), Behind: behind.Load},
		func(s *actors.Scheduler) Registry { reg.Registry = s; return reg })
	released := false
	release := func() {
		if !released {
			released = true
			close(reg.release)
		}
	}
	t.Cleanup(release)
	register(t, srv.URL, "vm-1", tcpTarget(t))

	read := stalledGet(t, srv.URL+"/v1/instances/vm-1", reg)
	resp, b := answer(t, http.MethodGet, srv.URL+"/v1/summary")
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, "1", resp.Header.Get("Retry-After"))
	var e ErrorBody
	require.NoError(t, json.Unmarshal(b, &e), string(b))
	assert.Equal(t, "unavailable", e.Error.Code)
	assert.Contains(t, e.Error.Message, "probing is behind schedule")
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		code, out := call(t, http.MethodGet, srv.URL+path, "", "")
		assert.Equal(t, http.StatusOK, code, "%s %v", path, out)
	}

	// a request waiting its turn when probing catches up is served
	queued := make(chan int, 1)
	go func() {
		resp, err := http.Get(srv.URL + "/v1/summary")
		if err != nil {
			queued <- 0
			return
		}
		resp.Body.Close()
		queued <- resp.StatusCode
	}()
	time.Sleep(queueWait / 2)
	// caught up: the one read still in progress leaves room for others
	behind.Store(false)
	assert.Equal(t, http.StatusOK, <-queued, "served once its wait was over")
	code, out := call(t, http.MethodGet, srv.URL+"/v1/summary", "", "")
	assert.Equal(t, http.StatusOK, code, "%v", out)
	release()
	assert.Equal(t, http.StatusOK, <-read)
}

// While probing is behind, a request keeps the one slot after it is done
// for as long again as it took: the API's requests have at most half of
// one CPU. Once that is over, the next is served.
func TestBehindProbingARequestKeepsTheSlotAsLongAgain(t *testing.T) {
	const queueWait = 100 * time.Millisecond
	var behind atomic.Bool
	behind.Store(true)
	reg := stalled{entered: make(chan struct{}, 1), release: make(chan struct{})}
	srv, _ := server(t, Options{MaxRequests: 8, QueueWait: queueWait, Behind: behind.Load, giveWayMax: 5 * time.Second},
		func(s *actors.Scheduler) Registry { reg.Registry = s; return reg })
	register(t, srv.URL, "vm-1", tcpTarget(t))

	began := time.Now()
	read := stalledGet(t, srv.URL+"/v1/instances/vm-1", reg)
	time.Sleep(600 * time.Millisecond)
	close(reg.release)
	require.Equal(t, http.StatusOK, <-read)
	took := time.Since(began)

	resp, b := answer(t, http.MethodGet, srv.URL+"/v1/summary")
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "the slot is kept: %s", b)
	assert.Contains(t, string(b), "probing is behind schedule")
	require.Eventually(t, func() bool {
		code, _ := call(t, http.MethodGet, srv.URL+"/v1/summary", "", "")
		return code == http.StatusOK
	}, 5*time.Second, 20*time.Millisecond)
	assert.GreaterOrEqual(t, time.Since(began), 2*took-queueWait, "kept about as long again as the request took")
}

// While probing is behind, a request whose body is still arriving does not
// hold the one slot left: a request after it is served at once, and the
// slow one is answered when its body is complete.
func TestBehindProbingASlowBodyHoldsNoSlot(t *testing.T) {
	var behind atomic.Bool
	behind.Store(true)
	srv, _ := server(t, Options{MaxRequests: 8, QueueWait: 100 * time.Millisecond, Behind: behind.Load, giveWayMax: time.Millisecond})
	finish := slowPut(t, srv.Listener.Addr().String(), "vm-2")
	time.Sleep(200 * time.Millisecond) // time to take the slot, if it did
	for range 3 {
		code, out := call(t, http.MethodGet, srv.URL+"/v1/summary", "", "")
		require.Equal(t, http.StatusOK, code, "served beside the slow body: %v", out)
		time.Sleep(10 * time.Millisecond) // the slot kept after a request
	}
	assert.Equal(t, http.StatusCreated, finish())
	code, _ := call(t, http.MethodGet, srv.URL+"/v1/instances/vm-2", "", "")
	assert.Equal(t, http.StatusOK, code)
}
