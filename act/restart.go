package act

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/vigilhq/vigil/actors"
)

// Restarter POSTs restart attempts to the VM manager:
// {"instance", "attempt", "reason", "last_error"} to the policy's url. A
// refused or unanswered attempt is tried again, backing off, for as long as
// RestartRetryFor; the attempt's number lets the VM manager tell an attempt
// sent again (after vigil restarted) from a new one.
type Restarter struct {
	lg    zerolog.Logger
	http  *http.Client
	queue chan actors.RestartRequest
	wg    sync.WaitGroup
	ctx   context.Context
	stop  context.CancelFunc
}

// Restarter's bounds.
const (
	restartWorkers  = 8
	restartQueue    = 4096
	RestartRetryFor = time.Minute
)

// RestartBody is what the VM manager receives.
type RestartBody struct {
	Instance  string `json:"instance"`
	Attempt   int    `json:"attempt"`
	Reason    string `json:"reason"`
	LastError string `json:"last_error"`
}

// NewRestarter starts the workers that deliver restart attempts.
func NewRestarter(lg zerolog.Logger) *Restarter {
	ctx, stop := context.WithCancel(context.Background())
	r := &Restarter{lg: lg.With().Str("component", "restart").Logger(), queue: make(chan actors.RestartRequest, restartQueue),
		http: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		ctx:  ctx, stop: stop}
	for range restartWorkers {
		r.wg.Add(1)
		go r.work()
	}
	return r
}

// Restart queues an attempt (actors.Restarter); it never blocks. An attempt
// that finds the queue full is not delivered now; it stays recorded in the
// instance's state and goes again when vigil restarts.
func (r *Restarter) Restart(req actors.RestartRequest) {
	select {
	case r.queue <- req:
	default:
		r.lg.Error().Str("instance_id", req.Instance).Int("attempt", req.Attempt).Msg("restart_queue_full")
		req.Done(false)
	}
}

// Close stops delivering.
func (r *Restarter) Close() {
	r.stop()
	r.wg.Wait()
}

func (r *Restarter) work() {
	defer r.wg.Done()
	for {
		select {
		case <-r.ctx.Done():
			return
		case req := <-r.queue:
			req.Done(r.deliver(req))
		}
	}
}

func (r *Restarter) deliver(req actors.RestartRequest) bool {
	body, _ := json.Marshal(RestartBody{Instance: req.Instance, Attempt: req.Attempt, Reason: string(req.Reason), LastError: req.LastError})
	until := time.Now().Add(RestartRetryFor)
	backoff := RetryFirst
	for {
		err := r.post(req.URL, body)
		if err == nil {
			r.lg.Info().Str("instance_id", req.Instance).Int("attempt", req.Attempt).Msg("restart_delivered")
			return true
		}
		r.lg.Warn().Err(err).Str("instance_id", req.Instance).Int("attempt", req.Attempt).Msg("restart_delivery_failed")
		if time.Now().Add(backoff).After(until) {
			return false
		}
		select {
		case <-r.ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, RetryMax)
	}
}

func (r *Restarter) post(url string, body []byte) error {
	ctx, cancel := context.WithTimeout(r.ctx, AttemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "vigil-restart/1")
	resp, err := r.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("the VM manager answered %s", resp.Status)
	}
	return nil
}
