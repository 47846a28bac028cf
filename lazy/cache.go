package lazy

import (
	"container/list"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"

	"github.com/s3snap/s3snap/internal/atomicfile"
)

// Cache keeps verified, uncompressed chunks on local disk, one file per
// chunk named by its sha256, so layers sharing content share chunks and a
// restarted agent does not fetch them again. Files are written whole under
// a temporary name and renamed into place. A file found from an earlier
// run (which a crash could have left short) is verified once before use.
//
// With a limit (WithCacheLimit) the files never take more than that: see
// cache_index.go for the eviction order. The index of what is cached is
// kept in memory, rebuilt from the directory at start.
type Cache struct {
	dir string
	dec *zstd.Decoder
	// decMu orders Close after the decodes running: readahead may still
	// be decoding for a reader that left.
	decMu     sync.RWMutex
	decClosed bool
	max       int64 // bytes; 0 is no limit

	loads singleflight.Group // one load per chunk at a time

	mu        sync.Mutex
	verified  map[digest.Digest]bool // written or checked by this process
	chunks    map[digest.Digest]*cachedChunk
	refs      map[digest.Digest]int // mounted layers naming each digest
	idle      *list.List            // of *cachedChunk, most recently used first
	used      *list.List
	bytes     int64 // cached, plus reserved for chunks being written
	idleBytes int64
}

// CacheOption configures NewCache.
type CacheOption func(*Cache)

// WithCacheLimit bounds the cache to max bytes of chunk files (0 or less:
// no limit).
func WithCacheLimit(max int64) CacheOption { return func(c *Cache) { c.max = max } }

// NewCache opens (creating, 0700) a chunk cache in dir, indexing the
// chunks it already holds.
func NewCache(dir string, opts ...CacheOption) (*Cache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("chunk cache: %w", err)
	}
	c := &Cache{
		dir: dir, verified: map[digest.Digest]bool{}, chunks: map[digest.Digest]*cachedChunk{},
		refs: map[digest.Digest]int{}, idle: list.New(), used: list.New(),
	}
	for _, o := range opts {
		o(c)
	}
	if err := c.scan(); err != nil {
		return nil, fmt.Errorf("chunk cache: %w", err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(4), zstd.WithDecoderMaxMemory(2*MaxChunkSize))
	if err != nil {
		return nil, err
	}
	c.dec = dec
	return c, nil
}

func (c *Cache) path(d digest.Digest) string {
	hex := d.Encoded()
	return filepath.Join(c.dir, hex[:2], hex)
}

// has reports whether chunk d is cached.
func (c *Cache) has(d digest.Digest) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lookup(d) != nil
}

// touch makes chunk d, if cached, the most recently used: a read served
// from memory (recent) is a use all the same.
func (c *Cache) touch(d digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.lookup(d); e != nil {
		c.touchLocked(e)
	}
}

// drop forgets chunk d (its file is gone or bad).
func (c *Cache) drop(d digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.lookup(d); e != nil {
		c.forget(e)
	}
}

// readAt reads from cached chunk d of size bytes; ok is false when it is
// not cached (or was found damaged and removed).
func (c *Cache) readAt(d digest.Digest, size int64, p []byte, off int64) (n int, ok bool, err error) {
	c.mu.Lock()
	e := c.lookup(d)
	if e != nil {
		c.touchLocked(e)
	}
	checked := c.verified[d]
	c.mu.Unlock()
	if e == nil {
		return 0, false, nil
	}
	if !checked {
		if !c.check(d, size) {
			return 0, false, nil
		}
	}
	f, err := os.Open(c.path(d))
	if errors.Is(err, fs.ErrNotExist) { // evicted meanwhile
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("chunk cache: %w", err)
	}
	defer f.Close()
	n, err = f.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err != nil {
		return n, false, fmt.Errorf("chunk cache: read %s: %w", d, err)
	}
	return n, true, nil
}

// check verifies a chunk file left by an earlier run, removing it if bad.
func (c *Cache) check(d digest.Digest, size int64) bool {
	b, err := os.ReadFile(c.path(d))
	if err != nil {
		return false
	}
	if int64(len(b)) != size || digest.FromBytes(b) != d {
		c.drop(d)
		return false
	}
	c.mu.Lock()
	c.verified[d] = true
	c.mu.Unlock()
	return true
}

// get returns chunk d (size bytes uncompressed), fetching its compressed
// frame with fetch unless it is cached or already being fetched. What it
// returns has been verified. A prefetch gets ErrCacheFull rather than
// evict a mounted layer's chunk.
func (c *Cache) get(d digest.Digest, size int64, prefetch bool, fetch func() ([]byte, error)) ([]byte, error) {
	v, err, _ := c.loads.Do(string(d), func() (any, error) {
		data, err := c.load(d, size, prefetch, fetch)
		if err == nil {
			c.mu.Lock()
			c.verified[d] = true
			c.mu.Unlock()
		}
		return data, err
	})
	// A prefetch that found no room still decoded the chunk: a read that
	// joined it takes the data.
	data, _ := v.([]byte)
	if err != nil && (prefetch || !errors.Is(err, ErrCacheFull) || data == nil) {
		return nil, err
	}
	return data, nil
}

func (c *Cache) load(d digest.Digest, size int64, prefetch bool, fetch func() ([]byte, error)) ([]byte, error) {
	if c.has(d) {
		b, err := os.ReadFile(c.path(d))
		if err == nil && int64(len(b)) == size && digest.FromBytes(b) == d {
			c.mu.Lock()
			if e := c.lookup(d); e != nil {
				c.touchLocked(e)
			}
			c.mu.Unlock()
			return b, nil
		}
		c.drop(d)
	}
	if prefetch && !c.roomFor(size) {
		return nil, ErrCacheFull
	}
	frame, err := fetch()
	if err != nil {
		return nil, err
	}
	data, err := c.decode(d, size, frame)
	if err != nil {
		return nil, err
	}
	if err := c.keep(d, data, prefetch); errors.Is(err, ErrCacheFull) {
		return data, err
	} else if err != nil {
		return nil, err
	}
	return data, nil
}

// keep stores a verified chunk within the limit; a chunk larger than the
// whole cache is returned to its reader but not kept.
func (c *Cache) keep(d digest.Digest, data []byte, prefetch bool) error {
	size := int64(len(data))
	c.mu.Lock()
	ok, err := c.reserve(size, prefetch)
	c.mu.Unlock()
	if err != nil || !ok {
		return err
	}
	if err := c.store(d, data); err != nil {
		c.mu.Lock()
		c.unreserve(size)
		c.mu.Unlock()
		return err
	}
	c.mu.Lock()
	if !c.insert(d, size) {
		c.unreserve(size)
	}
	c.mu.Unlock()
	return nil
}

// decode decompresses a frame and checks it is chunk d of size bytes.
func (c *Cache) decode(d digest.Digest, size int64, frame []byte) ([]byte, error) {
	c.decMu.RLock()
	if c.decClosed {
		c.decMu.RUnlock()
		return nil, errors.New("chunk cache closed")
	}
	data, err := c.dec.DecodeAll(frame, make([]byte, 0, size))
	c.decMu.RUnlock()
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w: %w", d, ErrCorruptChunk, err)
	}
	if int64(len(data)) != size {
		return nil, fmt.Errorf("chunk %s: %d bytes, want %d: %w", d, len(data), size, ErrCorruptChunk)
	}
	if sum := sha256.Sum256(data); digest.NewDigestFromBytes(digest.SHA256, sum[:]) != d {
		return nil, fmt.Errorf("chunk %s: content hashes to sha256:%x: %w", d, sum, ErrCorruptChunk)
	}
	return data, nil
}

// store writes a verified chunk atomically, without an fsync: a chunk file
// a crash left short is found and dropped when it is next read (check).
func (c *Cache) store(d digest.Digest, data []byte) error {
	p := c.path(d)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("chunk cache: %w", err)
	}
	if err := atomicfile.Write(p, data, 0o600, atomicfile.NoSync()); err != nil {
		return fmt.Errorf("chunk cache: write %s: %w", d, err)
	}
	return nil
}

// Close releases the decoder, once no decode is running.
func (c *Cache) Close() {
	c.decMu.Lock()
	defer c.decMu.Unlock()
	if !c.decClosed {
		c.decClosed = true
		c.dec.Close()
	}
}
