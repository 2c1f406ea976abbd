package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/api"
	"github.com/vigilhq/vigil/client"
	"github.com/vigilhq/vigil/health"
)

// cappedAPI runs the real API on a loopback port with room for one request
// at a time and a short queue wait: while that one is held, every other
// request is the API's own 503 with Retry-After: 1.
func cappedAPI(t *testing.T) (*httptest.Server, *actors.Scheduler) {
	t.Helper()
	s, err := actors.New(context.Background())
	require.NoError(t, err)
	srv := httptest.NewServer(api.New(s, api.Options{Log: zerolog.Nop(), MaxRequests: 1, QueueWait: 50 * time.Millisecond}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		require.NoError(t, s.Close(context.Background()))
	})
	return srv, s
}

// holdTheSlot takes cappedAPI's one request slot with a PUT whose body has
// not all arrived — past the first 64 KiB, which the API reads before the
// request takes a slot — and returns once the API turns other requests
// away; finish sends the rest of the body and returns the PUT's status.
func holdTheSlot(t *testing.T, srv *httptest.Server) (finish func() (int, error)) {
	t.Helper()
	body := `{"state":"Stopped",` + strings.Repeat(" ", 80<<10) + `"network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":9}}}`
	sent := len(body) - 10
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.WriteString(c, "PUT /v1/instances/held HTTP/1.1\r\nHost: vigil\r\nContent-Type: application/json\r\n"+
		"Content-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body[:sent])
	require.NoError(t, err)
	probe := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(probe.CloseIdleConnections)
	require.Eventually(t, func() bool {
		resp, err := probe.Get(srv.URL + "/v1/summary")
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "1"
	}, 5*time.Second, 10*time.Millisecond, "the slow PUT holds the only slot")
	return func() (int, error) {
		if _, err := io.WriteString(c, body[sent:]); err != nil {
			return 0, err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
}

// attempt is one request the client made: when it was sent, when its
// answer had been read, and the answer's status (0: no answer).
type attempt struct {
	sent, answered time.Time
	status         int
}

// watched is a transport that records every attempt and hands each answer's
// status to see, with the body read whole, before the client has it.
type watched struct {
	next http.RoundTripper
	see  func(status int)

	mu       sync.Mutex
	attempts []attempt
}

func (w *watched) RoundTrip(req *http.Request) (*http.Response, error) {
	a := attempt{sent: time.Now()}
	resp, err := w.next.RoundTrip(req)
	if err == nil {
		var b []byte
		b, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(b))
		a.status = resp.StatusCode
		if w.see != nil {
			w.see(resp.StatusCode)
		}
	}
	a.answered = time.Now()
	w.mu.Lock()
	w.attempts = append(w.attempts, a)
	w.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func (w *watched) made() []attempt {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]attempt(nil), w.attempts...)
}

// watchedClient is a real client of addr whose requests go through w.
func watchedClient(t *testing.T, addr string, w *watched) *client.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	w.next = tr
	c, err := client.New(addr, client.WithHTTP(&http.Client{Transport: w}))
	require.NoError(t, err)
	return c
}

func batchOf(t *testing.T, ids ...string) []client.BatchItem {
	t.Helper()
	items := make([]client.BatchItem, 0, len(ids))
	for _, id := range ids {
		in, err := clientSpec(health.InstanceSpec{State: health.Stopped, Network: &health.Network{IP: "127.0.0.1"},
			HealthCheck: &health.PolicySpec{TCP: &health.TCPSpec{Port: 9}}})
		require.NoError(t, err)
		items = append(items, client.BatchItem{ID: id, Instance: in})
	}
	return items
}

// TestPutBatchRetriesA503AfterItsRetryAfter checks putBatch against the
// real API capped at one request: a 503 is tried again after the
// Retry-After the API sent until the batch is taken, any other failure is
// returned at once, and a canceled context ends the wait.
func TestPutBatchRetriesA503AfterItsRetryAfter(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		goleak.VerifyNone(t, leaks,
			goleak.IgnoreTopFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"))
	})
	// putBatch waits between half and one and a half times Retry-After
	const retryAfter = time.Second
	const minWait, maxWait = retryAfter / 2, 3 * retryAfter / 2

	t.Run("503s are retried until the batch is taken", func(t *testing.T) {
		srv, s := cappedAPI(t)
		finish := holdTheSlot(t, srv)
		const refusals = 2
		var refused int
		var heldStatus int
		var heldErr error
		w := &watched{see: func(status int) {
			if status != http.StatusServiceUnavailable {
				return
			}
			// give the slot back after the last refusal, before the client
			// has it: the next attempt finds the slot free
			if refused++; refused == refusals {
				heldStatus, heldErr = finish()
			}
		}}
		c := watchedClient(t, srv.URL, w)

		results, err := putBatch(context.Background(), c, batchOf(t, "vm-1", "vm-2"))
		require.NoError(t, err)
		require.NoError(t, heldErr)
		assert.Equal(t, http.StatusCreated, heldStatus, "the held PUT was answered")
		require.Len(t, results, 2)
		for _, r := range results {
			assert.NoError(t, r.Err, r.ID)
			assert.True(t, r.Created, r.ID)
		}
		made := w.made()
		require.Equal(t, refusals+1, len(made), "tried once for each refusal, then once more")
		for i, a := range made {
			want := http.StatusServiceUnavailable
			if i == refusals {
				want = http.StatusOK
			}
			assert.Equal(t, want, a.status, "attempt %d", i)
			if i > 0 {
				wait := a.sent.Sub(made[i-1].answered)
				assert.GreaterOrEqual(t, wait, minWait, "attempt %d waited for Retry-After", i)
				assert.Less(t, wait, maxWait+500*time.Millisecond, "attempt %d did not wait past Retry-After", i)
			}
		}
		for _, id := range []string{"vm-1", "vm-2"} {
			_, err := s.Get(context.Background(), id)
			assert.NoError(t, err, "%s is registered", id)
		}
	})

	t.Run("a failure other than a 503 is returned at once", func(t *testing.T) {
		srv, _ := cappedAPI(t)
		w := &watched{}
		c := watchedClient(t, srv.URL, w)
		// bounds the test if a refusal were retried (for up to a minute)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// a batch of no items is refused whole: 400
		_, err := putBatch(ctx, c, nil)
		var e *client.Error
		require.ErrorAs(t, err, &e)
		assert.Equal(t, http.StatusBadRequest, e.Status)
		assert.Equal(t, "invalid_request", e.Code)
		assert.Equal(t, 1, len(w.made()), "a 400 is not retried")

		// no server at all: the request's own error
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := l.Addr().String()
		require.NoError(t, l.Close())
		w = &watched{}
		c = watchedClient(t, "http://"+addr, w)
		_, err = putBatch(ctx, c, batchOf(t, "vm-1"))
		require.Error(t, err)
		assert.False(t, errors.As(err, &e), "not an answer of the API: %v", err)
		assert.Equal(t, 1, len(w.made()), "a refused connection is not retried")
	})

	t.Run("a canceled context ends the wait", func(t *testing.T) {
		srv, _ := cappedAPI(t)
		holdTheSlot(t, srv) // held until the test ends: every attempt is a 503
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		canceled := make(chan time.Time, 1)
		w := &watched{see: func(status int) {
			if status == http.StatusServiceUnavailable {
				// cancel inside the wait, which lasts at least minWait
				time.AfterFunc(minWait/5, func() {
					select {
					case canceled <- time.Now():
					default:
					}
					cancel()
				})
			}
		}}
		c := watchedClient(t, srv.URL, w)

		_, err := putBatch(ctx, c, batchOf(t, "vm-1"))
		returned := time.Now()
		assert.Equal(t, context.Canceled, err, "the wait ended with the context's error, not a retry's")
		assert.Equal(t, 1, len(w.made()), "no retry after the cancel")
		select {
		case at := <-canceled:
			assert.Less(t, returned.Sub(at), minWait-minWait/5, "returned before the wait would have ended")
		default:
			assert.Fail(t, "putBatch returned before the context was canceled")
		}
	})
}
