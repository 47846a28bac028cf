package mirror

import (
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/store"
)

// manifestCacheSize bounds the manifests kept in memory (at most 4 MiB
// each, typically a few KiB); manifestCacheTTL bounds how long a manifest
// deleted from the bucket may still be served.
const (
	manifestCacheSize = 256
	manifestCacheTTL  = time.Minute
)

// manifestCache keeps manifests by store, repository and digest. A digest
// names immutable, verified content, so entries never go stale; tags are
// never cached, since they move. containerd's HEAD by tag followed by GET by
// digest then costs one S3 read instead of two rounds. Entries expire after
// manifestCacheTTL, so a manifest removed from the bucket stops being served.
type manifestCache struct {
	mu sync.Mutex
	m  map[cacheKey]cacheEntry
}

type cacheEntry struct {
	m       *store.Manifest
	expires time.Time
}

type cacheKey struct {
	st   *store.Store
	name string
	d    digest.Digest
}

func (c *manifestCache) get(st *store.Store, name string, d digest.Digest) (*store.Manifest, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[cacheKey{st, name, d}]
	if !ok || time.Now().After(e.expires) {
		return nil, false
	}
	return e.m, true
}

func (c *manifestCache) put(st *store.Store, name string, m *store.Manifest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= manifestCacheSize {
		c.m = make(map[cacheKey]cacheEntry) // crude, but bounded
	}
	c.m[cacheKey{st, name, m.Digest}] = cacheEntry{m: m, expires: time.Now().Add(manifestCacheTTL)}
}
