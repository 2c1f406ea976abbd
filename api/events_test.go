package api

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// frame is one Server-Sent Event, or a comment.
type frame struct {
	id      string
	event   string
	data    string
	comment string
}

// sseClient reads the frames of one event stream in the background.
type sseClient struct {
	t      *testing.T
	frames chan frame
	resp   *http.Response
}

func openEvents(t *testing.T, url string, headers ...string) *sseClient {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	c := &sseClient{t: t, frames: make(chan frame, 1<<16), resp: resp}
	go c.read(resp.Body)
	t.Cleanup(func() { _ = resp.Body.Close() })
	return c
}

func (c *sseClient) read(body io.Reader) {
	defer close(c.frames)
	sc := bufio.NewScanner(body)
	var f frame
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			c.frames <- f
			f = frame{}
		case strings.HasPrefix(line, ": "):
			f.comment = line[2:]
		case strings.HasPrefix(line, "id: "):
			f.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			f.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			f.data = line[6:]
		}
	}
}

// next returns the next frame that is not a comment.
func (c *sseClient) next() frame {
	c.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case f, ok := <-c.frames:
			require.True(c.t, ok, "stream ended")
			if f.comment == "" {
				return f
			}
		case <-timeout:
			require.FailNow(c.t, "no event within 10s")
		}
	}
}

func (c *sseClient) transitions(n int) []actors.Event {
	c.t.Helper()
	var out []actors.Event
	for len(out) < n {
		f := c.next()
		require.Equal(c.t, "transition", f.event, f)
		var ev actors.Event
		require.NoError(c.t, json.Unmarshal([]byte(f.data), &ev))
		require.Equal(c.t, strconv.FormatUint(ev.Seq, 10), f.id)
		out = append(out, ev)
	}
	return out
}

// toggle flips an instance between Stopped and Running n times: 2n
// transitions.
func toggle(t *testing.T, s *actors.Scheduler, id string, n int) {
	t.Helper()
	for range n {
		_, err := s.SetState(context.Background(), id, health.Stopped, nil)
		require.NoError(t, err)
		_, err = s.SetState(context.Background(), id, health.Running, nil)
		require.NoError(t, err)
	}
}

// deadPort is a port nothing listens on: probes fail, and within the start
// period failures cause no transition, so only the test's own changes do.
func deadPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	require.NoError(t, l.Close())
	return port
}

func register(t *testing.T, url, id, port string) {
	t.Helper()
	code, out := call(t, "PUT", url+"/v1/instances/"+id, "application/json",
		`{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":`+port+`},"interval":"1h"}}`)
	require.Equal(t, http.StatusCreated, code, out)
}

func requireConsecutive(t *testing.T, evs []actors.Event, from uint64) {
	t.Helper()
	for i, ev := range evs {
		require.Equal(t, from+uint64(i), ev.Seq, "event %d of %d", i, len(evs))
	}
}

func TestEventsFollowLiveThenResume(t *testing.T) {
	srv, s := server(t, Options{})
	port := deadPort(t)
	register(t, srv.URL, "vm-1", port)
	before := s.LastSeq()

	live := openEvents(t, srv.URL+"/v1/events")
	toggle(t, s, "vm-1", 3)
	evs := live.transitions(6)
	requireConsecutive(t, evs, before+1)
	assert.Equal(t, health.Status("unknown"), evs[0].To)
	assert.Equal(t, "vm-1", evs[0].InstanceID)
	assert.Equal(t, health.ReasonLifecycle, evs[0].Reason)

	// reconnect after the second event: the rest again, identical
	again := openEvents(t, srv.URL+"/v1/events", "Last-Event-ID", strconv.FormatUint(evs[1].Seq, 10))
	assert.Equal(t, evs[2:], again.transitions(4))
	// ?since= from the start of the log
	all := openEvents(t, srv.URL+"/v1/events?since=0")
	assert.Equal(t, evs, all.transitions(int(before) + 6)[before:])

	// the filter: vm-2 only, from now
	register(t, srv.URL, "vm-2", port)
	only := openEvents(t, srv.URL+"/v1/events?since=0&instance_id=vm-2")
	toggle(t, s, "vm-1", 1)
	toggle(t, s, "vm-2", 1)
	for _, ev := range only.transitions(2) {
		assert.Equal(t, "vm-2", ev.InstanceID)
	}
}

// trimmed is a registry whose log retains only events from oldest on, as a
// log does after pruning.
type trimmed struct {
	Registry
	oldest uint64
}

func (r trimmed) Events(after uint64, limit int) ([]actors.Event, uint64, error) {
	evs, _, err := r.Registry.Events(max(after, r.oldest-1), limit)
	return evs, r.oldest, err
}

func TestEventsResetWhenThePositionIsGone(t *testing.T) {
	srv, s := server(t, Options{}, func(s *actors.Scheduler) Registry { return trimmed{Registry: s, oldest: 4} })
	register(t, srv.URL, "vm-1", deadPort(t))
	toggle(t, s, "vm-1", 3)
	last := s.LastSeq()
	require.GreaterOrEqual(t, last, uint64(6))

	c := openEvents(t, srv.URL+"/v1/events?since=1")
	f := c.next()
	require.Equal(t, "reset", f.event)
	assert.JSONEq(t, `{"requested_seq":1,"oldest_seq":4}`, f.data)
	requireConsecutive(t, c.transitions(int(last-3)), 4)

	// a position past the end of this log: reset, then live from here
	c = openEvents(t, srv.URL+"/v1/events", "Last-Event-ID", strconv.FormatUint(last+100, 10))
	f = c.next()
	require.Equal(t, "reset", f.event)
	toggle(t, s, "vm-1", 1)
	requireConsecutive(t, c.transitions(2), last+1)

	// a position still retained: no reset
	c = openEvents(t, srv.URL+"/v1/events?since=3")
	requireConsecutive(t, c.transitions(int(last-3)), 4)
}

func TestEventsKeepAliveAndEndOnShutdown(t *testing.T) {
	stop := make(chan struct{})
	srv, _ := server(t, Options{KeepAlive: 20 * time.Millisecond, Shutdown: stop})
	c := openEvents(t, srv.URL+"/v1/events")
	keepAlives := 0
	for f := range c.frames {
		if f.comment == "keepalive" {
			keepAlives++
		}
		if keepAlives == 2 {
			break
		}
	}
	require.Equal(t, 2, keepAlives)
	close(stop)
	for range c.frames { //nolint:revive // drain until the server ends the stream
	}
}

// smallBuffers shrinks the kernel send buffer of every accepted connection,
// so a client that stops reading blocks the server's writes quickly.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}

// TestSlowStreamDoesNotHoldBackOthers runs a stream whose client does not
// read while many transitions happen: the actors carry on, a reading stream
// gets every event, and the slow stream, which falls behind its live buffer,
// catches up from the log and gets every event too, in order.
func TestSlowStreamDoesNotHoldBackOthers(t *testing.T) {
	s, err := actors.New(context.Background())
	require.NoError(t, err)
	m := NewMetrics()
	srv := httptest.NewUnstartedServer(New(s, Options{EventBuffer: 4, Metrics: m}))
	srv.Listener = smallBuffers{srv.Listener}
	srv.Start()
	defer func() {
		srv.CloseClientConnections()
		srv.Close()
		require.NoError(t, s.Close(context.Background()))
	}()
	register(t, srv.URL, "vm-1", deadPort(t))
	from := s.LastSeq() + 1

	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.(*net.TCPConn).SetReadBuffer(4096))
	_, err = conn.Write([]byte("GET /v1/events HTTP/1.1\r\nHost: vigil\r\n\r\n"))
	require.NoError(t, err)
	fast := openEvents(t, srv.URL+"/v1/events")
	require.Eventually(t, func() bool { return testutil.ToFloat64(m.streams) == 2 }, 5*time.Second, 5*time.Millisecond)

	const n = 500
	toggle(t, s, "vm-1", n)
	requireConsecutive(t, fast.transitions(2*n), from)
	assert.Positive(t, testutil.ToFloat64(m.catchUps), "the slow stream fell behind its live buffer")

	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	slow := &sseClient{t: t, frames: make(chan frame, 1<<16), resp: resp}
	go slow.read(resp.Body)
	requireConsecutive(t, slow.transitions(2*n), from)
}

func TestEventsEndWhenTheSchedulerCloses(t *testing.T) {
	srv, s := server(t, Options{})
	c := openEvents(t, srv.URL+"/v1/events")
	require.NoError(t, s.Close(context.Background()))
	for range c.frames { //nolint:revive // drain until the server ends the stream
	}
}

func TestEventStreamsAreCapped(t *testing.T) {
	srv, _ := server(t, Options{MaxStreams: 1})
	first := openEvents(t, srv.URL+"/v1/events")
	code, out := call(t, "GET", srv.URL+"/v1/events", "", "")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, out["error"].(map[string]any)["message"], "too many event streams")
	require.NoError(t, first.resp.Body.Close())
	require.Eventually(t, func() bool {
		resp, err := http.Get(srv.URL + "/v1/events")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 5*time.Second, 10*time.Millisecond, "a closed stream frees its place")
}
