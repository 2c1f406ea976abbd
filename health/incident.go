package health

import (
	"fmt"
	"time"
)

// Incident rules: when at least Fraction of a node's active instances, and
// at least Min of them, turn unhealthy within Window, the cause is the host
// (a bridge, a disk), not hundreds of guests at once: one incident opens,
// restarts of its instances hold, and their notifications fold into it. It
// closes when the unhealthy fraction drops below half of Fraction.
type IncidentRules struct {
	Fraction float64
	Min      int
	Window   time.Duration
}

// DefaultIncidentRules are vigil's.
var DefaultIncidentRules = IncidentRules{Fraction: 0.2, Min: 10, Window: 30 * time.Second}

// Incidents is a node's incident detector. Feed it every transition into
// or out of unhealthy with the node's counts after it; it is plain data,
// guarded by its owner.
type Incidents struct {
	Rules IncidentRules
	// the instances that turned unhealthy within the window, and when (a
	// monotonic reading): an instance flapping counts once; queue holds the
	// same in time order, to forget the oldest without a scan
	recent map[string]time.Duration
	queue  []recentFailure
	open   *Incident
	seq    int
}

type recentFailure struct {
	id string
	at time.Duration
}

// Incident is one open or closed incident.
type Incident struct {
	ID        string     `json:"id"`
	OpenedAt  time.Time  `json:"opened_at"`
	ClosedAt  *time.Time `json:"closed_at,omitempty"`
	Instances int        `json:"instances"` // that turned unhealthy while it was open
	Active    int        `json:"active"`    // the node's active instances when it opened
	Peak      int        `json:"peak_unhealthy"`
}

// Observe steps the rules at now for a transition of instance id
// (toUnhealthy: into unhealthy; otherwise out of it) with the node's active
// and unhealthy counts after it. It returns the incident the transition
// belongs to (nil for none), and whether this transition opened or closed
// it. The window is measured on the monotonic clock.
func (d *Incidents) Observe(id string, toUnhealthy bool, active, unhealthy int, now Instant) (inc *Incident, opened, closed bool) {
	if d.recent == nil {
		d.recent = map[string]time.Duration{}
	}
	cut := now.Mono - d.Rules.Window
	i := 0
	for ; i < len(d.queue) && d.queue[i].at < cut; i++ {
		if f := d.queue[i]; d.recent[f.id] == f.at {
			delete(d.recent, f.id)
		}
	}
	d.queue = d.queue[i:]
	if toUnhealthy {
		at := now.Mono
		d.recent[id] = at
		d.queue = append(d.queue, recentFailure{id: id, at: at})
	}
	if d.open != nil {
		d.open.Peak = max(d.open.Peak, unhealthy)
		if toUnhealthy {
			d.open.Instances++
			return d.open, false, false
		}
		if active == 0 || float64(unhealthy) < d.Rules.Fraction/2*float64(active) {
			inc := d.open
			t := now.Wall
			inc.ClosedAt = &t
			d.open = nil
			return inc, false, true
		}
		return nil, false, false
	}
	need := max(float64(d.Rules.Min), d.Rules.Fraction*float64(active))
	if toUnhealthy && float64(len(d.recent)) >= need {
		d.seq++
		d.open = &Incident{ID: fmt.Sprintf("inc-%d-%d", now.Wall.Unix(), d.seq), OpenedAt: now.Wall, Instances: len(d.recent),
			Active: active, Peak: unhealthy}
		return d.open, true, false
	}
	return nil, false, false
}

// Open is the open incident, or nil.
func (d *Incidents) Open() *Incident { return d.open }
