package lazy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

const testChunk = 4096

func metricValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		t.Fatal(err)
	}
	if out.Counter != nil {
		return out.Counter.GetValue()
	}
	return out.Gauge.GetValue()
}

// diskBytes is what the cache's files take, as du would count them
// (apparent sizes).
func diskBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	// Readahead may be writing meanwhile: a temporary file renamed (or a
	// chunk evicted) under the walk is gone, not an error.
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err == nil {
			n += info.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func openCache(t *testing.T, dir string, limit int64) *Cache {
	t.Helper()
	c, err := NewCache(dir, WithCacheLimit(limit))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func mountOn(c *Cache, b built) *Layer {
	return NewLayer(b.toc, c, func() (io.ReaderAt, error) { return bytes.NewReader(b.data), nil })
}

// readChunk reads one byte of chunk i of l's stream (no readahead).
func readChunkOf(t *testing.T, l *Layer, i int) {
	t.Helper()
	if _, err := l.ReadAt(make([]byte, 1), int64(i)*l.toc.ChunkSize); err != nil {
		t.Fatalf("read chunk %d: %v", i, err)
	}
}

// checkAll reads every file of b through l and compares it.
func checkAll(t *testing.T, l *Layer, b built, files map[string][]byte) {
	t.Helper()
	root, err := Tree(b.toc)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		got, err := readFile(l, find(t, root, name))
		if err != nil || sha256.Sum256(got) != sha256.Sum256(want) {
			t.Errorf("%s: %v (content differs: %v)", name, err, !bytes.Equal(got, want))
		}
	}
}

// A layer five times the cache: the prefetch stops at the limit, every
// file still reads right (evicting as it goes), and the cache's files
// never exceed the limit.
func TestCacheLimitHolds(t *testing.T) {
	files := map[string][]byte{"a": random(11, 40000), "b": random(12, 30000), "c/d": random(13, 30000)}
	b := build(t, testChunk, reg("a", files["a"]), reg("b", files["b"]), reg("c/d", files["c/d"]))
	const limit = 5 * testChunk
	dir := t.TempDir()
	c := openCache(t, dir, limit)
	l := mountOn(c, b)
	evicted := metricValue(t, cacheEvictions)
	if err := l.Prefetch(context.Background(), 2, 3*testChunk); !errors.Is(err, ErrCacheFull) {
		t.Fatalf("prefetch: %v, want ErrCacheFull", err)
	}
	if got := diskBytes(t, dir); got > limit || got < limit-testChunk {
		t.Fatalf("after prefetch the cache holds %d bytes, want it filled up to the limit %d", got, limit)
	}
	if metricValue(t, cacheEvictions) != evicted {
		t.Error("the prefetch evicted a mounted layer's chunk")
	}
	for range 2 { // the second pass reads what the first evicted
		checkAll(t, l, b, files)
		// Readahead the reads started may be writing a chunk that takes
		// an evicted one's place: the files settle within the limit.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			got := diskBytes(t, dir)
			if got <= limit {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the cache holds %d bytes, limit %d", got, limit)
			}
		}
	}
	// Readahead a sequential read started may still be fetching: the
	// figures agree once it is done.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c.Bytes() == diskBytes(t, dir) && l.CachedBytes() == c.Bytes() {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("cache says %d bytes, layer %d, disk %d", c.Bytes(), l.CachedBytes(), diskBytes(t, dir))
			break
		}
	}
	if metricValue(t, cacheEvictions) == evicted {
		t.Error("no eviction counted")
	}
	if metricValue(t, cacheBytes) != float64(c.Bytes()) {
		t.Errorf("gauge %v, cache %d", metricValue(t, cacheBytes), c.Bytes())
	}
}

// A chunk larger than the whole cache is read but not kept.
func TestCacheChunkLargerThanLimit(t *testing.T) {
	files := map[string][]byte{"a": random(14, 3*testChunk)}
	b := build(t, 2*testChunk, reg("a", files["a"]))
	dir := t.TempDir()
	c := openCache(t, dir, testChunk)
	l := mountOn(c, b)
	checkAll(t, l, b, files)
	if got := diskBytes(t, dir); got > testChunk {
		t.Errorf("the cache holds %d bytes, limit %d", got, testChunk)
	}
}

// Chunks of a layer no longer mounted go before any mounted layer's, even
// ones used longer ago.
func TestCacheEvictsUnmountedFirst(t *testing.T) {
	ba := build(t, testChunk, reg("a", random(21, 4*testChunk)))
	bb := build(t, testChunk, reg("b", random(22, 4*testChunk)))
	bc := build(t, testChunk, reg("c", random(23, 2*testChunk)))
	c := openCache(t, t.TempDir(), 8*testChunk)
	la, lb, lc := mountOn(c, ba), mountOn(c, bb), mountOn(c, bc)
	for _, l := range []*Layer{lb, la} { // b is the least recently used
		if err := l.Prefetch(context.Background(), 1, testChunk); err != nil {
			t.Fatal(err)
		}
	}
	la.Release(false)
	if la.CachedBytes() != 4*testChunk {
		t.Fatalf("released without drop, a holds %d bytes", la.CachedBytes())
	}
	readChunkOf(t, lc, 0)
	readChunkOf(t, lc, 1)
	if lb.CachedBytes() != 4*testChunk {
		t.Errorf("mounted layer b lost chunks: %d bytes left", lb.CachedBytes())
	}
	if la.CachedBytes() != 2*testChunk {
		t.Errorf("unmounted layer a holds %d bytes, want %d", la.CachedBytes(), 2*testChunk)
	}
}

// Among mounted layers' chunks the least recently read goes first.
func TestCacheLRU(t *testing.T) {
	b := build(t, testChunk, reg("a", random(31, 6*testChunk)))
	c := openCache(t, t.TempDir(), 4*testChunk)
	l := mountOn(c, b)
	for i := range 4 {
		readChunkOf(t, l, i)
	}
	readChunkOf(t, l, 0) // now 1 is the least recently used
	readChunkOf(t, l, 4)
	for i, want := range []bool{true, false, true, true, true, false} {
		if got := l.present(i); got != want {
			t.Errorf("chunk %d cached: %v, want %v", i, got, want)
		}
	}
}

// A chunk two mounted layers share stays until neither is mounted; a
// dropped layer's own chunks go at once.
func TestCacheSharedChunks(t *testing.T) {
	zeros := make([]byte, 2*testChunk) // one chunk digest, shared
	ba := build(t, testChunk, reg("z", zeros), reg("a", random(41, 2*testChunk)))
	bb := build(t, testChunk, reg("z", zeros), reg("b", random(42, 2*testChunk)))
	dir := t.TempDir()
	c := openCache(t, dir, 0)
	la, lb := mountOn(c, ba), mountOn(c, bb)
	for _, l := range []*Layer{la, lb} {
		if err := l.Prefetch(context.Background(), 1, testChunk); err != nil {
			t.Fatal(err)
		}
	}
	if got := c.Bytes(); got != 5*testChunk {
		t.Fatalf("cache holds %d bytes, want %d (the zero chunk once)", got, 5*testChunk)
	}
	la.Release(true)
	if got := diskBytes(t, dir); got != 3*testChunk {
		t.Errorf("after a is dropped the cache holds %d bytes, want %d", got, 3*testChunk)
	}
	if lb.CachedBytes() != 3*testChunk {
		t.Errorf("b holds %d bytes, want all %d", lb.CachedBytes(), 3*testChunk)
	}
	la.Release(true) // only the first release counts
	if lb.CachedBytes() != 3*testChunk {
		t.Error("a second release of a dropped b's chunks")
	}
	lb.Release(true)
	if got := diskBytes(t, dir); got != 0 || c.Bytes() != 0 {
		t.Errorf("with nothing mounted the cache holds %d bytes (index %d)", got, c.Bytes())
	}
}

// A cache opened again indexes what is on disk, drops unfinished writes,
// and evicts the oldest files to meet a lower limit.
func TestCacheRescan(t *testing.T) {
	b := build(t, testChunk, reg("a", random(51, 6*testChunk)))
	dir := t.TempDir()
	c := openCache(t, dir, 0)
	l := mountOn(c, b)
	if err := l.Prefetch(context.Background(), 1, testChunk); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	for i, ch := range b.toc.Chunks {
		when := old.Add(time.Duration(i) * time.Minute) // chunk 0 the oldest
		if err := os.Chtimes(c.path(ch.Digest), when, when); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(filepath.Dir(c.path(b.toc.Chunks[0].Digest)), ".tmp-unfinished")
	if err := os.WriteFile(tmp, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	again := openCache(t, dir, 0)
	if again.Bytes() != 6*testChunk {
		t.Errorf("reopened cache counts %d bytes, want %d", again.Bytes(), 6*testChunk)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("unfinished write kept: %v", err)
	}
	smaller := openCache(t, dir, 4*testChunk)
	if got := diskBytes(t, dir); got != 4*testChunk || smaller.Bytes() != got {
		t.Fatalf("under a 4-chunk limit the cache holds %d bytes (index %d)", got, smaller.Bytes())
	}
	l2 := mountOn(smaller, b)
	for i, want := range []bool{false, false, true, true, true, true} {
		if got := l2.present(i); got != want {
			t.Errorf("chunk %d kept: %v, want %v (oldest evicted first)", i, got, want)
		}
	}
	checkAll(t, l2, b, map[string][]byte{"a": random(51, 6*testChunk)})
}

// Reads racing a prefetch that stops at the limit (and may share its
// fetch of a chunk) all succeed, and the limit holds.
func TestCacheReadsDuringFullPrefetch(t *testing.T) {
	files := map[string][]byte{"a": random(61, 9*testChunk), "b": random(62, 7*testChunk)}
	b := build(t, testChunk, reg("a", files["a"]), reg("b", files["b"]))
	const limit = 4 * testChunk
	for range 10 {
		dir := t.TempDir()
		c := openCache(t, dir, limit)
		l := mountOn(c, b)
		done := make(chan error, 1)
		go func() { done <- l.Prefetch(context.Background(), 3, testChunk) }()
		checkAll(t, l, b, files)
		if err := <-done; err != nil && !errors.Is(err, ErrCacheFull) {
			t.Fatalf("prefetch: %v", err)
		}
		if got := diskBytes(t, dir); got > limit {
			t.Fatalf("the cache holds %d bytes, limit %d", got, limit)
		}
	}
}
