package actors

import (
	"strings"

	"github.com/google/btree"
)

// idIndex holds the registry's entries in id order, for list paging and
// prefix search. It is a B-tree: registering ids in random order (UUIDs)
// costs O(log n) an insert, where a sorted slice moved half of itself each
// time — O(n) an insert, quadratic over a fleet (a million random ids spent
// hours in memmove). Guarded by Scheduler.mu: writers hold it, readers hold
// it for reading (the tree's reads are safe concurrently).
type idIndex struct {
	t *btree.BTreeG[*entry]
}

// indexDegree is the tree's degree: nodes of up to 63 entries, a few cache
// lines of pointers each.
const indexDegree = 32

func newIDIndex() idIndex {
	return idIndex{t: btree.NewG(indexDegree, func(a, b *entry) bool { return a.id < b.id })}
}

// insert adds e, replacing an entry of the same id.
func (x idIndex) insert(e *entry) { x.t.ReplaceOrInsert(e) }

// remove deletes the entry of e's id.
func (x idIndex) remove(e *entry) { x.t.Delete(e) }

// ascend calls fn with each entry whose id starts with prefix, in id order,
// from the first one after cursor ("" for the start), until fn returns
// false.
func (x idIndex) ascend(prefix, cursor string, fn func(e *entry) bool) {
	visit := func(e *entry) bool {
		if !strings.HasPrefix(e.id, prefix) {
			return false
		}
		if e.id == cursor {
			return true // the cursor is the last id of the previous page
		}
		return fn(e)
	}
	from := cursor
	if prefix > cursor {
		from = prefix
	}
	if from == "" {
		x.t.Ascend(visit)
		return
	}
	x.t.AscendGreaterOrEqual(&entry{id: from}, visit)
}
