package api

import (
	"container/heap"
	"context"
	"encoding/base64"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/vigilhq/vigil/actors"
	"github.com/vigilhq/vigil/health"
)

// Orders of GET /v1/instances (?sort=).
const (
	sortID     = "id"     // id order (the default)
	sortStatus = "status" // unhealthy first (statusOrder), then id
	sortSince  = "since"  // longest in its current status first, then id
	sortNewest = "-since" // the newest change of status first, then id
)

// statusOrder is the order of sort=status: what needs a look first.
var statusOrder = []health.Status{health.StatusUnhealthy, health.StatusStarting, health.StatusUnknown,
	health.StatusHealthy, health.StatusDisabled}

// prefixPattern is what can begin an instance id.
var prefixPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{0,128}$`)

// pager lists one page in id order: the Registry's List, or the fleet's.
type pager func(f actors.Filter, after string, limit int) ([]actors.Info, string, error)

// briefer is what sort=since needs of a Registry: every published brief,
// cheaply, and one instance's published Info. *actors.Scheduler has both.
type briefer interface {
	Briefs(f actors.Filter, fn func(id string, b *health.Brief) bool)
	Peek(id string) (actors.Info, bool)
}

// pagePos is where a page starts: after the instance id, and for the
// orders other than id's, after its status or its time key.
type pagePos struct {
	id     string
	status health.Status // sort=status
	at     int64         // sort=since and -since: sinceKey's at
}

// listCursor is the opaque cursor of a page that ends at p in the order
// given. The cursors of id order keep the form they always had.
func listCursor(order string, p pagePos) string {
	switch order {
	case sortID:
		return encodeCursor(p.id)
	case sortStatus:
		return base64.RawURLEncoding.EncodeToString([]byte("v2:" + order + ":" + string(p.status) + ":" + p.id))
	}
	return base64.RawURLEncoding.EncodeToString([]byte("v2:" + order + ":" + strconv.FormatInt(p.at, 10) + ":" + p.id))
}

// readCursor reads a cursor of the order given; one of another order, or
// one this server did not issue, is a 400 naming cursor.
func readCursor(order, cursor string) (pagePos, error) {
	if cursor == "" {
		return pagePos{}, nil
	}
	if order == sortID {
		id, err := decodeCursor(cursor)
		return pagePos{id: id}, err
	}
	bad := invalid("cursor", "cursor is not one this server issued for sort=%s: pass next_cursor from the previous page as it is, with the same sort", order)
	b, err := base64.RawURLEncoding.DecodeString(cursor)
	parts := strings.Split(string(b), ":")
	if err != nil || len(parts) != 4 || parts[0] != "v2" || parts[1] != order || health.ValidateID(parts[3]) != nil {
		return pagePos{}, bad
	}
	p := pagePos{id: parts[3]}
	if order == sortStatus {
		p.status = health.Status(parts[2])
		if !slices.Contains(statusOrder, p.status) {
			return pagePos{}, bad
		}
		return p, nil
	}
	if p.at, err = strconv.ParseInt(parts[2], 10, 64); err != nil {
		return pagePos{}, bad
	}
	return p, nil
}

// fleetPager pages the fleet in id order. The fleet's catalog knows no
// prefix: the page starts just below it and ends at the first id without it.
func (h *handlers) fleetPager(ctx context.Context) pager {
	return func(f actors.Filter, after string, limit int) ([]actors.Info, string, error) {
		if f.Prefix != "" {
			after = max(after, justBelow(f.Prefix))
		}
		page, next, err := h.fleet.FleetList(ctx, f, after, limit)
		for i, info := range page {
			if !strings.HasPrefix(info.ID, f.Prefix) {
				return page[:i], "", err
			}
		}
		return page, next, err
	}
}

// justBelow is a string below prefix and above every id that is below it:
// prefix with its last byte lowered by one and then 0x7f, a byte above every
// byte an id may have.
func justBelow(prefix string) string {
	n := len(prefix) - 1
	return prefix[:n] + string([]byte{prefix[n] - 1, 0x7f})
}

// statusFirst lists unhealthy instances first, then starting, unknown,
// healthy and disabled, each status in id order: one pass of the id-ordered
// list per status, from the cursor's. counts, when known, skips the statuses
// that have no instance.
func statusFirst(list pager, f actors.Filter, from pagePos, limit int, counts map[health.Status]int) ([]actors.Info, string, error) {
	var out []actors.Info
	var of []health.Status // the status each of out was listed under
	started := from.status == ""
	for _, st := range statusOrder {
		after := ""
		if !started {
			if st != from.status {
				continue
			}
			started, after = true, from.id
		}
		if len(f.Statuses) > 0 && !slices.Contains(f.Statuses, st) || counts != nil && counts[st] == 0 {
			continue
		}
		one := f
		one.Statuses = []health.Status{st}
		page, _, err := list(one, after, limit+1-len(out))
		if err != nil {
			return nil, "", err
		}
		out = append(out, page...)
		for range page {
			of = append(of, st)
		}
		if len(out) > limit {
			return out[:limit], listCursor(sortStatus, pagePos{id: out[limit-1].ID, status: of[limit-1]}), nil
		}
	}
	return out, "", nil
}

// sinceKey orders instances by the time they entered their status. at is
// the time in unix nanoseconds, negated for newest first; an instance with
// no time sorts last either way.
type sinceKey struct {
	at int64
	id string
}

func keyOf(id string, b *health.Brief, newest bool) sinceKey {
	switch {
	case b.Since == 0:
		return sinceKey{math.MaxInt64, id}
	case newest:
		return sinceKey{-b.Since, id}
	}
	return sinceKey{b.Since, id}
}

func (k sinceKey) less(o sinceKey) bool { return k.at < o.at || k.at == o.at && k.id < o.id }

// largest is a max-heap of keys: the page's worst key is on top.
type largest []sinceKey

func (h largest) Len() int           { return len(h) }
func (h largest) Less(i, j int) bool { return h[j].less(h[i]) }
func (h largest) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *largest) Push(x any)        { *h = append(*h, x.(sinceKey)) }
func (h *largest) Pop() any {
	old := *h
	k := old[len(old)-1]
	*h = old[:len(old)-1]
	return k
}

// bySince lists in order of time in status. There is no index by that time
// (it changes with every transition): one pass over the published briefs
// keeps the limit+1 smallest keys after the cursor in a heap, so a page
// costs one read of each selected brief and O(n log limit) comparisons,
// with memory bounded by the page, whatever the number of instances.
func bySince(reg briefer, f actors.Filter, from pagePos, limit int, newest bool) ([]actors.Info, string) {
	order := sortSince
	if newest {
		order = sortNewest
	}
	after := sinceKey{from.at, from.id}
	top := make(largest, 0, limit+1)
	reg.Briefs(f, func(id string, b *health.Brief) bool {
		k := keyOf(id, b, newest)
		if from.id != "" && !after.less(k) {
			return true
		}
		if len(top) <= limit {
			heap.Push(&top, k)
		} else if k.less(top[0]) {
			top[0] = k
			heap.Fix(&top, 0)
		}
		return true
	})
	slices.SortFunc(top, func(a, b sinceKey) int {
		if a.less(b) {
			return -1
		}
		return 1
	})
	next := ""
	if len(top) > limit {
		top = top[:limit]
		next = listCursor(order, pagePos{id: top[limit-1].id, at: top[limit-1].at})
	}
	page := make([]actors.Info, 0, len(top))
	for _, k := range top {
		if info, ok := reg.Peek(k.id); ok { // gone meanwhile otherwise
			page = append(page, info)
		}
	}
	return page, next
}
