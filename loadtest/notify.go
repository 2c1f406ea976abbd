package loadtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/vigilhq/vigil/act"
	"github.com/vigilhq/vigil/actors"
)

// deliveries is what the live receivers saw: each event's lag from its
// transition to its arrival.
type deliveries struct {
	lag      hist
	n        atomic.Uint64
	counting atomic.Bool
}

// startNotifiers delivers the scheduler's log to cfg.Notifiers notifiers:
// one to a port nobody listens on (its retries go on all run long), the
// others to receivers in this process.
func startNotifiers(s *actors.Scheduler, kv act.KV, cfg Config) (*deliveries, func(), error) {
	d := &deliveries{}
	var stops []func()
	stop := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	ns, err := act.NewNotifiers(kv, s, "loadtest", cfg.Log)
	if err != nil {
		return nil, nil, err
	}
	stops = append(stops, ns.Close)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		stop()
		return nil, nil, err
	}
	deadURL := "http://" + dead.Addr().String() + "/"
	_ = dead.Close()
	if _, _, err := ns.Put(context.Background(), "down", act.NotifierSpec{URL: deadURL}); err != nil {
		stop()
		return nil, nil, err
	}
	for i := 1; i < cfg.Notifiers; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			stop()
			return nil, nil, err
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
			var ce struct {
				Data struct {
					At time.Time `json:"at"`
				} `json:"data"`
			}
			if json.Unmarshal(body, &ce) == nil && !ce.Data.At.IsZero() && d.counting.Load() {
				d.lag.add(time.Since(ce.Data.At))
				d.n.Add(1)
			}
			w.WriteHeader(http.StatusNoContent)
		})}
		go func() { _ = srv.Serve(l) }()
		stops = append(stops, func() { _ = srv.Close() })
		if _, _, err := ns.Put(context.Background(), fmt.Sprintf("live-%d", i),
			act.NotifierSpec{URL: "http://" + l.Addr().String() + "/", Secret: "load"}); err != nil {
			stop()
			return nil, nil, err
		}
	}
	return d, stop, nil
}
