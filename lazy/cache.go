package lazy

import (
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
type Cache struct {
	dir string
	dec *zstd.Decoder

	loads singleflight.Group // one load per chunk at a time

	mu       sync.Mutex
	verified map[digest.Digest]bool // written or checked by this process
}

// NewCache opens (creating, 0700) a chunk cache in dir.
func NewCache(dir string) (*Cache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("chunk cache: %w", err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(4), zstd.WithDecoderMaxMemory(2*MaxChunkSize))
	if err != nil {
		return nil, err
	}
	return &Cache{dir: dir, dec: dec, verified: map[digest.Digest]bool{}}, nil
}

func (c *Cache) path(d digest.Digest) string {
	hex := d.Encoded()
	return filepath.Join(c.dir, hex[:2], hex)
}

// has reports whether chunk d is on disk.
func (c *Cache) has(d digest.Digest) bool {
	_, err := os.Stat(c.path(d))
	return err == nil
}

// readAt reads from cached chunk d of size bytes; ok is false when it is
// not cached (or was found damaged and removed).
func (c *Cache) readAt(d digest.Digest, size int64, p []byte, off int64) (n int, ok bool, err error) {
	c.mu.Lock()
	checked := c.verified[d]
	c.mu.Unlock()
	if !checked {
		if !c.check(d, size) {
			return 0, false, nil
		}
	}
	f, err := os.Open(c.path(d))
	if errors.Is(err, fs.ErrNotExist) {
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
		os.Remove(c.path(d))
		return false
	}
	c.mu.Lock()
	c.verified[d] = true
	c.mu.Unlock()
	return true
}

// get returns chunk d (size bytes uncompressed), fetching its compressed
// frame with fetch unless it is cached or already being fetched. What it
// returns has been verified.
func (c *Cache) get(d digest.Digest, size int64, fetch func() ([]byte, error)) ([]byte, error) {
	v, err, _ := c.loads.Do(string(d), func() (any, error) {
		data, err := c.load(d, size, fetch)
		if err == nil {
			c.mu.Lock()
			c.verified[d] = true
			c.mu.Unlock()
		}
		return data, err
	})
	if err != nil {
		return nil, err
	}
	return v.([]byte), nil
}

func (c *Cache) load(d digest.Digest, size int64, fetch func() ([]byte, error)) ([]byte, error) {
	if b, err := os.ReadFile(c.path(d)); err == nil && int64(len(b)) == size && digest.FromBytes(b) == d {
		return b, nil
	}
	frame, err := fetch()
	if err != nil {
		return nil, err
	}
	data, err := c.decode(d, size, frame)
	if err != nil {
		return nil, err
	}
	if err := c.store(d, data); err != nil {
		return nil, err
	}
	return data, nil
}

// decode decompresses a frame and checks it is chunk d of size bytes.
func (c *Cache) decode(d digest.Digest, size int64, frame []byte) ([]byte, error) {
	data, err := c.dec.DecodeAll(frame, make([]byte, 0, size))
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

// Close releases the decoder.
func (c *Cache) Close() { c.dec.Close() }
