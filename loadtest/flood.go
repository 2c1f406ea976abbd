package loadtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigilhq/vigil/client"
)

// DefaultAPIMix is the flood's mix of requests: reads of one instance, list
// pages walked with their cursors, summaries, PATCHes of a label and PUTs
// of an instance as it is.
const DefaultAPIMix = "get=40,list=15,summary=15,patch=15,put=15"

var floodKinds = []string{"get", "list", "summary", "patch", "put"}

// parseMix reads kind=weight pairs; kinds left out weigh 0.
func parseMix(s string) ([]int, error) {
	if s == "" {
		s = DefaultAPIMix
	}
	w := make([]int, len(floodKinds))
	total := 0
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		n, err := strconv.Atoi(v)
		idx := -1
		for i, name := range floodKinds {
			if name == k {
				idx = i
			}
		}
		if !ok || err != nil || n < 0 || idx < 0 {
			return nil, fmt.Errorf("--api-mix must be kind=weight pairs of %s (got %q)", strings.Join(floodKinds, ", "), part)
		}
		w[idx] = n
		total += n
	}
	if total == 0 {
		return nil, errors.New("--api-mix must give some kind a weight above 0")
	}
	return w, nil
}

// flood is cfg.APIClients clients of vigil serve's API, each issuing one
// request after another (no pause) through the Go client, over connections
// kept alive. Each kind keeps its latency and every status it got; the
// rule is that nothing but a 2xx, a 4xx or a 503 with Retry-After may come
// back, and anything else — another status, a 503 without Retry-After, no
// response at all — is a violation.
type flood struct {
	clients  int
	weights  []int
	total    int
	kinds    []floodKind
	counting atomic.Bool
	halt     atomic.Bool // each client stops after the request it is in
	wg       sync.WaitGroup
	stopped  atomic.Bool
}

type floodKind struct {
	lat      hist
	n        atomic.Uint64
	statuses [600]atomic.Uint64
	noAnswer atomic.Uint64 // transport errors
	no503RA  atomic.Uint64 // 503 without Retry-After
}

// FloodReport is what the API clients saw in the window.
type FloodReport struct {
	Clients    int                        `json:"clients"`
	Requests   uint64                     `json:"requests"`
	PerSecond  float64                    `json:"requests_per_second"`
	Violations uint64                     `json:"violations"`
	Kinds      map[string]FloodKindReport `json:"kinds"`
}

// FloodKindReport is one kind of request's figures.
type FloodKindReport struct {
	Requests uint64  `json:"requests"`
	P50MS    float64 `json:"p50_ms"`
	P99MS    float64 `json:"p99_ms"`
	MaxMS    float64 `json:"max_ms"`
	// every status by its code; "no_response" for transport errors and
	// "503_without_retry_after"
	Statuses map[string]uint64 `json:"statuses"`
}

func startFlood(ctx context.Context, api string, f *fleet, cfg Config) (*flood, error) {
	w, err := parseMix(cfg.APIMix)
	if err != nil {
		return nil, err
	}
	fl := &flood{clients: cfg.APIClients, weights: w, kinds: make([]floodKind, len(floodKinds))}
	for _, n := range w {
		fl.total += n
	}
	hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConns: cfg.APIClients,
		MaxIdleConnsPerHost: cfg.APIClients, IdleConnTimeout: time.Minute}}
	c, err := client.New(api, client.WithHTTP(hc))
	if err != nil {
		return nil, err
	}
	for k := range cfg.APIClients {
		fl.wg.Add(1)
		go func() {
			defer fl.wg.Done()
			fl.run(ctx, c, f, cfg, uint64(k))
		}()
	}
	return fl, nil
}

// run is one client.
func (fl *flood) run(ctx context.Context, c *client.Client, f *fleet, cfg Config, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	cursor := ""
	for ctx.Err() == nil && !fl.halt.Load() {
		kind, pick := 0, rng.IntN(fl.total)
		for pick >= fl.weights[kind] {
			pick -= fl.weights[kind]
			kind++
		}
		i := rng.IntN(f.n)
		began := time.Now()
		status, err := 0, error(nil)
		switch floodKinds[kind] {
		case "get":
			_, err = c.Get(ctx, f.id(i))
			status = http.StatusOK
		case "list":
			var page *client.InstanceList
			if page, err = c.List(ctx, client.ListOptions{Limit: 100, Cursor: cursor}); err == nil {
				cursor = page.NextCursor
			}
			status = http.StatusOK
		case "summary":
			_, err = c.Summary(ctx)
			status = http.StatusOK
		case "patch":
			_, err = c.Patch(ctx, f.id(i), map[string]any{"labels": map[string]string{"flood": strconv.Itoa(rng.IntN(1000))}})
			status = http.StatusOK
		case "put":
			var in client.InstanceInput
			if in, err = clientSpec(f.spec(i, cfg)); err == nil {
				var created bool
				if _, created, err = c.Put(ctx, f.id(i), in); created {
					status = http.StatusCreated
				} else {
					status = http.StatusOK
				}
			}
		}
		took := time.Since(began)
		if ctx.Err() != nil {
			return // the run was interrupted: this one is not counted
		}
		var ae *client.Error
		if errors.As(err, &ae) {
			status = ae.Status
		} else if err != nil {
			status = -1
		}
		if !fl.counting.Load() {
			continue
		}
		k := &fl.kinds[kind]
		k.n.Add(1)
		k.lat.add(took)
		switch {
		case status < 0:
			k.noAnswer.Add(1)
		case status == http.StatusServiceUnavailable && ae.RetryAfter <= 0:
			k.no503RA.Add(1)
		case status < len(k.statuses):
			k.statuses[status].Add(1)
		}
	}
}

func (fl *flood) begin() { fl.counting.Store(true) }
func (fl *flood) end()   { fl.counting.Store(false) }

// stop ends the clients, each after its request in flight, and waits for
// them.
func (fl *flood) stop() {
	if fl.stopped.Swap(true) {
		return
	}
	fl.halt.Store(true)
	fl.wg.Wait()
}

func (fl *flood) progress(el time.Duration) string {
	var n, bad uint64
	for i := range fl.kinds {
		n += fl.kinds[i].n.Load()
	}
	bad = fl.violations()
	return fmt.Sprintf("api %5.0f req/s, %d violations", float64(n)/el.Seconds(), bad)
}

// violations counts what broke the rule: a status that is neither a 2xx,
// a 4xx nor a 503 with Retry-After, or no response.
func (fl *flood) violations() uint64 {
	var bad uint64
	for i := range fl.kinds {
		k := &fl.kinds[i]
		bad += k.noAnswer.Load() + k.no503RA.Load()
		for code := range k.statuses {
			if code >= 200 && code < 300 || code >= 400 && code < 500 || code == http.StatusServiceUnavailable {
				continue
			}
			bad += k.statuses[code].Load()
		}
	}
	return bad
}

func (fl *flood) report(wall time.Duration) *FloodReport {
	r := &FloodReport{Clients: fl.clients, Violations: fl.violations(), Kinds: map[string]FloodKindReport{}}
	for i, name := range floodKinds {
		k := &fl.kinds[i]
		if fl.weights[i] == 0 {
			continue
		}
		kr := FloodKindReport{Requests: k.n.Load(), P50MS: k.lat.quantile(0.5), P99MS: k.lat.quantile(0.99), MaxMS: k.lat.maxMS(),
			Statuses: map[string]uint64{}}
		for code := range k.statuses {
			if n := k.statuses[code].Load(); n > 0 {
				kr.Statuses[strconv.Itoa(code)] = n
			}
		}
		if n := k.noAnswer.Load(); n > 0 {
			kr.Statuses["no_response"] = n
		}
		if n := k.no503RA.Load(); n > 0 {
			kr.Statuses["503_without_retry_after"] = n
		}
		r.Requests += kr.Requests
		r.Kinds[name] = kr
	}
	r.PerSecond = float64(r.Requests) / wall.Seconds()
	return r
}

// statusLine is a kind's statuses in code order, for the table.
func (k FloodKindReport) statusLine() string {
	codes := make([]string, 0, len(k.Statuses))
	for c := range k.Statuses {
		codes = append(codes, c)
	}
	sort.Strings(codes)
	parts := make([]string, len(codes))
	for i, c := range codes {
		parts[i] = fmt.Sprintf("%s×%d", c, k.Statuses[c])
	}
	return strings.Join(parts, " ")
}
