package fleet

import (
	"sync"
	"time"

	"github.com/google/btree"

	"github.com/vigilhq/vigil/health"
)

// record is what the catalog knows of one instance of the fleet: its owner
// (etcd's owners/<id>) and the last status the owner published
// (status/<id>).
type record struct {
	id     string
	owner  string
	rev    int64         // etcd revision of the owner key as applied
	status health.Status // "" until the owner published one
	since  time.Time
	labels map[string]string
}

// item is a record as the catalog keeps it, for a whole fleet's instances
// on every node: by value in the tree, its one pointer the id, the owner an
// index into the node names.
type item struct {
	id     string
	labels map[string]string // as the owner last published them; shared, never changed
	rev    int64
	since  int64  // unix nanoseconds; 0 for none
	owner  uint16 // index in catalog.names; 0 for none
	status uint8  // slot of the status; len(health.Statuses) for none
}

// member is one node of the fleet as etcd knows it.
type member struct {
	Name  string    `json:"name"`
	Peer  string    `json:"peer_address"`
	API   string    `json:"api_address,omitempty"`
	up    bool      // its alive key exists
	since time.Time // when it last went up or down, as seen here
}

// catalog is this node's copy of the fleet's shared state, fed by one etcd
// watch: members, owners and last known statuses, with status counts per
// node kept as records change. Reads take the read lock.
type catalog struct {
	mu      sync.RWMutex
	byID    *btree.BTreeG[item]
	members map[string]*member
	counts  map[uint16]*[statusSlots]int // owner → records by status
	rev     int64                        // etcd revision applied
	names   []string                     // node names by index; names[0] is none
	index   map[string]uint16            // node name → index
	// changes of membership, for event streams (closed and replaced on
	// every change)
	changed chan struct{}
}

// statusSlots: the five statuses plus "not published yet".
const statusSlots = 6

func slot(st health.Status) int {
	for i, s := range health.Statuses {
		if s == st {
			return i
		}
	}
	return len(health.Statuses)
}

func newCatalog() *catalog {
	return &catalog{byID: btree.NewG(32, func(a, b item) bool { return a.id < b.id }),
		members: map[string]*member{}, counts: map[uint16]*[statusSlots]int{}, changed: make(chan struct{}),
		names: []string{""}, index: map[string]uint16{"": 0}}
}

// nodeLocked is the index of a node's name, added when new.
func (c *catalog) nodeLocked(name string) uint16 {
	if i, ok := c.index[name]; ok {
		return i
	}
	i := uint16(len(c.names))
	c.names = append(c.names, name)
	c.index[name] = i
	return i
}

func (c *catalog) countLocked(it item, d int) {
	if it.owner == 0 {
		return
	}
	n := c.counts[it.owner]
	if n == nil {
		n = new([statusSlots]int)
		c.counts[it.owner] = n
	}
	n[it.status] += d
}

func (c *catalog) recordLocked(it item) record {
	r := record{id: it.id, owner: c.names[it.owner], rev: it.rev, labels: it.labels}
	if int(it.status) < len(health.Statuses) {
		r.status = health.Statuses[it.status]
	}
	if it.since != 0 {
		r.since = time.Unix(0, it.since).UTC()
	}
	return r
}

// get returns the record of id.
func (c *catalog) get(id string) (record, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	it, ok := c.byID.Get(item{id: id})
	if !ok {
		return record{}, false
	}
	return c.recordLocked(it), true
}

// setOwner records owners/<id> as of etcd revision rev (owner "" deletes
// the instance). What this node learns from its own transactions and from
// the watch can arrive in either order: an older revision never overwrites
// a newer one.
// It reports whether it applied the change.
func (c *catalog) setOwner(id, owner string, rev int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	it, ok := c.byID.Get(item{id: id})
	if ok && rev < it.rev {
		return false
	}
	if owner == "" {
		if ok {
			c.countLocked(it, -1)
			c.byID.Delete(it)
		}
		return true
	}
	if ok {
		c.countLocked(it, -1)
	} else {
		it = item{id: id, status: uint8(len(health.Statuses))}
	}
	it.owner, it.rev = c.nodeLocked(owner), rev
	c.byID.ReplaceOrInsert(it)
	c.countLocked(it, +1)
	return true
}

// setStatus records status/<id>; a status of an instance with no owner
// (its owners key not seen yet) is kept for when it comes.
func (c *catalog) setStatus(id string, st health.Status, since time.Time, labels map[string]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	it, ok := c.byID.Get(item{id: id})
	if ok {
		c.countLocked(it, -1)
	} else {
		it = item{id: id}
	}
	it.status, it.since, it.labels = uint8(slot(st)), 0, labels
	if !since.IsZero() {
		it.since = since.UnixNano()
	}
	c.byID.ReplaceOrInsert(it)
	c.countLocked(it, +1)
}

// setMember records members/<name> and alive/<name>.
func (c *catalog) setMember(m member, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old, ok := c.members[m.Name]
	if ok {
		m.up, m.since = old.up, old.since
	} else {
		m.since = now
	}
	c.members[m.Name] = &m
}

// setUp records a node going up or down; it reports whether that changed.
func (c *catalog) setUp(name string, up bool, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.members[name]
	if !ok {
		m = &member{Name: name, since: now}
		c.members[name] = m
	}
	if m.up == up && ok {
		return false
	}
	m.up, m.since = up, now
	close(c.changed)
	c.changed = make(chan struct{})
	return true
}

// isUp reports whether a node is up.
func (c *catalog) isUp(name string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	m, ok := c.members[name]
	return ok && m.up
}

func (c *catalog) member(name string) (member, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	m, ok := c.members[name]
	if !ok {
		return member{}, false
	}
	return *m, true
}

// membersNow returns every member, and a channel closed at the next change.
func (c *catalog) membersNow() ([]member, <-chan struct{}) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]member, 0, len(c.members))
	for _, m := range c.members {
		out = append(out, *m)
	}
	return out, c.changed
}

// shownLocked is an item's status as the fleet shows it: unknown when its
// owner is down, starting before its owner published one.
func (c *catalog) shownLocked(it item) health.Status {
	if m, ok := c.members[c.names[it.owner]]; !ok || !m.up {
		return health.StatusUnknown
	}
	if int(it.status) >= len(health.Statuses) {
		return health.StatusStarting
	}
	return health.Statuses[it.status]
}

// summary counts the fleet's instances by shown status, in all and per node.
func (c *catalog) summary() (map[health.Status]int, map[string]map[health.Status]int) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	total := map[health.Status]int{}
	for _, st := range health.Statuses {
		total[st] = 0
	}
	perNode := map[string]map[health.Status]int{}
	for name := range c.members {
		perNode[name] = map[health.Status]int{}
		for _, st := range health.Statuses {
			perNode[name][st] = 0
		}
	}
	for i, n := range c.counts {
		owner := c.names[i]
		node := perNode[owner]
		if node == nil {
			node = map[health.Status]int{}
			for _, st := range health.Statuses {
				node[st] = 0
			}
			perNode[owner] = node
		}
		up := false
		if m, ok := c.members[owner]; ok {
			up = m.up
		}
		for i, k := range n {
			st := health.StatusStarting // published nothing yet: registered moments ago
			if i < len(health.Statuses) {
				st = health.Statuses[i]
			}
			if !up {
				st = health.StatusUnknown
			}
			node[st] += k
			total[st] += k
		}
	}
	return total, perNode
}

// page returns up to limit records after the id cursor whose shown status
// is in statuses (all when empty) and that have every label of labels,
// with their shown status, and whether more follow.
func (c *catalog) page(statuses []health.Status, labels map[string]string, after string, limit int) (recs []record, shown []health.Status, more bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	visit := func(it item) bool {
		if it.id <= after && after != "" {
			return true
		}
		if it.owner == 0 {
			return true // a status whose owner key is not here yet
		}
		st := c.shownLocked(it)
		if len(statuses) > 0 && !contains(statuses, st) || !health.MatchLabels(it.labels, labels) {
			return true
		}
		if len(recs) == limit {
			more = true
			return false
		}
		recs = append(recs, c.recordLocked(it))
		shown = append(shown, st)
		return true
	}
	if after == "" {
		c.byID.Ascend(visit)
	} else {
		c.byID.AscendGreaterOrEqual(item{id: after}, visit)
	}
	return recs, shown, more
}

// ownedBy returns the ids a node owns.
func (c *catalog) ownedBy(node string) []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var ids []string
	i, ok := c.index[node]
	if !ok {
		return nil
	}
	c.byID.Ascend(func(it item) bool {
		if it.owner == i {
			ids = append(ids, it.id)
		}
		return true
	})
	return ids
}

// instances counts the instances a node owns.
func (c *catalog) instances(node string) int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	n := 0
	if k := c.counts[c.index[node]]; k != nil && node != "" {
		for _, v := range k {
			n += v
		}
	}
	return n
}

func contains(set []health.Status, st health.Status) bool {
	for _, s := range set {
		if s == st {
			return true
		}
	}
	return false
}
