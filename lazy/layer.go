package lazy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

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

	fetchMu  sync.Mutex
	inflight map[int]chan struct{} // chunks an on-demand fetch is getting
	ahead    atomic.Int32          // readahead runs running

	seqMu   sync.Mutex
	seqNext map[int64]int64 // by a file's end: where its reads got to
}

// NewLayer reads toc's layer through cache, fetching with open. The
// layer's chunks count as a mounted layer's for eviction until Release.
func NewLayer(toc *TOC, cache *Cache, open OpenFunc) *Layer {
	opened.Store(time.Now().UnixNano())
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

// readaheadBytes bounds one ranged read (compressed bytes) a reader
// waits on: the missing chunk and the file's next missing ones, so a
// program reading a file (or the kernel faulting in a binary) waits for
// one round trip, not one per chunk.
const readaheadBytes = 8 << 20

// Sequential reads of a file get deep readahead instead: the reader waits
// only for a short first run (seqFirstBytes), while up to seqRuns runs of
// readaheadBytes each are fetched and decoded in parallel ahead of it,
// within seqWindow bytes (compressed and uncompressed) of where it reads:
// well within recentBytes, so what is decoded ahead is still in memory
// when the reader gets there.
const (
	seqFirstBytes = 2 << 20
	seqRuns       = 4
	seqWindow     = seqRuns * readaheadBytes
	// seqSlack is how far from where a file's last read ended a read may
	// start and still count as sequential (the kernel's readahead sends
	// its requests concurrently, so they arrive out of order).
	seqSlack = 4 << 20
)

// readAt is ReadAt for a read within a file whose content ends at fileEnd
// in the stream: a miss also fetches the file's next missing chunks.
func (l *Layer) readAt(p []byte, off, fileEnd int64) (int, error) {
	return l.ReadFileAt(p, off, fileEnd)
}

// ReadFileAt is ReadAt for a read within a file whose content ends at
// fileEnd in the stream: a miss also fetches the file's next chunks, so a
// program reading a file waits for one round trip, not one per chunk.
func (l *Layer) ReadFileAt(p []byte, off, fileEnd int64) (int, error) {
	return l.ReadFile(p, off, -1, fileEnd)
}

// ReadFile is ReadFileAt for the file whose content is [fileStart,
// fileEnd) in the stream (fileStart -1: not known). A file read
// sequentially (from its start, or on from where its last read ended)
// gets deep readahead.
func (l *Layer) ReadFile(p []byte, off, fileStart, fileEnd int64) (int, error) {
	if bad := l.bad.Load(); bad != nil {
		return 0, *bad
	}
	return l.readFile(p, off, fileStart, fileEnd)
}

// readFileAt is ReadFileAt whether or not the layer is marked bad: what
// verification reads.
func (l *Layer) readFileAt(p []byte, off, fileEnd int64) (int, error) {
	return l.readFile(p, off, -1, fileEnd)
}

func (l *Layer) readFile(p []byte, off, fileStart, fileEnd int64) (int, error) {
	size := l.toc.StreamSize()
	if off >= size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), size-off)
	seq := l.sequential(off, off+want, fileStart, fileEnd)
	var n int64
	for n < want {
		pos := off + n
		i := int(pos / l.toc.ChunkSize)
		within := pos - int64(i)*l.toc.ChunkSize
		k := min(want-n, l.toc.chunkLen(i)-within)
		if err := l.readChunk(i, p[n:n+k], within, fileEnd, seq); err != nil {
			return int(n), err
		}
		if seq {
			l.readahead(i+1, fileEnd)
		}
		n += k
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// sequential notes a read of [off, end) in the file ending at fileEnd and
// reports whether it goes on sequentially.
func (l *Layer) sequential(off, end, fileStart, fileEnd int64) bool {
	l.seqMu.Lock()
	defer l.seqMu.Unlock()
	if l.seqNext == nil || len(l.seqNext) > 4096 { // bounded: forget old files
		l.seqNext = map[int64]int64{}
	}
	next, known := l.seqNext[fileEnd]
	l.seqNext[fileEnd] = max(next, end)
	return off == fileStart || (known && off >= next-seqSlack && off <= next+seqSlack)
}

// fetching returns a channel closed when the on-demand fetch of chunk i
// ends, or nil when none is running.
func (l *Layer) fetching(i int) chan struct{} {
	l.fetchMu.Lock()
	defer l.fetchMu.Unlock()
	return l.inflight[i]
}

// claim marks the missing chunks from first on that are not being
// fetched, up to limit compressed bytes and the chunk holding the file's
// end, as fetched by the caller (first even if present when force is
// set); last is one past them (first when there are none). done releases
// them.
func (l *Layer) claim(first int, limit, fileEnd int64, force bool) (last int, done func()) {
	l.fetchMu.Lock()
	defer l.fetchMu.Unlock()
	if l.inflight == nil {
		l.inflight = map[int]chan struct{}{}
	}
	var bytes int64
	last = first
	for last < len(l.toc.Chunks) && (last == first || int64(last)*l.toc.ChunkSize < fileEnd) && (force && last == first || !l.present(last)) {
		if _, busy := l.inflight[last]; busy {
			break
		}
		// Bounded compressed (the buffer) and uncompressed (the decode a
		// reader waits for, and what recent holds).
		if bytes += l.toc.Chunks[last].Size; (bytes > limit || int64(last-first)*l.toc.ChunkSize >= limit) && last > first {
			break
		}
		last++
	}
	ch := make(chan struct{})
	for i := first; i < last; i++ {
		l.inflight[i] = ch
	}
	return last, func() {
		l.fetchMu.Lock()
		for i := first; i < last; i++ {
			delete(l.inflight, i)
		}
		l.fetchMu.Unlock()
		close(ch)
	}
}

// readahead keeps the chunks of the file ending at fileEnd from chunk
// from on, within seqWindow compressed bytes, fetched or being fetched,
// in runs of readaheadBytes, at most seqRuns runs of the layer (and
// maxAheadAll of the process) at once.
func (l *Layer) readahead(from int, fileEnd int64) {
	var bytes int64
	for i := from; i < len(l.toc.Chunks) && int64(i)*l.toc.ChunkSize < fileEnd && bytes < seqWindow && int64(i-from)*l.toc.ChunkSize < seqWindow; i++ {
		bytes += l.toc.Chunks[i].Size
		if l.present(i) || l.fetching(i) != nil {
			continue
		}
		if !l.startAhead() {
			return
		}
		last, done := l.claim(i, readaheadBytes, fileEnd, false)
		if last == i {
			done()
			l.endAhead()
			continue
		}
		first := i
		go func() {
			defer l.endAhead()
			defer done()
			leave := demand.enter()
			defer leave()
			_ = l.fetchRun(context.Background(), first, last, true) // a reader meets the error itself
		}()
		for ; i < last-1; i++ {
			bytes += l.toc.Chunks[i+1].Size
		}
	}
}

// aheadAll counts the readahead runs of every layer: what their buffers
// hold is bounded for the process, not only per layer.
var aheadAll atomic.Int32

// maxAheadAll bounds aheadAll (each run buffers up to readaheadBytes).
const maxAheadAll = 2 * seqRuns

// startAhead takes a readahead slot of the layer and of the process, or
// reports there is none.
func (l *Layer) startAhead() bool {
	if l.ahead.Add(1) > seqRuns {
		l.ahead.Add(-1)
		return false
	}
	if aheadAll.Add(1) > maxAheadAll {
		aheadAll.Add(-1)
		l.ahead.Add(-1)
		return false
	}
	return true
}

func (l *Layer) endAhead() {
	aheadAll.Add(-1)
	l.ahead.Add(-1)
}

func (l *Layer) readChunk(i int, p []byte, within, fileEnd int64, seq bool) error {
	c := l.toc.Chunks[i]
	size := l.toc.chunkLen(i)
	serve := func() (bool, error) {
		if b, ok := recent.get(c.Digest); ok && int64(len(b)) == size {
			copy(p, b[within:])
			l.cache.touch(c.Digest) // for the cache's LRU order
			return true, nil
		}
		if _, ok, err := l.cache.readAt(c.Digest, size, p, within); err != nil || !ok {
			return false, err
		}
		return true, nil
	}
	// Fetch this chunk with the file's next missing ones in one read,
	// unless another read is fetching it already: then wait for that.
	limit := int64(readaheadBytes)
	if seq {
		limit = seqFirstBytes // the rest comes by readahead, in parallel
	}
	stale := false
	for fetched := 0; fetched < 2; {
		if ok, err := serve(); ok || err != nil {
			return err
		}
		if ch := l.fetching(i); ch != nil {
			<-ch
			continue
		}
		last, done := l.claim(i, limit, fileEnd, stale)
		if last == i {
			done()
			// Claimed by another read meanwhile, or fetched since: serve
			// it; one present but not servable (its cache file gone) is
			// fetched again.
			stale = l.fetching(i) == nil
			continue
		}
		leave := demand.enter()
		err := l.fetchRun(context.Background(), i, last, true)
		leave()
		done()
		fetched++
		if err != nil {
			break // the chunk alone below reports the error
		}
	}
	leave := demand.enter()
	defer leave()
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
		if l.present(i) || l.fetching(i) != nil {
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
		g.Go(func() error {
			// Reads a container waits on go first.
			if err := demand.yield(gctx); err != nil {
				return err
			}
			return l.fetchRun(gctx, first, last, false)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// fetchRun reads chunks [first, last) in one ranged read and caches them.
// On demand (a reader waits) they are also kept in memory for it, decoded
// in parallel; in the background, decoding pauses while an on-demand
// fetch runs.
func (l *Layer) fetchRun(ctx context.Context, first, last int, onDemand bool) error {
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
	decode := func(i int) error {
		c := l.toc.Chunks[i]
		frame := buf[c.Offset-start : c.Offset-start+c.Size]
		// A prefetch never evicts a mounted layer's chunk (ErrCacheFull).
		data, err := l.cache.get(c.Digest, l.toc.chunkLen(i), !onDemand, func() ([]byte, error) { return frame, nil })
		if err != nil {
			return err
		}
		if onDemand {
			recent.put(c.Digest, data)
		}
		return nil
	}
	if !onDemand {
		for i := first; i < last; i++ {
			if err := demand.yield(ctx); err != nil {
				return err
			}
			if err := decode(i); err != nil {
				return err
			}
		}
		return nil
	}
	var g errgroup.Group
	g.SetLimit(decodeJobs)
	for i := first; i < last; i++ {
		g.Go(func() error { return decode(i) })
	}
	return g.Wait()
}

// decodeJobs is how many chunks of one on-demand run decode at once.
var decodeJobs = max(runtime.GOMAXPROCS(0), 2)
