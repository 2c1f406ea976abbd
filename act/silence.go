package act

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// SilenceMatch selects what a silence holds: instances by id, by labels, or
// every instance of a node.
type SilenceMatch struct {
	IDs    []string          `json:"ids,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	Node   string            `json:"node,omitempty"`
}

// Silence holds notifications and restarts of what it matches until Until;
// probing and statuses go on.
type Silence struct {
	ID      string       `json:"id"`
	Match   SilenceMatch `json:"match"`
	Until   time.Time    `json:"until"`
	Comment string       `json:"comment,omitempty"`
	Created time.Time    `json:"created_at"`
}

// Limits of silences.
const (
	maxSilences = 1000
	maxComment  = 1024
	maxSilenced = 10000 // ids in one silence
	keySilence  = "silence/"
)

// Validate checks a silence as a client writes it; errors name the field.
func (s *Silence) Validate(now time.Time) error {
	m := s.Match
	given := 0
	if len(m.IDs) > 0 {
		given++
	}
	if len(m.Labels) > 0 {
		given++
	}
	if m.Node != "" {
		given++
	}
	if given != 1 {
		return invalid("match", "match must give exactly one of ids, labels or node")
	}
	if len(m.IDs) > maxSilenced {
		return invalid("match.ids", "match.ids must have at most %d ids", maxSilenced)
	}
	for i, id := range m.IDs {
		if err := health.ValidateID(id); err != nil {
			return invalid(fmt.Sprintf("match.ids[%d]", i), "match.ids[%d] is not an instance id: %v", i, err)
		}
	}
	if err := health.ValidateLabels(m.Labels); err != nil {
		var fe *health.FieldError
		if errors.As(err, &fe) {
			return invalid("match."+fe.Field, "match.%s", fe.Error())
		}
		return err
	}
	if s.Until.IsZero() || !s.Until.After(now) {
		return invalid("until", "until must be a time in the future, %s", health.RFC3339Example)
	}
	if len(s.Comment) > maxComment {
		return invalid("comment", "comment must be at most %d bytes", maxComment)
	}
	return nil
}

// holds reports whether the silence holds an instance at a time.
func (s *Silence) holds(id string, labels map[string]string, node string, at time.Time) bool {
	if !at.Before(s.Until) {
		return false
	}
	switch {
	case len(s.Match.IDs) > 0:
		for _, x := range s.Match.IDs {
			if x == id {
				return true
			}
		}
		return false
	case len(s.Match.Labels) > 0:
		return health.MatchLabels(labels, s.Match.Labels)
	}
	return s.Match.Node == node
}

// Rechecker is told which instances a silence that ended held
// (actors.Scheduler.Recheck).
type Rechecker interface {
	Recheck(ids []string, silenceEnded bool)
	List(f actors.Filter, cursor string, limit int) ([]actors.Info, string)
}

// Silences is the node's silences, durable in the KV. It is the scheduler's
// Silencer: it answers from an immutable list, without a lock.
type Silences struct {
	kv   KV
	node string
	lg   zerolog.Logger

	mu      sync.Mutex
	list    atomic.Pointer[[]Silence]
	sched   Rechecker
	timer   *time.Timer
	expired map[string]bool
}

// NewSilences loads the stored silences; SetScheduler starts ending them.
func NewSilences(kv KV, node string, lg zerolog.Logger) (*Silences, error) {
	s := &Silences{kv: kv, node: node, lg: lg.With().Str("component", "silences").Logger(), expired: map[string]bool{}}
	var list []Silence
	err := kv.Meta(keySilence, func(_ string, value []byte) error {
		var sl Silence
		if json.Unmarshal(value, &sl) == nil {
			list = append(list, sl)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.list.Store(&list)
	return s, nil
}

// SetScheduler gives the silences the scheduler to tell when one ends, and
// arms the timer of the next end.
func (s *Silences) SetScheduler(sched Rechecker) {
	s.mu.Lock()
	s.sched = sched
	s.mu.Unlock()
	s.arm()
}

// Silenced answers the scheduler (actors.Silencer).
func (s *Silences) Silenced(id string, labels map[string]string, at time.Time) bool {
	for i := range *s.list.Load() {
		if sl := &(*s.list.Load())[i]; sl.holds(id, labels, s.node, at) {
			return true
		}
	}
	return false
}

// Create stores a new silence.
func (s *Silences) Create(ctx context.Context, sl Silence) (Silence, error) {
	now := time.Now()
	if err := sl.Validate(now); err != nil {
		return Silence{}, err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	sl.ID, sl.Created, sl.Until = "sil-"+hex.EncodeToString(b[:]), now.UTC(), sl.Until.UTC()
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := *s.list.Load()
	if len(cur) >= maxSilences {
		return Silence{}, invalid("match", "at most %d silences", maxSilences)
	}
	v, _ := json.Marshal(sl)
	if err := s.kv.PutMeta(ctx, keySilence+sl.ID, v); err != nil {
		return Silence{}, err
	}
	next := append(append([]Silence(nil), cur...), sl)
	s.list.Store(&next)
	s.armLocked()
	return sl, nil
}

// List returns the silences that hold now, by end.
func (s *Silences) List() []Silence {
	now := time.Now()
	var out []Silence
	for _, sl := range *s.list.Load() {
		if now.Before(sl.Until) {
			out = append(out, sl)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Until.Before(out[j].Until) })
	return out
}

// Delete ends a silence now.
func (s *Silences) Delete(ctx context.Context, id string) error {
	s.mu.Lock()
	cur := *s.list.Load()
	var ended *Silence
	next := make([]Silence, 0, len(cur))
	for i := range cur {
		if cur[i].ID == id {
			ended = &cur[i]
			continue
		}
		next = append(next, cur[i])
	}
	if ended == nil {
		s.mu.Unlock()
		return ErrNotFound
	}
	if err := s.kv.DeleteMeta(ctx, keySilence+id); err != nil {
		s.mu.Unlock()
		return err
	}
	s.list.Store(&next)
	sched := s.sched
	s.mu.Unlock()
	s.ended([]Silence{*ended}, sched)
	return nil
}

func (s *Silences) arm() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.armLocked()
}

// armLocked sets the timer to the next end of a silence.
func (s *Silences) armLocked() {
	if s.sched == nil {
		return
	}
	var next time.Time
	for _, sl := range *s.list.Load() {
		if !s.expired[sl.ID] && (next.IsZero() || sl.Until.Before(next)) {
			next = sl.Until
		}
	}
	if s.timer != nil {
		s.timer.Stop()
	}
	if next.IsZero() {
		return
	}
	s.timer = time.AfterFunc(time.Until(next), s.expire)
}

// expire ends the silences whose time has come.
func (s *Silences) expire() {
	now := time.Now()
	s.mu.Lock()
	var ended []Silence
	var keep []Silence
	for _, sl := range *s.list.Load() {
		if !now.Before(sl.Until) {
			ended = append(ended, sl)
			continue
		}
		keep = append(keep, sl)
	}
	s.list.Store(&keep)
	sched := s.sched
	s.armLocked()
	s.mu.Unlock()
	for _, sl := range ended {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.kv.DeleteMeta(ctx, keySilence+sl.ID)
		cancel()
	}
	s.ended(ended, sched)
}

// ended tells the scheduler which instances the ended silences held, so
// that those still unhealthy are notified once and their restarts go on.
func (s *Silences) ended(list []Silence, sched Rechecker) {
	if len(list) == 0 || sched == nil {
		return
	}
	var ids []string
	for cursor := ""; ; {
		page, next := sched.List(actors.Filter{}, cursor, 1000)
		for _, in := range page {
			for i := range list {
				if list[i].holds(in.ID, in.Labels, s.node, list[i].Until.Add(-time.Nanosecond)) {
					ids = append(ids, in.ID)
					break
				}
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	for _, sl := range list {
		s.lg.Info().Str("silence", sl.ID).Str("comment", strings.TrimSpace(sl.Comment)).Int("instances", len(ids)).Msg("silence_ended")
	}
	sched.Recheck(ids, true)
}

// Close stops the timer.
func (s *Silences) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.timer != nil {
		s.timer.Stop()
	}
	s.sched = nil
}
