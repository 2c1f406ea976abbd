package api

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/internal/tcptest"
	"github.com/vigilhq/vigil/persistence"
)

// badgerServer runs the API over a scheduler on a real Badger store in dir.
func badgerServer(t testing.TB, dir string, opts ...actors.Option) (*httptest.Server, *actors.Scheduler, *persistence.Store) {
	t.Helper()
	st, err := persistence.Open(dir, persistence.Options{Logger: zerolog.Nop()})
	require.NoError(t, err)
	s, err := actors.New(context.Background(), append([]actors.Option{actors.WithStore(st), actors.WithAskTimeout(5 * time.Second)}, opts...)...)
	require.NoError(t, err)
	srv := httptest.NewServer(New(s, Options{}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		require.NoError(t, s.Close(context.Background()))
		require.NoError(t, st.Close())
	})
	return srv, s, st
}

// uuid is a random (version 4) UUID: ids in random order.
func uuid() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func TestBatchRegistersTheValidItemsAndNamesEachError(t *testing.T) {
	srv, s, _ := badgerServer(t, t.TempDir())
	port := tcpTarget(t)
	spec := `"state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":` + port + `}}`
	code, _ := call(t, "PUT", srv.URL+"/v1/instances/vm-old", "application/json", `{`+spec+`}`)
	require.Equal(t, http.StatusCreated, code)

	items := []string{
		`{"id":"vm-new",` + spec + `}`,
		`{"id":"vm-old","name":"renamed",` + spec + `}`,
		`{"id":"vm-rule","state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"interval":"1s","timeout":"2s","tcp":{"port":1}}}`,
		`{"id":"vm-type","state":"Running","network":{"ip":"127.0.0.1"},"health_check":{"tcp":{"port":"80"}}}`,
		`{"id":"vm-unknown","bogus":1,` + spec + `}`,
		`{` + spec + `}`,
		`{"id":"vm-new",` + spec + `}`,
		`"vm-x"`,
		`{"id":"vm-dup-key","state":"Running","state":"Stopped"}`,
		`{"id":"bad id",` + spec + `}`,
	}
	code, out := call(t, "POST", srv.URL+"/v1/instances:batch", "application/json", `{"instances":[`+strings.Join(items, ",")+`]}`)
	require.Equal(t, http.StatusOK, code, out)
	results := out["results"].([]any)
	require.Len(t, results, len(items))
	assert.Equal(t, map[string]any{"id": "vm-new", "result": "created"}, results[0])
	assert.Equal(t, map[string]any{"id": "vm-old", "result": "updated"}, results[1])
	for i, want := range []struct{ id, field, message string }{
		2: {"vm-rule", "instances[2].health_check.timeout", "health_check.timeout must be less than or equal to health_check.interval"},
		3: {"vm-type", "instances[3].health_check.tcp.port", "health_check.tcp.port must be an integer"},
		4: {"vm-unknown", "instances[4].bogus", "unknown field bogus"},
		5: {"", "instances[5].id", `id must be 1-128 characters of A-Z a-z 0-9 . _ - (got "")`},
		6: {"vm-new", "instances[6].id", "id vm-new is the id of instances[0] too: an id may appear once in a batch"},
		7: {"", "instances[7]", "instances[7] must be a JSON object"},
		8: {"vm-dup-key", "instances[8].state", "duplicate field state"},
		9: {"bad id", "instances[9].id", `id must be 1-128 characters of A-Z a-z 0-9 . _ - (got "bad id")`},
	} {
		if want.field == "" {
			continue
		}
		r := results[i].(map[string]any)
		assert.Equal(t, want.id, r["id"], "item %d", i)
		assert.NotContains(t, r, "result", "item %d", i)
		e := r["error"].(map[string]any)
		assert.Equal(t, "invalid_request", e["code"], "item %d", i)
		assert.Equal(t, want.field, e["field"], "item %d", i)
		assert.Equal(t, want.message, e["message"], "item %d", i)
	}
	assert.Equal(t, []any{float64(1), float64(1), float64(len(items) - 2)}, []any{out["created"], out["updated"], out["failed"]})

	// the valid items are registered, probing; the invalid ones are not
	code, got := call(t, "GET", srv.URL+"/v1/instances/vm-old", "", "")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, "renamed", got["name"])
	code, got = call(t, "GET", srv.URL+"/v1/instances/vm-new", "", "")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, "10s", got["health_check"].(map[string]any)["interval"], "normalized")
	for _, id := range []string{"vm-rule", "vm-type", "vm-unknown", "vm-dup-key"} {
		code, _ := call(t, "GET", srv.URL+"/v1/instances/"+id, "", "")
		assert.Equal(t, http.StatusNotFound, code, id)
	}
	assert.Equal(t, 2, s.Len())
	require.Eventually(t, func() bool {
		_, p, _ := s.ProbeNow(context.Background(), "vm-new")
		return p.Health.Status == "healthy"
	}, 5*time.Second, 50*time.Millisecond)
}

func TestBatchIsRefusedWholeWhenItIsNotABatch(t *testing.T) {
	srv, _, _ := badgerServer(t, t.TempDir())
	item := `{"id":"vm-%d","state":"Stopped"}`
	many := make([]string, MaxBatch+1)
	for i := range many {
		many[i] = fmt.Sprintf(item, i)
	}
	const p, js = "/v1/instances:batch", "application/json"
	checkRejections(t, srv.URL, []rejection{
		{"too many items", "POST", p, js, `{"instances":[` + strings.Join(many, ",") + `]}`, 400, "instances",
			"instances has more than 1000 items: send at most 1000 in one request"},
		{"no items", "POST", p, js, `{"instances":[]}`, 400, "instances", "instances is empty: send 1 to 1000 instances"},
		{"no instances", "POST", p, js, `{}`, 400, "instances", "instances is required: an array of instances, each with its id"},
		{"not an array", "POST", p, js, `{"instances":{"id":"vm-1"}}`, 400, "instances",
			"instances must be an array of instances, each with its id"},
		{"another member", "POST", p, js, `{"instances":[{"id":"vm-1","state":"Stopped"}],"atomic":true}`, 400, "atomic",
			"unknown field atomic"},
		{"twice", "POST", p, js, `{"instances":[],"instances":[]}`, 400, "instances", "duplicate field instances"},
		{"not an object", "POST", p, js, `[]`, 400, "", "body must be a JSON object"},
		{"not JSON", "POST", p, "text/plain", `{}`, 415, "", "body must be application/json"},
		{"over 8 MiB", "POST", p, js, `{"instances":[{"id":"vm-1","state":"Stopped","name":"` + strings.Repeat("x", MaxBatchBody) + `"}]}`,
			413, "", "body is over 8 MiB"},
	})
	for body, field := range map[string]string{
		`{"instances":[{"id":"vm-1",}]}`:                     "instances[0]",
		`{"instances":[{"id":"vm-1","state":"Stopped"}]} {}`: "",
	} {
		code, out := call(t, "POST", srv.URL+p, js, body)
		require.Equal(t, http.StatusBadRequest, code, body)
		e := out["error"].(map[string]any)
		assert.True(t, strings.HasPrefix(e["message"].(string), "malformed JSON"), e)
		if field != "" {
			assert.Equal(t, field, e["field"], body)
		}
	}
	code, out := call(t, "GET", srv.URL+"/v1/summary", "", "")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, float64(0), out["total"], "nothing registered")

	// an item over 1 MiB fails alone
	code, out = call(t, "POST", srv.URL+p, js, `{"instances":[{"id":"vm-big","state":"Stopped","name":"`+strings.Repeat("x", MaxBody)+`"},`+
		`{"id":"vm-small","state":"Stopped"}]}`)
	require.Equal(t, http.StatusOK, code)
	results := out["results"].([]any)
	assert.Equal(t, map[string]any{"code": "too_large", "field": "instances[0]", "message": "instances[0] is over 1 MiB, the limit of one instance's spec"},
		results[0].(map[string]any)["error"])
	assert.Equal(t, "created", results[1].(map[string]any)["result"])
}

// TestBatchAndSinglePutsAndDeletesAtOnce runs batches over the same ids
// from several clients while single puts and deletes change them: nothing
// waits on anything in a circle, and what the answers say is what is
// registered.
func TestBatchAndSinglePutsAndDeletesAtOnce(t *testing.T) {
	srv, s, _ := badgerServer(t, t.TempDir())
	ids := make([]string, 200)
	for i := range ids {
		ids[i] = fmt.Sprintf("vm-%03d", i)
	}
	batch := func(from int) string {
		items := make([]string, 0, len(ids))
		for k := range ids {
			items = append(items, `{"id":"`+ids[(from+k*7)%len(ids)]+`","state":"Stopped"}`)
		}
		return `{"instances":[` + strings.Join(items, ",") + `]}`
	}
	done := make(chan struct{})
	errs := make(chan error, 16)
	for w := range 4 {
		go func() {
			for n := 0; ; n++ {
				select {
				case <-done:
					errs <- nil
					return
				default:
				}
				resp, err := http.Post(srv.URL+"/v1/instances:batch", "application/json", strings.NewReader(batch(w*13+n)))
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("batch: %d", resp.StatusCode)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	ctx := context.Background()
	for n := range 100 {
		id := ids[(n*31)%len(ids)]
		if n%2 == 0 {
			_, _, err := s.Put(ctx, id, stoppedSpec())
			require.NoError(t, err)
		} else if err := s.Remove(ctx, id); err != nil {
			require.ErrorIs(t, err, actors.ErrNotFound)
		}
	}
	close(done)
	for range 4 {
		require.NoError(t, <-errs)
	}
	code, out := call(t, "POST", srv.URL+"/v1/instances:batch", "application/json", batch(0))
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, float64(0), out["failed"])
	assert.Equal(t, len(ids), s.Len())
	page, _ := s.List(actors.Filter{}, "", 1000)
	require.Len(t, page, len(ids))
	for i, in := range page {
		assert.Equal(t, ids[i], in.ID)
	}
}

// BenchmarkBatchRegistration registers instances with random ids (UUIDs)
// over real HTTP, a batch of 1000 an op, on a real Badger store: stopped
// ones (no probes: registration alone), and running ones with TCP probes at
// 60 s against a loopback target (each new instance probes once at once,
// and the fleet's probes grow with it). -benchtime 100x registers 100 000;
// an op that grows with the count registered is a cost per insert that
// grows with n.
//
//	go test -run '^$' -bench BatchRegistration -benchtime 100x ./api
func BenchmarkBatchRegistration(b *testing.B) {
	for _, state := range []string{"Stopped", "Running"} {
		b.Run(state, func(b *testing.B) { benchRegistration(b, state) })
	}
}

func benchRegistration(b *testing.B, state string) {
	port := tcptest.AcceptAndClose(b)
	srv, s, _ := badgerServer(b, b.TempDir(), actors.WithProbeBudget(4096))
	spec := fmt.Sprintf(`"state":%q,"network":{"ip":"127.0.0.1"},"health_check":{"interval":"60s","timeout":"1s","tcp":{"port":%d}}`, state, port)
	batch := func() string {
		items := make([]string, MaxBatch)
		for i := range items {
			items[i] = `{"id":"` + uuid() + `",` + spec + `}`
		}
		return `{"instances":[` + strings.Join(items, ",") + `]}`
	}
	b.ReportAllocs()
	var took, slowest time.Duration
	cpu0 := cpuTime()
	for b.Loop() {
		body := batch()
		began := time.Now()
		resp, err := http.Post(srv.URL+"/v1/instances:batch", "application/json", strings.NewReader(body))
		require.NoError(b, err)
		var out BatchResponse
		require.NoError(b, json.NewDecoder(resp.Body).Decode(&out))
		resp.Body.Close()
		require.Equal(b, http.StatusOK, resp.StatusCode)
		require.Equal(b, MaxBatch, out.Created, "%+v", out)
		took += time.Since(began)
		slowest = max(slowest, time.Since(began))
	}
	b.ReportMetric(float64(s.Len())/took.Seconds(), "registrations/s")
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(s.Len()), "cpu-µs/registration")
	b.ReportMetric(float64(slowest.Milliseconds()), "slowest-batch-ms")
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapInuse>>20), "live-heap-MiB")
}

// cpuTime is the CPU time this process has used (the server's and the
// benchmark's client both).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
