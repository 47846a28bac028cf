package lazy

import (
	"container/list"
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// ErrCacheFull means the chunk cache could take a chunk only by evicting
// chunks of mounted layers, which a background prefetch never does: it
// stops there, and reads fetch the rest on demand.
var ErrCacheFull = errors.New("lazy chunk cache is full")

const (
	// maxAutoCache caps the cache's default size (a tenth of its file
	// system): beyond this a node is better served fetching again.
	maxAutoCache = 32 << 30
	// minAutoCache is the default size's floor on a small file system, a
	// few of the largest chunks.
	minAutoCache = 4 * MaxChunkSize
)

// DefaultCacheLimit is the cache's size when none is configured: a tenth
// of the file system holding dir (or its nearest existing parent), at
// most 32GiB.
func DefaultCacheLimit(dir string) int64 {
	var st unix.Statfs_t
	for ; ; dir = filepath.Dir(dir) {
		if err := unix.Statfs(dir, &st); err == nil {
			break
		}
		if dir == filepath.Dir(dir) {
			return maxAutoCache
		}
	}
	return max(min(int64(st.Blocks)*int64(st.Bsize)/10, maxAutoCache), minAutoCache)
}

// cachedChunk is one chunk file the cache holds, in one of two lists by
// recency of use: idle (no mounted layer names it) or used.
type cachedChunk struct {
	d    digest.Digest
	size int64
	elem *list.Element
	used bool // in Cache.used, not Cache.idle
}

// index is what the cache holds and who uses it. The caller holds c.mu.
//
// Eviction order: chunks no mounted layer names (idle), least recently
// used first, then, for reads a container waits on only, chunks of
// mounted layers, least recently used first. A chunk evicted under a
// mounted layer is fetched again when read: nothing depends on a chunk
// staying.

// lookup is chunk d's entry, nil when d is not cached.
func (c *Cache) lookup(d digest.Digest) *cachedChunk { return c.chunks[d] }

// insert records a chunk file as most recently used; false if it was
// already recorded. Its bytes were reserved (or, from a scan, counted) by
// the caller.
func (c *Cache) insert(d digest.Digest, size int64) bool {
	if e := c.chunks[d]; e != nil {
		c.touchLocked(e)
		return false
	}
	e := &cachedChunk{d: d, size: size, used: c.refs[d] > 0}
	if e.used {
		e.elem = c.used.PushFront(e)
	} else {
		e.elem = c.idle.PushFront(e)
		c.idleBytes += size
	}
	c.chunks[d] = e
	return true
}

// touchLocked makes e the most recently used of its list.
func (c *Cache) touchLocked(e *cachedChunk) {
	if e.used {
		c.used.MoveToFront(e.elem)
	} else {
		c.idle.MoveToFront(e.elem)
	}
}

// forget drops e from the index and removes its file.
func (c *Cache) forget(e *cachedChunk) {
	if e.used {
		c.used.Remove(e.elem)
	} else {
		c.idle.Remove(e.elem)
		c.idleBytes -= e.size
	}
	delete(c.chunks, e.d)
	delete(c.verified, e.d)
	c.bytes -= e.size
	os.Remove(c.path(e.d))
	cacheBytes.Set(float64(c.bytes))
}

// reserve makes room for a chunk of size bytes and counts it, evicting
// idle chunks and, unless prefetch, chunks of mounted layers. ok is false
// when the chunk is not to be kept (larger than the whole cache); err is
// ErrCacheFull for a prefetch that would evict a mounted layer's chunk.
func (c *Cache) reserve(size int64, prefetch bool) (ok bool, err error) {
	if c.max <= 0 {
		c.bytes += size
		cacheBytes.Set(float64(c.bytes))
		return true, nil
	}
	if size > c.max {
		return false, nil
	}
	if prefetch && c.bytes-c.idleBytes+size > c.max {
		return false, ErrCacheFull
	}
	for c.bytes+size > c.max {
		victim := c.idle.Back()
		if victim == nil {
			victim = c.used.Back()
		}
		if victim == nil {
			break // the rest is reserved by chunks being written
		}
		c.forget(victim.Value.(*cachedChunk))
		cacheEvictions.Inc()
	}
	c.bytes += size
	cacheBytes.Set(float64(c.bytes))
	return true, nil
}

// unreserve returns bytes reserve counted for a chunk that was not kept.
func (c *Cache) unreserve(size int64) {
	c.bytes -= size
	cacheBytes.Set(float64(c.bytes))
}

// roomFor reports whether a prefetch of size more bytes fits without
// evicting a mounted layer's chunk.
func (c *Cache) roomFor(size int64) bool { return size <= c.prefetchRoom() }

// prefetchRoom is how many more bytes a prefetch may add: the limit less
// what mounted layers' chunks (and writes under way) take.
func (c *Cache) prefetchRoom() int64 {
	if c.max <= 0 {
		return math.MaxInt64
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.max - (c.bytes - c.idleBytes)
}

// acquire records that a mounted layer names digests (each once).
func (c *Cache) acquire(digests []digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range digests {
		c.refs[d]++
		if e := c.chunks[d]; e != nil && !e.used {
			c.idle.Remove(e.elem)
			c.idleBytes -= e.size
			e.used, e.elem = true, c.used.PushFront(e)
		}
	}
}

// release undoes acquire. With drop, chunks no other mounted layer names
// are removed at once (the layer's snapshot is gone); otherwise they are
// the first to be evicted.
func (c *Cache) release(digests []digest.Digest, drop bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range digests {
		if c.refs[d]--; c.refs[d] > 0 {
			continue
		}
		delete(c.refs, d)
		e := c.chunks[d]
		if e == nil || !e.used {
			continue
		}
		if drop {
			c.forget(e)
			continue
		}
		c.used.Remove(e.elem)
		e.used, e.elem = false, c.idle.PushBack(e)
		c.idleBytes += e.size
	}
}

// scan indexes the chunk files an earlier run left, oldest (by last
// write) evicted first, removing unfinished writes, then evicts down to
// the limit (which may have been lowered).
func (c *Cache) scan() error {
	type found struct {
		d     digest.Digest
		size  int64
		mtime int64
	}
	var all []found
	err := filepath.WalkDir(c.dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		name := de.Name()
		if strings.HasPrefix(name, ".tmp-") {
			os.Remove(p) // an unfinished write
			return nil
		}
		d := digest.NewDigestFromEncoded(digest.SHA256, name)
		if d.Validate() != nil || filepath.Base(filepath.Dir(p)) != name[:2] {
			return nil // not ours: left alone, not counted
		}
		info, err := de.Info()
		if err != nil || !info.Mode().IsRegular() {
			return nil
		}
		all = append(all, found{d, info.Size(), info.ModTime().UnixNano()})
		return nil
	})
	if err != nil {
		return err
	}
	slices.SortFunc(all, func(a, b found) int { return int(min(max(a.mtime-b.mtime, -1), 1)) })
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range all {
		if c.insert(f.d, f.size) {
			c.bytes += f.size
		}
	}
	if c.max > 0 {
		for c.bytes > c.max && c.idle.Len() > 0 {
			c.forget(c.idle.Back().Value.(*cachedChunk))
			cacheEvictions.Inc()
		}
	}
	cacheBytes.Set(float64(c.bytes))
	return nil
}

// Bytes is the size of the chunks the cache holds.
func (c *Cache) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// Limit is the cache's size limit; 0 is none.
func (c *Cache) Limit() int64 { return c.max }
