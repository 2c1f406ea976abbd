package act

import (
	"context"
	"sort"
	"strings"
	"sync"
)

// MemoryKV is a KV in memory, for an embedding service without a durable
// store (positions and silences are then lost with the process).
type MemoryKV struct {
	mu sync.Mutex
	m  map[string][]byte
}

// NewMemoryKV returns an empty MemoryKV.
func NewMemoryKV() *MemoryKV { return &MemoryKV{m: map[string][]byte{}} }

// PutMeta stores a record.
func (k *MemoryKV) PutMeta(_ context.Context, key string, value []byte) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.m[key] = append([]byte(nil), value...)
	return nil
}

// QueueMeta stores a record (at once: there is no commit to wait for).
func (k *MemoryKV) QueueMeta(key string, value []byte) {
	_ = k.PutMeta(context.Background(), key, value)
}

// DeleteMeta deletes a record.
func (k *MemoryKV) DeleteMeta(_ context.Context, key string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.m, key)
	return nil
}

// Meta calls fn for the records under prefix, in key order.
func (k *MemoryKV) Meta(prefix string, fn func(key string, value []byte) error) error {
	k.mu.Lock()
	var keys []string
	for key := range k.m {
		if strings.HasPrefix(key, prefix) {
			keys = append(keys, key)
		}
	}
	sort.Strings(keys)
	vals := make([][]byte, len(keys))
	for i, key := range keys {
		vals[i] = k.m[key]
	}
	k.mu.Unlock()
	for i, key := range keys {
		if err := fn(key, vals[i]); err != nil {
			return err
		}
	}
	return nil
}
