package lazy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
)

// OpenFunc opens random access to a layer's data object (parallel ranged
// GETs: store.ExtraReaderAt). It is called at the first cache miss only, so
// a layer whose chunks are all cached makes no request.
type OpenFunc func() (io.ReaderAt, error)

// Layer reads a layer's files through its index: chunk by chunk from the
// cache, fetching (and verifying) what is missing.
type Layer struct {
	toc   *TOC
	cache *Cache
	open  OpenFunc

	srcMu sync.Mutex
	src   io.ReaderAt // nil until an open succeeds

	digests     []digest.Digest // its chunks', each once
	releaseOnce sync.Once

	bad atomic.Pointer[error] // why the layer failed verification: every read fails
}

// NewLayer reads toc's layer through cache, fetching with open. The
// layer's chunks count as a mounted layer's for eviction until Release.
func NewLayer(toc *TOC, cache *Cache, open OpenFunc) *Layer {
	l := &Layer{toc: toc, cache: cache, open: open}
	seen := make(map[digest.Digest]bool, len(toc.Chunks))
	for _, c := range toc.Chunks {
		if !seen[c.Digest] {
			seen[c.Digest] = true
			l.digests = append(l.digests, c.Digest)
		}
	}
	cache.acquire(l.digests)
	return l
}

// Release says the layer is no longer mounted: its chunks no other
// mounted layer names are removed with drop (its snapshot is gone), else
// evicted first. Only the first call counts.
func (l *Layer) Release(drop bool) {
	l.releaseOnce.Do(func() { l.cache.release(l.digests, drop) })
}

// TOC is the layer's table of contents.
func (l *Layer) TOC() *TOC { return l.toc }

// CachedBytes is how much of the layer's content is on local disk now:
// the sizes of its distinct chunks the cache holds.
func (l *Layer) CachedBytes() int64 {
	l.cache.mu.Lock()
	defer l.cache.mu.Unlock()
	var n int64
	for _, d := range l.digests {
		if e := l.cache.lookup(d); e != nil {
			n += e.size
		}
	}
	return n
}

// present reports whether chunk i is cached.
func (l *Layer) present(i int) bool { return l.cache.has(l.toc.Chunks[i].Digest) }

// source opens the data object at the first miss. A failed open (S3 down
// for a moment, the store's breaker open) is not kept: the next miss tries
// again, so a layer never stays unreadable once S3 is back.
func (l *Layer) source() (io.ReaderAt, error) {
	l.srcMu.Lock()
	defer l.srcMu.Unlock()
	if l.src != nil {
		return l.src, nil
	}
	src, err := l.open()
	if err != nil {
		return nil, err
	}
	l.src = src
	return src, nil
}

// frame fetches chunk i's compressed bytes.
func (l *Layer) frame(i int) ([]byte, error) {
	src, err := l.source()
	if err != nil {
		return nil, err
	}
	c := l.toc.Chunks[i]
	if c.Size <= 0 || c.Size > MaxFrameSize {
		return nil, fmt.Errorf("chunk %d of layer %s: %d bytes compressed: %w", i, l.toc.Layer, c.Size, ErrInvalidIndex)
	}
	b := make([]byte, c.Size)
	if _, err := src.ReadAt(b, c.Offset); err != nil {
		return nil, fmt.Errorf("fetch chunk %d of layer %s: %w", i, l.toc.Layer, err)
	}
	chunksFetched.Inc()
	bytesFetched.Add(float64(len(b)))
	return b, nil
}

// ReadAt reads the uncompressed data stream (file contents, see Entry.Offset).
func (l *Layer) ReadAt(p []byte, off int64) (int, error) {
	return l.readAt(p, off, off+int64(len(p)))
}

// maxRunBytes bounds one ranged read of consecutive chunks (Prefetch's
// runBytes): the buffer it is read into.
const maxRunBytes = 64 << 20

// readaheadBytes bounds how much of a file one cache miss fetches: the
// chunks after the missing one up to the file's end, in one ranged read
// (the fetcher splits it into parallel GETs). A program reading a file
// (or the kernel faulting in a binary) then waits for one round trip, not
// one per chunk.
const readaheadBytes = 8 << 20

// readAt is ReadAt for a read within a file whose content ends at fileEnd
// in the stream: a miss also fetches the file's next missing chunks.
func (l *Layer) readAt(p []byte, off, fileEnd int64) (int, error) {
	return l.ReadFileAt(p, off, fileEnd)
}

// ReadFileAt is ReadAt for a read within a file whose content ends at
// fileEnd in the stream: a miss also fetches the file's next chunks, so a
// program reading a file waits for one round trip, not one per chunk.
func (l *Layer) ReadFileAt(p []byte, off, fileEnd int64) (int, error) {
	if bad := l.bad.Load(); bad != nil {
		return 0, *bad
	}
	return l.readFileAt(p, off, fileEnd)
}

func (l *Layer) readFileAt(p []byte, off, fileEnd int64) (int, error) {
	size := l.toc.StreamSize()
	if off >= size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), size-off)
	var n int64
	for n < want {
		pos := off + n
		i := int(pos / l.toc.ChunkSize)
		within := pos - int64(i)*l.toc.ChunkSize
		k := min(want-n, l.toc.chunkLen(i)-within)
		if err := l.readChunk(i, p[n:n+k], within, fileEnd); err != nil {
			return int(n), err
		}
		n += k
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

func (l *Layer) readChunk(i int, p []byte, within, fileEnd int64) error {
	c := l.toc.Chunks[i]
	size := l.toc.chunkLen(i)
	if _, ok, err := l.cache.readAt(c.Digest, size, p, within); err != nil {
		return err
	} else if ok {
		return nil
	}
	// Fetch this chunk with the file's next missing ones in one read; if
	// that fails, the chunk alone below reports the error.
	last := i + 1
	for bytes := c.Size; last < len(l.toc.Chunks) && int64(last)*l.toc.ChunkSize < fileEnd && !l.present(last); last++ {
		if bytes += l.toc.Chunks[last].Size; bytes > readaheadBytes {
			break
		}
	}
	if last > i+1 && l.fetchRun(context.Background(), i, last, false) == nil {
		if _, ok, err := l.cache.readAt(c.Digest, size, p, within); err == nil && ok {
			return nil
		}
	}
	fetch := func() ([]byte, error) { return l.frame(i) }
	data, err := l.cache.get(c.Digest, size, false, fetch)
	if errors.Is(err, ErrCacheFull) { // joined a prefetch that stopped
		data, err = l.cache.get(c.Digest, size, false, fetch)
	}
	if err != nil {
		return err
	}
	copy(p, data[within:])
	return nil
}

// Prefetch fetches every chunk not yet cached, in order, in runs of
// consecutive chunks of up to runBytes compressed (one ranged read each,
// which the fetcher splits into parallel GETs), jobs runs at once. It stops
// at the first error or when ctx is cancelled, and with ErrCacheFull when
// the cache's limit leaves no room without evicting a mounted layer's
// chunks: a layer larger than the cache is then read on demand, whose
// reads evict the least recently used chunks instead.
func (l *Layer) Prefetch(ctx context.Context, jobs int, runBytes int64) error {
	runBytes = min(runBytes, maxRunBytes)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(jobs, 1))
	for i := 0; i < len(l.toc.Chunks); {
		if l.present(i) {
			i++
			continue
		}
		// A run is cut to what the cache can take without evicting a
		// mounted layer's chunk (runs in flight have reserved nothing
		// yet: the cache itself refuses what no longer fits).
		room := l.cache.prefetchRoom()
		if l.toc.chunkLen(i) > room {
			g.Go(func() error { return ErrCacheFull })
			break
		}
		first, bytes, raw := i, int64(0), int64(0)
		for i < len(l.toc.Chunks) && !l.present(i) && (i == first || bytes+l.toc.Chunks[i].Size <= runBytes && raw+l.toc.chunkLen(i) <= room) {
			bytes += l.toc.Chunks[i].Size
			raw += l.toc.chunkLen(i)
			i++
		}
		last := i
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error { return l.fetchRun(gctx, first, last, true) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// fetchRun reads chunks [first, last) in one ranged read and caches them
// (for a prefetch, without evicting a mounted layer's chunk).
func (l *Layer) fetchRun(ctx context.Context, first, last int, prefetch bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	src, err := l.source()
	if err != nil {
		return err
	}
	if first < 0 || last > len(l.toc.Chunks) || first >= last {
		return fmt.Errorf("prefetch chunks %d-%d of layer %s: out of range", first, last-1, l.toc.Layer)
	}
	// Validate made the chunks contiguous and each at most MaxFrameSize;
	// the run is still checked before its buffer is allocated.
	start := l.toc.Chunks[first].Offset
	end := l.toc.Chunks[last-1].Offset + l.toc.Chunks[last-1].Size
	if start < 0 || end < start || end-start > maxRunBytes+MaxFrameSize {
		return fmt.Errorf("prefetch chunks %d-%d of layer %s: bytes %d-%d: %w", first, last-1, l.toc.Layer, start, end, ErrInvalidIndex)
	}
	buf := make([]byte, end-start)
	if _, err := src.ReadAt(buf, start); err != nil {
		return fmt.Errorf("prefetch chunks %d-%d of layer %s: %w", first, last-1, l.toc.Layer, err)
	}
	chunksFetched.Add(float64(last - first))
	bytesFetched.Add(float64(len(buf)))
	for i := first; i < last; i++ {
		c := l.toc.Chunks[i]
		frame := buf[c.Offset-start : c.Offset-start+c.Size]
		if _, err := l.cache.get(c.Digest, l.toc.chunkLen(i), prefetch, func() ([]byte, error) { return frame, nil }); err != nil {
			return err
		}
	}
	return nil
}
