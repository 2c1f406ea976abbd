package act_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
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

	"github.com/vigilhq/vigil/act"
	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
	"github.com/vigilhq/vigil/persistence"
)

// node is one vigil as serve builds it: Badger, the scheduler, silences,
// the restarter and the notifiers.
type node struct {
	store     *persistence.Store
	sched     *actors.Scheduler
	silences  *act.Silences
	notifiers *act.Notifiers
	restarter *act.Restarter
}

func startNode(t *testing.T, dir string, opts ...actors.Option) *node {
	t.Helper()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	store, err := persistence.Open(dir, persistence.Options{Logger: log})
	require.NoError(t, err)
	n := &node{store: store, restarter: act.NewRestarter(log)}
	n.silences, err = act.NewSilences(store, "n1", log)
	require.NoError(t, err)
	all := append([]actors.Option{actors.WithStore(store), actors.WithLogger(log), actors.WithRestarter(n.restarter),
		actors.WithSilencer(n.silences)}, opts...)
	n.sched, err = actors.New(context.Background(), all...)
	require.NoError(t, err)
	n.silences.SetScheduler(n.sched)
	n.notifiers, err = act.NewNotifiers(store, n.sched, "n1", log, act.WithRetry(100*time.Millisecond, time.Second))
	require.NoError(t, err)
	t.Cleanup(n.close)
	return n
}

func (n *node) close() {
	if n.sched == nil {
		return
	}
	n.notifiers.Close()
	n.restarter.Close()
	n.silences.Close()
	_ = n.sched.Close(context.Background())
	_ = n.store.Close()
	n.sched = nil
}

// target is a TCP listener to probe, that can go down and come back.
type target struct {
	mu   sync.Mutex
	l    net.Listener
	port int
}

func newTarget(t *testing.T) *target {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	tg := &target{l: l, port: l.Addr().(*net.TCPAddr).Port}
	t.Cleanup(tg.down)
	return tg
}

func (tg *target) down() {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	if tg.l != nil {
		_ = tg.l.Close()
		tg.l = nil
	}
}

func (tg *target) up() {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	if tg.l == nil {
		tg.l, _ = net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(tg.port))
	}
}

func spec(port int, labels map[string]string, restart string) health.InstanceSpec {
	one := 1
	s := health.InstanceSpec{State: health.Running, Network: &health.Network{IP: "127.0.0.1"}, Labels: labels,
		HealthCheck: &health.PolicySpec{TCP: &health.TCPSpec{Port: port}, Interval: "1s", StartPeriod: "0s", FailureThreshold: &one}}
	if restart != "" {
		var rp health.RestartPolicySpec
		if err := json.Unmarshal([]byte(restart), &rp); err != nil {
			panic(err)
		}
		s.RestartPolicy = &rp
	}
	return s
}

// receiver records the CloudEvents it is sent.
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	got    []received
	status atomic.Int32  // what it answers
	hang   chan struct{} // when set, it does not answer until closed
	delay  atomic.Int64  // how long it takes to answer, in nanoseconds
	// requests it is answering now, the most at once, and all it was sent
	busy, busiest, requests atomic.Int32
}

type received struct {
	ce        map[string]any
	data      actors.Event
	signature string
	body      []byte
	at        time.Time
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{}
	r.status.Store(http.StatusNoContent)
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.requests.Add(1)
		now := r.busy.Add(1)
		defer r.busy.Add(-1)
		for {
			most := r.busiest.Load()
			if now <= most || r.busiest.CompareAndSwap(most, now) {
				break
			}
		}
		time.Sleep(time.Duration(r.delay.Load()))
		if r.hang != nil {
			select {
			case <-r.hang:
			case <-req.Context().Done():
				return
			}
		}
		body, _ := io.ReadAll(req.Body)
		code := int(r.status.Load())
		if code/100 == 2 {
			var ce map[string]any
			_ = json.Unmarshal(body, &ce)
			var ev actors.Event
			if d, err := json.Marshal(ce["data"]); err == nil {
				_ = json.Unmarshal(d, &ev)
			}
			r.mu.Lock()
			r.got = append(r.got, received{ce: ce, data: ev, signature: req.Header.Get(act.SignatureHeader), body: body, at: time.Now()})
			r.mu.Unlock()
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(func() {
		if r.hang != nil {
			select {
			case <-r.hang:
			default:
				close(r.hang)
			}
		}
		r.srv.Close()
	})
	return r
}

func (r *receiver) events() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.got...)
}

func (r *receiver) waitFor(t *testing.T, n int, d time.Duration) []received {
	t.Helper()
	require.Eventually(t, func() bool { return len(r.events()) >= n }, d, 10*time.Millisecond, "%d events", n)
	return r.events()
}

func TestNotifierGetsSignedCloudEventsThatMatch(t *testing.T) {
	n := startNode(t, t.TempDir())
	ctx := context.Background()
	web, db := newReceiver(t), newReceiver(t)
	_, created, err := n.notifiers.Put(ctx, "web", act.NotifierSpec{URL: web.srv.URL, Secret: "s3cret",
		Match: act.Match{Labels: map[string]string{"service": "web"}}})
	require.NoError(t, err)
	require.True(t, created)
	_, _, err = n.notifiers.Put(ctx, "db-down", act.NotifierSpec{URL: db.srv.URL,
		Match: act.Match{Labels: map[string]string{"service": "db"}, To: []health.Status{health.StatusUnhealthy}}})
	require.NoError(t, err)

	tg := newTarget(t)
	_, _, err = n.sched.Put(ctx, "vm-web", spec(tg.port, map[string]string{"service": "web"}, ""))
	require.NoError(t, err)
	_, _, err = n.sched.Put(ctx, "vm-db", spec(tg.port, map[string]string{"service": "db"}, ""))
	require.NoError(t, err)
	got := web.waitFor(t, 2, 5*time.Second) // registered, healthy
	for _, r := range got {
		assert.Equal(t, act.Sign("s3cret", r.body), r.signature, "the signature is the body's HMAC")
		assert.Equal(t, "1.0", r.ce["specversion"])
		assert.Equal(t, "io.vigil.transition", r.ce["type"])
		assert.Equal(t, "vm-web", r.ce["subject"])
		assert.Equal(t, "vigil://n1", r.ce["source"])
		assert.Equal(t, "vm-web", r.data.InstanceID)
		assert.Equal(t, map[string]string{"service": "web"}, r.data.Labels)
	}
	assert.Equal(t, health.StatusStarting, got[0].data.To)
	assert.Equal(t, health.StatusHealthy, got[1].data.To)

	tg.down()
	db.waitFor(t, 1, 5*time.Second)
	got = db.events()
	assert.Equal(t, "vm-db", got[0].data.InstanceID, "only the db instance's transition to unhealthy")
	assert.Equal(t, health.StatusUnhealthy, got[0].data.To)
	assert.Empty(t, got[0].signature, "no secret, no signature")
	v, ok := n.notifiers.Get("web")
	require.True(t, ok)
	assert.True(t, v.SecretSet)
	assert.GreaterOrEqual(t, v.Delivered, uint64(2))

	_, _, err = n.notifiers.Put(ctx, "bad name!", act.NotifierSpec{URL: web.srv.URL})
	var ae *act.Error
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "name", ae.Field)
	_, _, err = n.notifiers.Put(ctx, "x", act.NotifierSpec{URL: "ftp://x"})
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "url", ae.Field)
}

// A notifier with parallel above 1 has events of that many instances in
// flight at once, each instance's in order, and its position moves over an
// event only once every one before it is delivered; one without sends a
// single event at a time, in order overall. A bad parallel names its field.
func TestParallelNotifierKeepsEachInstancesOrder(t *testing.T) {
	n := startNode(t, t.TempDir())
	ctx := context.Background()
	one, eight := newReceiver(t), newReceiver(t)
	one.delay.Store(int64(5 * time.Millisecond))
	eight.delay.Store(int64(20 * time.Millisecond))
	_, _, err := n.notifiers.Put(ctx, "one", act.NotifierSpec{URL: one.srv.URL})
	require.NoError(t, err)
	_, _, err = n.notifiers.Put(ctx, "eight", act.NotifierSpec{URL: eight.srv.URL, Secret: "k", Parallel: 8})
	require.NoError(t, err)
	v, _ := n.notifiers.Get("one")
	assert.Equal(t, 1, v.Parallel, "the default")
	tg := newTarget(t)
	const instances = 40
	for i := range instances {
		_, _, err := n.sched.Put(ctx, fmt.Sprintf("vm-%02d", i), spec(tg.port, nil, ""))
		require.NoError(t, err)
	}
	// registered, healthy (not down together: that would be an incident)
	eight.waitFor(t, 2*instances, 10*time.Second)
	one.waitFor(t, 2*instances, 10*time.Second)
	last := n.sched.LastSeq()
	require.Eventually(t, func() bool {
		a, _ := n.notifiers.Get("one")
		b, _ := n.notifiers.Get("eight")
		return a.Position >= last && b.Position >= last
	}, 10*time.Second, 20*time.Millisecond)

	assert.Equal(t, int32(1), one.busiest.Load(), "one event at a time")
	var prev uint64
	for _, r := range one.events() {
		assert.Greater(t, r.data.Seq, prev, "in order overall")
		prev = r.data.Seq
	}
	assert.Greater(t, eight.busiest.Load(), int32(1), "events of several instances at once")
	assert.LessOrEqual(t, eight.busiest.Load(), int32(8))
	perInstance := map[string][]uint64{}
	for _, r := range eight.events() {
		assert.Equal(t, act.Sign("k", r.body), r.signature, "each lane signs with the secret")
		perInstance[r.data.InstanceID] = append(perInstance[r.data.InstanceID], r.data.Seq)
	}
	require.Len(t, perInstance, instances)
	for id, seqs := range perInstance {
		require.Len(t, seqs, 2, id)
		assert.IsIncreasing(t, seqs, "%s in order", id)
	}

	for _, bad := range []int{-1, 65} {
		_, _, err = n.notifiers.Put(ctx, "bad", act.NotifierSpec{URL: one.srv.URL, Parallel: bad})
		var ae *act.Error
		require.ErrorAs(t, err, &ae, "parallel %d", bad)
		assert.Equal(t, "parallel", ae.Field)
	}
}

// While one instance's event hangs at the receiver, the other lanes deliver
// the events after it, and the position (shown and stored) stays before it;
// once it is answered the position moves over everything and is stored
// within the flush that follows, not a second later; replacing the
// notifier goes on from there.
func TestParallelNotifierPositionWaitsForTheEventInFlight(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir)
	ctx := context.Background()
	release := make(chan struct{})
	var mu sync.Mutex
	delivered := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ce struct {
			Subject string `json:"subject"`
		}
		body, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(body, &ce)
		if ce.Subject == "vm-held" {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		mu.Lock()
		delivered[ce.Subject]++
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	_, _, err := n.notifiers.Put(ctx, "four", act.NotifierSpec{URL: srv.URL, Parallel: 4})
	require.NoError(t, err)
	tg := newTarget(t)
	first := n.sched.LastSeq() + 1
	_, _, err = n.sched.Put(ctx, "vm-held", spec(tg.port, nil, ""))
	require.NoError(t, err)
	const others = 12
	for i := range others {
		_, _, err := n.sched.Put(ctx, fmt.Sprintf("vm-%02d", i), spec(tg.port, nil, ""))
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		got := 0
		for id, k := range delivered {
			if id != "vm-held" {
				got += k
			}
		}
		return got >= others // of registered and healthy: the lanes not behind the held one
	}, 4*time.Second, 10*time.Millisecond, "the other lanes deliver past the held event (within its attempt's 5 s)")
	time.Sleep(300 * time.Millisecond) // a position queued with the store's commits meanwhile
	v, _ := n.notifiers.Get("four")
	assert.Less(t, v.Position, first, "shown: not past the held event")
	assert.Less(t, storedPosition(t, n, "four"), first, "stored: not past the held event")

	close(release)
	last := n.sched.LastSeq()
	require.Eventually(t, func() bool { v, _ := n.notifiers.Get("four"); return v.Position >= last }, 5*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { return storedPosition(t, n, "four") >= last }, 250*time.Millisecond, 5*time.Millisecond,
		"stored once the lanes are done")
	_, _, err = n.notifiers.Put(ctx, "four", act.NotifierSpec{URL: srv.URL, Parallel: 2})
	require.NoError(t, err)
	v, _ = n.notifiers.Get("four")
	assert.GreaterOrEqual(t, v.Position, last, "replaced: it goes on from where it stopped")
	assert.Equal(t, 2, v.Parallel)
}

// storedPosition is a notifier's position as the store has it.
func storedPosition(t *testing.T, n *node, name string) uint64 {
	t.Helper()
	var pos uint64
	require.NoError(t, n.store.Meta("cursor/"+name, func(_ string, v []byte) error {
		pos, _ = strconv.ParseUint(string(v), 10, 64)
		return nil
	}))
	return pos
}

// A receiver that is down gets the retries of one event, backing off, from
// a notifier of eight lanes, not eight events' retries; once it is up every
// lane delivers again, and nothing is lost.
func TestParallelNotifierRetriesOneEventWhileTheReceiverIsDown(t *testing.T) {
	n := startNode(t, t.TempDir())
	ctx := context.Background()
	rcv := newReceiver(t)
	rcv.status.Store(http.StatusServiceUnavailable)
	_, _, err := n.notifiers.Put(ctx, "eight", act.NotifierSpec{URL: rcv.srv.URL, Parallel: 8})
	require.NoError(t, err)
	tg := newTarget(t)
	const instances = 16
	for i := range instances {
		_, _, err := n.sched.Put(ctx, fmt.Sprintf("vm-%02d", i), spec(tg.port, nil, ""))
		require.NoError(t, err)
	}
	// the retries back off from 100 ms to 1 s (startNode): over 3 s one
	// event's are ≈ 6, eight lanes' would be ≈ 50
	time.Sleep(3 * time.Second)
	refused := rcv.requests.Load()
	assert.Less(t, refused, int32(8+10), "one event's retries while down, beside the first attempt of each lane")
	v, _ := n.notifiers.Get("eight")
	assert.NotEmpty(t, v.LastError)
	// each answer takes a while once it is up: lanes that deliver at once
	// overlap, however fast this host runs them
	rcv.delay.Store(int64(20 * time.Millisecond))
	rcv.busiest.Store(0) // from here on
	rcv.status.Store(http.StatusOK)
	got := rcv.waitFor(t, 2*instances, 10*time.Second) // registered, healthy
	seen := map[uint64]bool{}
	for _, r := range got {
		seen[r.data.Seq] = true
	}
	evs, _, err := n.sched.Events(0, 1000)
	require.NoError(t, err)
	for _, ev := range evs {
		if ev.Kind == "" {
			assert.True(t, seen[ev.Seq], "event %d delivered", ev.Seq)
		}
	}
	assert.Greater(t, rcv.busiest.Load(), int32(1), "every lane delivers again once it is up")
}

// TestReceiverDownForAMinuteGetsEverything: a receiver that refuses for 60 s
// then takes events gets every one, at least once, in order per instance.
func TestReceiverDownForAMinuteGetsEverything(t *testing.T) {
	if testing.Short() {
		t.Skip("a minute of a receiver down")
	}
	t.Parallel()
	n := startNode(t, t.TempDir())
	ctx := context.Background()
	rcv := newReceiver(t)
	rcv.status.Store(http.StatusServiceUnavailable)
	_, _, err := n.notifiers.Put(ctx, "all", act.NotifierSpec{URL: rcv.srv.URL})
	require.NoError(t, err)
	tgs := []*target{newTarget(t), newTarget(t), newTarget(t)}
	for i, tg := range tgs {
		_, _, err := n.sched.Put(ctx, fmt.Sprintf("vm-%d", i), spec(tg.port, nil, ""))
		require.NoError(t, err)
	}
	// flips every 4 s for a minute: no instance changes six times in 10 s
	began := time.Now()
	for k := 0; time.Since(began) < 60*time.Second; k++ {
		time.Sleep(4 * time.Second)
		for _, tg := range tgs {
			if k%2 == 0 {
				tg.down()
			} else {
				tg.up()
			}
		}
	}
	v, _ := n.notifiers.Get("all")
	assert.NotEmpty(t, v.LastError, "the receiver refused")
	assert.Greater(t, v.Backlog, uint64(20))
	last := n.sched.LastSeq()
	rcv.status.Store(http.StatusOK)
	require.Eventually(t, func() bool { v, _ := n.notifiers.Get("all"); return v.Position >= last }, 20*time.Second, 50*time.Millisecond)
	evs, _, err := n.sched.Events(0, 10000)
	require.NoError(t, err)
	perInstance := map[string][]uint64{}
	for _, r := range rcv.events() {
		perInstance[r.data.InstanceID] = append(perInstance[r.data.InstanceID], r.data.Seq)
	}
	for _, ev := range evs {
		if ev.Seq > last || ev.Kind != "" {
			continue
		}
		assert.Contains(t, perInstance[ev.InstanceID], ev.Seq, "event %d delivered: %+v", ev.Seq, ev)
	}
	for id, seqs := range perInstance {
		for i := 1; i < len(seqs); i++ {
			assert.GreaterOrEqual(t, seqs[i], seqs[i-1], "%s in order", id)
		}
	}
}

func TestHungReceiverDoesNotDelayAnother(t *testing.T) {
	n := startNode(t, t.TempDir())
	ctx := context.Background()
	hung, live := newReceiver(t), newReceiver(t)
	hung.hang = make(chan struct{})
	_, _, err := n.notifiers.Put(ctx, "hung", act.NotifierSpec{URL: hung.srv.URL})
	require.NoError(t, err)
	_, _, err = n.notifiers.Put(ctx, "live", act.NotifierSpec{URL: live.srv.URL})
	require.NoError(t, err)
	tg := newTarget(t)
	began := time.Now()
	_, _, err = n.sched.Put(ctx, "vm-1", spec(tg.port, nil, ""))
	require.NoError(t, err)
	got := live.waitFor(t, 2, 3*time.Second)
	assert.Less(t, got[1].at.Sub(began), time.Second, "the live receiver is not held up by the hung one")
	tg.down()
	live.waitFor(t, 3, 3*time.Second)
	v, _ := n.notifiers.Get("hung")
	assert.Equal(t, uint64(0), v.Delivered)
}

// vmManager is a fake VM manager's restart endpoint: each attempt it takes
// "restarts" the VM by telling vigil a new started_at, and from fixAt on it
// also brings the workload back.
type vmManager struct {
	srv      *httptest.Server
	mu       sync.Mutex
	attempts []act.RestartBody
	at       []time.Time
}

func newVMManager(t *testing.T, onRestart func(act.RestartBody)) *vmManager {
	m := &vmManager{}
	m.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b act.RestartBody
		_ = json.NewDecoder(r.Body).Decode(&b)
		m.mu.Lock()
		m.attempts = append(m.attempts, b)
		m.at = append(m.at, time.Now())
		m.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
		go onRestart(b)
	}))
	t.Cleanup(m.srv.Close)
	return m
}

func (m *vmManager) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.attempts)
}

func TestRestartCycleBackoffAndLimit(t *testing.T) {
	n := startNode(t, t.TempDir(), actors.WithRestartHoldDown(0))
	ctx := context.Background()
	tg := newTarget(t)
	tg.down()
	var fix atomic.Bool
	mgr := newVMManager(t, func(b act.RestartBody) {
		if fix.Load() {
			tg.up()
		}
		now := time.Now().UTC()
		_, _ = n.sched.SetState(ctx, b.Instance, health.Running, &now) // the VM started again
	})
	_, _, err := n.sched.Put(ctx, "vm-1", spec(tg.port, nil,
		`{"policy":"on_unhealthy","url":"`+mgr.srv.URL+`","backoff":"1s","max_backoff":"2s","max_attempts":3,"stable_after":"2s"}`))
	require.NoError(t, err)

	require.Eventually(t, func() bool { return mgr.count() == 3 }, 15*time.Second, 20*time.Millisecond, "three attempts")
	require.Eventually(t, func() bool {
		info, _ := n.sched.Get(ctx, "vm-1")
		return info.Health.Restart != nil && info.Health.Restart.BlockedReason == health.BlockedMaxAttempts
	}, 10*time.Second, 20*time.Millisecond, "blocked at the limit")
	time.Sleep(3 * time.Second)
	assert.Equal(t, 3, mgr.count(), "no attempt past the limit")
	mgr.mu.Lock()
	for i, b := range mgr.attempts {
		assert.Equal(t, i+1, b.Attempt)
		assert.Equal(t, "vm-1", b.Instance)
		assert.Equal(t, "connection_refused", b.Reason)
	}
	assert.GreaterOrEqual(t, mgr.at[1].Sub(mgr.at[0]), 900*time.Millisecond, "backoff 1 s")
	assert.GreaterOrEqual(t, mgr.at[2].Sub(mgr.at[1]), 1900*time.Millisecond, "then 2 s")
	mgr.mu.Unlock()

	// the operator restarts the VM (a new started_at): attempts start over,
	// and this time the restart brings the workload back
	fix.Store(true)
	now := time.Now().UTC()
	_, err = n.sched.SetState(ctx, "vm-1", health.Running, &now)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return mgr.count() == 4 }, 10*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool {
		info, _ := n.sched.Get(ctx, "vm-1")
		return info.Health.Status == health.StatusHealthy
	}, 10*time.Second, 20*time.Millisecond, "healthy after the restart")
	mgr.mu.Lock()
	assert.Equal(t, 1, mgr.attempts[3].Attempt)
	mgr.mu.Unlock()
	require.Eventually(t, func() bool {
		info, _ := n.sched.Get(ctx, "vm-1")
		return info.Health.Restart.Attempts == 0
	}, 10*time.Second, 50*time.Millisecond, "stable_after of health resets the count")
}

// TestRestartAttemptSurvivesAKill: an attempt made durable but not
// delivered (the VM manager was down) is delivered after a restart of vigil,
// with its own number, and no other attempt comes inside the backoff.
func TestRestartAttemptSurvivesAKill(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir, actors.WithRestartHoldDown(0))
	ctx := context.Background()
	tg := newTarget(t)
	tg.down()
	var took atomic.Int32
	mgr := newVMManager(t, func(act.RestartBody) {})
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		took.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer down.Close()
	_, _, err := n.sched.Put(ctx, "vm-1", spec(tg.port, nil, `{"policy":"on_unhealthy","url":"`+down.URL+`","backoff":"1h"}`))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return took.Load() >= 1 }, 10*time.Second, 20*time.Millisecond, "attempt 1 sent, refused")
	n.close() // as a crash would: the attempt is in the store, undelivered

	// same data, the VM manager now answers (its URL changes with the
	// spec, which counts as a new policy, so the durable state is given
	// the real one through the spec of the same shape)
	store, err := persistence.Open(dir, persistence.Options{Logger: zerolog.Nop()})
	require.NoError(t, err)
	var snap *actors.Snapshot
	require.NoError(t, store.Load(ctx, func(in health.Instance, s *actors.Snapshot) error { snap = s; return nil }))
	require.NotNil(t, snap)
	require.NotNil(t, snap.State.Restart)
	assert.True(t, snap.State.Restart.Pending, "recorded before it was sent")
	assert.Equal(t, 1, snap.State.Restart.Attempts)
	require.NoError(t, store.Close())

	n2 := startNode(t, dir, actors.WithRestartHoldDown(0))
	require.Eventually(t, func() bool { return took.Load() >= 2 }, 10*time.Second, 20*time.Millisecond, "the same attempt again")
	time.Sleep(500 * time.Millisecond)
	info, err := n2.sched.Get(ctx, "vm-1")
	require.NoError(t, err)
	assert.Equal(t, 1, info.Health.Restart.Attempts, "no second attempt inside the backoff")
	_ = mgr
}

func TestSilenceHoldsAndReleases(t *testing.T) {
	n := startNode(t, t.TempDir(), actors.WithRestartHoldDown(0))
	ctx := context.Background()
	rcv := newReceiver(t)
	_, _, err := n.notifiers.Put(ctx, "down", act.NotifierSpec{URL: rcv.srv.URL, Match: act.Match{To: []health.Status{health.StatusUnhealthy}}})
	require.NoError(t, err)
	mgr := newVMManager(t, func(act.RestartBody) {})
	tg := newTarget(t)
	_, _, err = n.sched.Put(ctx, "vm-1", spec(tg.port, map[string]string{"tenant": "t1"},
		`{"policy":"on_unhealthy","url":"`+mgr.srv.URL+`","backoff":"1h"}`))
	require.NoError(t, err)
	require.Eventually(t, func() bool { info, _ := n.sched.Get(ctx, "vm-1"); return info.Health.Status == health.StatusHealthy },
		5*time.Second, 10*time.Millisecond)

	sl, err := n.silences.Create(ctx, act.Silence{Match: act.SilenceMatch{Labels: map[string]string{"tenant": "t1"}},
		Until: time.Now().Add(time.Hour), Comment: "maintenance"})
	require.NoError(t, err)
	tg.down()
	require.Eventually(t, func() bool { info, _ := n.sched.Get(ctx, "vm-1"); return info.Health.Status == health.StatusUnhealthy },
		5*time.Second, 10*time.Millisecond)
	time.Sleep(1500 * time.Millisecond)
	assert.Empty(t, rcv.events(), "silenced: no notification")
	assert.Equal(t, 0, mgr.count(), "silenced: no restart")
	info, _ := n.sched.Get(ctx, "vm-1")
	assert.Equal(t, health.BlockedSilenced, info.Health.Restart.BlockedReason)

	require.NoError(t, n.silences.Delete(ctx, sl.ID))
	got := rcv.waitFor(t, 1, 5*time.Second)
	assert.Equal(t, "io.vigil.silence_ended", got[0].ce["type"], "still unhealthy when the silence ended: notified once")
	require.Eventually(t, func() bool { return mgr.count() == 1 }, 5*time.Second, 10*time.Millisecond, "the restart goes on")
	time.Sleep(time.Second)
	assert.Len(t, rcv.events(), 1, "once")
	_, err = n.silences.Create(ctx, act.Silence{Match: act.SilenceMatch{IDs: []string{"vm-1"}, Node: "n1"}, Until: time.Now().Add(time.Hour)})
	var ae *act.Error
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "match", ae.Field)
	_, err = n.silences.Create(ctx, act.Silence{Match: act.SilenceMatch{Node: "n1"}, Until: time.Now().Add(-time.Minute)})
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "until", ae.Field)
}

// TestManyFailingTogetherOpenOneIncident: 300 instances of one node whose
// targets die together open one incident; none is restarted, and their own
// notifications fold into it.
func TestManyFailingTogetherOpenOneIncident(t *testing.T) {
	n := startNode(t, t.TempDir())
	ctx := context.Background()
	rcv := newReceiver(t)
	_, _, err := n.notifiers.Put(ctx, "all", act.NotifierSpec{URL: rcv.srv.URL, Match: act.Match{Labels: map[string]string{"rack": "r7"}}})
	require.NoError(t, err)
	mgr := newVMManager(t, func(act.RestartBody) {})
	tg := newTarget(t)
	for i := range 300 {
		_, _, err := n.sched.Put(ctx, fmt.Sprintf("vm-%03d", i), spec(tg.port, map[string]string{"rack": "r7", "n": strconv.Itoa(i)},
			`{"policy":"on_unhealthy","url":"`+mgr.srv.URL+`"}`))
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { return n.sched.Summary()[health.StatusHealthy] == 300 }, 10*time.Second, 20*time.Millisecond)
	// what the start published is delivered before the failures are counted
	require.Eventually(t, func() bool {
		v, ok := n.notifiers.Get("all")
		return ok && v.Position >= n.sched.LastSeq()
	}, 30*time.Second, 20*time.Millisecond, "the start's transitions delivered")
	before := len(rcv.events())
	tg.down()
	require.Eventually(t, func() bool { return n.sched.Summary()[health.StatusUnhealthy] == 300 }, 10*time.Second, 20*time.Millisecond)
	time.Sleep(actors.DefaultRestartHoldDown + time.Second)
	assert.Equal(t, 0, mgr.count(), "no restarts during the incident")
	incs := n.sched.Incidents()
	require.Len(t, incs, 1)
	assert.Nil(t, incs[0].ClosedAt)
	var kinds []string
	for _, r := range rcv.events()[before:] {
		kinds = append(kinds, r.ce["type"].(string))
	}
	assert.Contains(t, kinds, "io.vigil.incident_opened")
	// the incident opens at the 60th failure of 300 (20 %): the failures
	// before it are notified on their own, the 240 after it fold into it
	// (a few whose transitions were under way on other actors as it opened
	// may come on their own too)
	assert.LessOrEqual(t, len(kinds), 64, "the instances' own notifications folded into the incident: %d", len(kinds))
	for _, r := range rcv.events()[before:] {
		if r.ce["type"] == "io.vigil.incident_opened" {
			assert.Equal(t, map[string]any{"rack": "r7"}, r.data.Details["common_labels"])
		}
	}
	info, _ := n.sched.Get(ctx, "vm-150")
	assert.Equal(t, health.BlockedIncident, info.Health.Restart.BlockedReason)

	tg.up()
	require.Eventually(t, func() bool {
		incs := n.sched.Incidents()
		return len(incs) == 1 && incs[0].ClosedAt != nil
	}, 10*time.Second, 20*time.Millisecond, "the incident closes as they recover")
	require.Eventually(t, func() bool { return n.sched.Summary()[health.StatusHealthy] == 300 }, 10*time.Second, 20*time.Millisecond)
	time.Sleep(actors.DefaultRestartHoldDown + time.Second)
	assert.Equal(t, 0, mgr.count(), "those that recovered by themselves after it were not restarted either")
}
