package lazy

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingReaderAt counts the bytes read from a layer's data object.
type countingReaderAt struct {
	r     io.ReaderAt
	bytes atomic.Int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.bytes.Add(int64(len(p)))
	return c.r.ReadAt(p, off)
}

// Readers at once, sequential (deep readahead) and random, all get the
// file's bytes, and no chunk is fetched twice: a read waits for the fetch
// already getting its chunk.
func TestConcurrentReadsFetchOnce(t *testing.T) {
	const chunk = 4096
	big, small := random(7, 3<<20), random(8, 50000)
	b := build(t, chunk, reg("big", big), reg("small", small))
	root, err := Tree(b.toc)
	if err != nil {
		t.Fatal(err)
	}
	cache, err := NewCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	src := &countingReaderAt{r: bytes.NewReader(b.data)}
	l := NewLayer(b.toc, cache, func() (io.ReaderAt, error) { return src, nil })
	files := map[string][]byte{"big": big, "small": small}

	var wg sync.WaitGroup
	errs := make(chan string, 16)
	for k := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := []string{"big", "small"}[k%2]
			want := files[name]
			e := find(t, root, name).Entry
			got := make([]byte, len(want))
			r := rand.New(rand.NewPCG(uint64(k), 1))
			for off := 0; off < len(want); {
				n := min(len(want)-off, 1+r.IntN(3*chunk))
				at := off
				if k >= 4 { // random reads
					at = r.IntN(len(want) - n + 1)
				}
				if _, err := l.ReadFile(got[at:at+n], e.Offset+int64(at), e.Offset, e.Offset+e.Size); err != nil && err != io.EOF {
					errs <- name + ": " + err.Error()
					return
				}
				if !bytes.Equal(got[at:at+n], want[at:at+n]) {
					errs <- name + ": wrong bytes"
					return
				}
				off += n
			}
		}()
	}
	wg.Wait()
	for l.ahead.Load() > 0 { // readahead may outlive the reads
		time.Sleep(time.Millisecond)
	}
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if got := src.bytes.Load(); got > int64(len(b.data)) {
		t.Errorf("fetched %d bytes of a %d-byte data object: chunks fetched twice", got, len(b.data))
	}
}

// Background prefetch fetches nothing while a read a container waits on
// is fetching, and goes on once it is done.
func TestPrefetchYieldsToReads(t *testing.T) {
	b := build(t, 1024, reg("a", random(9, 20000)))
	cache, err := NewCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	src := &countingReaderAt{r: bytes.NewReader(b.data)}
	l := NewLayer(b.toc, cache, func() (io.ReaderAt, error) { return src, nil })

	leave := demand.enter()
	done := make(chan error, 1)
	go func() { done <- l.Prefetch(context.Background(), 2, 4096) }()
	time.Sleep(100 * time.Millisecond)
	if n := src.bytes.Load(); n != 0 {
		t.Errorf("prefetch fetched %d bytes while a read was fetching", n)
	}
	leave()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("prefetch: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("prefetch did not resume")
	}
	if l.CachedBytes() != b.toc.StreamSize() {
		t.Errorf("cached %d of %d bytes", l.CachedBytes(), b.toc.StreamSize())
	}
}
