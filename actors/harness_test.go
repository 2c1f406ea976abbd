package actors

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/clock"
	"github.com/vigilhq/vigil/health"
)

var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

// recorder is an Observer that counts finished probes per instance.
type recorder struct {
	NopObserver
	mu       sync.Mutex
	finished map[string]int
	started  map[string][]time.Time
}

func newRecorder() *recorder {
	return &recorder{finished: map[string]int{}, started: map[string][]time.Time{}}
}

func (r *recorder) ProbeStarted(id string, _ health.Type, _, start time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.started[id] = append(r.started[id], start)
}

func (r *recorder) ProbeFinished(id string, _ health.Type, _ health.Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.finished[id]++
}

func (r *recorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.finished[id]
}

type harness struct {
	t     *testing.T
	s     *Scheduler
	clk   *clock.Fake
	store *MemoryStore
	rec   *recorder
}

func newHarness(t *testing.T, opts ...Option) *harness {
	t.Helper()
	return newHarnessOn(t, clock.NewFake(t0), opts...)
}

// newHarnessOn is newHarness on the fake clock clk.
func newHarnessOn(t *testing.T, clk *clock.Fake, opts ...Option) *harness {
	t.Helper()
	h := &harness{t: t, clk: clk, store: NewMemoryStore(), rec: newRecorder()}
	all := append([]Option{WithClock(h.clk), WithStore(h.store), WithObserver(h.rec), withWaitFloor(time.Hour),
		WithLogger(zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel))}, opts...)
	s, err := New(context.Background(), all...)
	require.NoError(t, err)
	h.s = s
	t.Cleanup(func() { require.NoError(t, s.Close(context.Background())) })
	return h
}

func (h *harness) put(id string, js string) Info {
	h.t.Helper()
	var spec health.InstanceSpec
	require.NoError(h.t, json.Unmarshal([]byte(js), &spec))
	info, _, err := h.s.Put(context.Background(), id, spec)
	require.NoError(h.t, err)
	return info
}

func (h *harness) get(id string) Info {
	h.t.Helper()
	info, err := h.s.Get(context.Background(), id)
	require.NoError(h.t, err)
	return info
}

// results waits until the actor has applied n probe results of id and
// returns its status then.
func (h *harness) results(id string, n int) Info {
	h.t.Helper()
	require.Eventually(h.t, func() bool { return h.rec.count(id) >= n }, 5*time.Second, time.Millisecond,
		"waiting for probe %d of %s", n, id)
	var info Info
	require.Eventually(h.t, func() bool {
		info = h.get(id)
		return len(info.Health.History) >= min(n, health.HistorySize) && info.Health.NextCheckAt != nil
	}, 5*time.Second, time.Millisecond)
	return info
}

// advance moves the fake clock on.
func (h *harness) advance(d time.Duration) { h.clk.Advance(d) }

// target is a loopback HTTP server whose answer can be switched.
type target struct {
	srv     *httptest.Server
	code    atomic.Int32
	panics  atomic.Bool
	hits    atomic.Int64
	port    int
	started chan struct{}
}

func newTarget(t *testing.T) *target {
	t.Helper()
	tg := &target{}
	tg.code.Store(http.StatusOK)
	tg.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tg.hits.Add(1)
		w.WriteHeader(int(tg.code.Load()))
	}))
	t.Cleanup(tg.srv.Close)
	_, port, _ := net.SplitHostPort(tg.srv.Listener.Addr().String())
	tg.port, _ = strconv.Atoi(port)
	return tg
}

func (tg *target) policy(extra string) string {
	return `{"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"http":{"port":` +
		strconv.Itoa(tg.port) + `,"path":"/h"}` + extra + `}}`
}

func deadPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return port
}

// TestCheckpointsProgressSoonAndEvidenceLater checks the checkpoint policy:
// a change of progress (here a failure below the threshold) reaches the
// store within the checkpoint interval, a change of evidence only (more
// successes past the threshold) within the refresh interval.
func TestCheckpointsProgressSoonAndEvidenceLater(t *testing.T) {
	h := newHarness(t, WithCheckpoint(30*time.Second))
	tg := newTarget(t)
	h.put("a", tg.policy(`,"interval":"10s","start_period":"0s"`))
	h.advance(0)
	info := h.results("a", 1)
	require.Equal(t, health.StatusHealthy, info.Health.Status)
	stored := func() *Snapshot {
		snap, err := h.store.Snapshot("a")
		require.NoError(t, err)
		return snap
	}
	require.Equal(t, 1, stored().State.ConsecutiveSuccesses, "the transition to healthy was stored")

	// evidence only: successes 2..4 are not written within the checkpoint interval
	for n := 2; n <= 4; n++ {
		h.advance(10 * time.Second)
		h.results("a", n)
	}
	for n := 5; n <= 8; n++ { // 40 s on: past the checkpoint interval
		h.advance(10 * time.Second)
		h.results("a", n)
	}
	require.Equal(t, 1, stored().State.ConsecutiveSuccesses, "evidence waits for the refresh interval")
	// ... but is written within it
	for n := 9; h.clk.Now().Before(t0.Add(refreshFactor*30*time.Second + 20*time.Second)); n++ {
		h.advance(10 * time.Second)
		h.results("a", n)
	}
	require.Eventually(t, func() bool { return stored().State.ConsecutiveSuccesses > 1 }, 5*time.Second, time.Millisecond)

	// progress: one failure (threshold 3) is written within the checkpoint interval
	tg.code.Store(http.StatusInternalServerError)
	n := h.rec.count("a")
	h.advance(10 * time.Second)
	info = h.results("a", n+1)
	require.Equal(t, 1, info.Health.ConsecutiveFailures)
	tg.code.Store(http.StatusOK) // later probes succeed again; the failure is what must be stored
	for range 3 {
		n++
		h.advance(10 * time.Second)
		h.results("a", n+1)
	}
	require.Eventually(t, func() bool { return stored().State.ConsecutiveFailures == 1 || stored().State.LastFailureAt.After(t0) },
		5*time.Second, time.Millisecond, "the failure was checkpointed within 30 s")
}

// A stop saves what changed since the last snapshot. On a host of more
// instances than WithStopEvidenceUpTo, it saves progress alone: an instance
// whose evidence alone changed keeps its last snapshot (as after a crash),
// one with a failure not yet stored is saved; on a smaller host, both are.
func TestStopSavesEvidenceOnlyOnAHostOfFewInstances(t *testing.T) {
	for _, lean := range []bool{true, false} {
		t.Run(map[bool]string{true: "progress alone", false: "evidence too"}[lean], func(t *testing.T) {
			upTo := 2
			if lean {
				upTo = 1
			}
			h := newHarness(t, WithCheckpoint(time.Hour), WithStopEvidenceUpTo(upTo))
			good, bad := newTarget(t), newTarget(t)
			h.put("steady", good.policy(`,"interval":"10s","start_period":"0s"`))
			h.put("failing", bad.policy(`,"interval":"10s","start_period":"0s"`))
			h.advance(0)
			h.results("steady", 1)
			h.results("failing", 1) // both healthy: stored with the transition
			bad.code.Store(http.StatusInternalServerError)
			h.advance(10 * time.Second)
			h.results("steady", 2)          // evidence only
			info := h.results("failing", 2) // a failure below the threshold: progress
			require.Equal(t, 1, info.Health.ConsecutiveFailures)
			require.NoError(t, h.s.Close(context.Background()))

			steady, err := h.store.Snapshot("steady")
			require.NoError(t, err)
			failing, err := h.store.Snapshot("failing")
			require.NoError(t, err)
			assert.Equal(t, 1, failing.State.ConsecutiveFailures, "progress is saved by every stop")
			if lean {
				assert.Equal(t, 1, steady.State.ConsecutiveSuccesses, "the last snapshot, the transition's")
				assert.Equal(t, 1, steady.State.History.Len())
			} else {
				assert.Equal(t, 2, steady.State.ConsecutiveSuccesses, "the evidence saved by the stop")
				assert.Equal(t, 2, steady.State.History.Len())
			}
		})
	}
}
