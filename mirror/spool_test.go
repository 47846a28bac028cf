package mirror_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/fetcher"
	"github.com/s3snap/s3snap/integration/faultproxy"
	"github.com/s3snap/s3snap/internal/storetest"
	"github.com/s3snap/s3snap/mirror"
	"github.com/s3snap/s3snap/store"
)

// bounded is a mirror reading a bucket through a fault proxy, with blobs
// of known sizes in the bucket.
type bounded struct {
	proxy *faultproxy.Proxy
	srv   *httptest.Server
	spool string
	blobs [][]byte
}

// newBounded puts blobs of the given sizes into a bucket and serves them
// through a mirror with opts, whose S3 traffic goes through a fault proxy.
func newBounded(t *testing.T, sizes []int, opts ...mirror.Option) *bounded {
	t.Helper()
	e := storetest.S3(t)
	bucket := e.NewBucket(t)
	ctx := context.Background()
	direct := store.New(e.Client(t), bucket, store.WithPrefix("bounded"))
	b := &bounded{spool: t.TempDir()}
	for _, n := range sizes {
		data := make([]byte, n)
		_, _ = rand.Read(data)
		if _, err := direct.PutBlob(ctx, digest.FromBytes(data), int64(n), bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		b.blobs = append(b.blobs, data)
	}
	p, err := faultproxy.New(e.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	b.proxy = p
	c := e.ClientFor(p.URL())
	st := store.New(c, bucket, store.WithPrefix("bounded"),
		store.WithFetcher(fetcher.New(c, fetcher.WithPartSize(256<<10), fetcher.WithConcurrency(2))))
	m, err := mirror.New(func(string) []*store.Store { return []*store.Store{st} },
		append([]mirror.Option{mirror.WithSpool(b.spool, time.Hour)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	b.srv = httptest.NewServer(m)
	t.Cleanup(b.srv.Close)
	return b
}

func (b *bounded) url(i int) string {
	return b.srv.URL + "/v2/team/app/blobs/" + digest.FromBytes(b.blobs[i]).String() + "?ns=" + upstream
}

// get fetches blob i and returns the status and body.
func (b *bounded) get(ctx context.Context, t *testing.T, i int) (int, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.url(i), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// dataGETs counts the GETs of blob data objects the proxy saw, by key.
func (b *bounded) dataGETs() map[string]int {
	n := map[string]int{}
	for _, r := range b.proxy.Requests() {
		if r.Method == http.MethodGet && isBlobData(r.Path) {
			n[r.Path]++
		}
	}
	return n
}

func isBlobData(path string) bool {
	return strings.Contains(path, "/blobs/sha256/") && strings.HasSuffix(path, "/data")
}

// spoolBytes is what the spool directory holds on disk.
func spoolBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// TestSpoolLimit: with a 3 MiB spool, six 1 MiB blobs are each served
// whole and verified while the spool never holds more than 3 MiB; a 4 MiB
// blob is refused with a 503 without a byte of it read from S3.
func TestSpoolLimit(t *testing.T) {
	const limit = 3 << 20
	sizes := []int{1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20, 4 << 20}
	b := newBounded(t, sizes, mirror.WithSpoolLimit(limit))
	ctx := context.Background()
	for i := range 6 {
		code, body, err := b.get(ctx, t, i)
		if err != nil || code != http.StatusOK || !bytes.Equal(body, b.blobs[i]) {
			t.Fatalf("blob %d: %d, %d bytes, %v", i, code, len(body), err)
		}
		if n := spoolBytes(t, b.spool); n > limit {
			t.Errorf("after blob %d the spool holds %d bytes, limit %d", i, n, limit)
		}
	}
	// The most recent copies are still served from the spool.
	before := len(b.proxy.Requests())
	if code, body, _ := b.get(ctx, t, 5); code != http.StatusOK || !bytes.Equal(body, b.blobs[5]) {
		t.Errorf("blob 5 again: %d", code)
	}
	if n := len(b.proxy.Requests()); n != before {
		t.Errorf("blob 5 again made %d S3 requests, want 0 (it should still be spooled)", n-before)
	}

	code, body, err := b.get(ctx, t, 6)
	if err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("blob larger than the spool: %d (%d bytes) %v, want 503", code, len(body), err)
	} else if c := errorCode(t, body); c != "UNAVAILABLE" {
		t.Errorf("blob larger than the spool: error code %s, want UNAVAILABLE", c)
	}
	big := digest.FromBytes(b.blobs[6]).Encoded()
	for key := range b.dataGETs() {
		if strings.Contains(key, big) {
			t.Errorf("the mirror read the data of a blob it could not spool: GET %s", key)
		}
	}
	if n := spoolBytes(t, b.spool); n > limit {
		t.Errorf("spool holds %d bytes, limit %d", n, limit)
	}
}

// TestSpoolFetchCancelled: a fetch stops reading S3 once every client
// waiting for it has gone, and goes on while one still waits.
func TestSpoolFetchCancelled(t *testing.T) {
	const size = 8 << 20 // 32 parts of 256 KiB, two at a time
	b := newBounded(t, []int{size, size})
	// Every part takes 300ms: the whole blob about 5s.
	b.proxy.Add(faultproxy.Rule{Method: http.MethodGet, Match: func(r *http.Request) bool { return isBlobData(r.URL.Path) },
		Fault: faultproxy.Stall, Delay: 300 * time.Millisecond})

	t.Run("last client gone", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
		defer cancel()
		if _, _, err := b.get(ctx, t, 0); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("client with a 700ms deadline: %v", err)
		}
		time.Sleep(time.Second) // parts already asked for finish
		key := ""
		for k := range b.dataGETs() {
			key = k
		}
		n := b.dataGETs()[key]
		time.Sleep(2 * time.Second)
		if m := b.dataGETs()[key]; m != n || n > 16 {
			t.Errorf("S3 GETs of the blob: %d a second after the client left, %d two seconds later; want few (of 32) and no more", n, m)
		}
		if left := spoolBytes(t, b.spool); left != 0 {
			t.Errorf("the cancelled fetch left %d bytes in the spool", left)
		}
	})

	t.Run("one of two clients gone", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
		defer cancel()
		var wg sync.WaitGroup
		var code int
		var body []byte
		wg.Go(func() { code, body, _ = b.get(context.Background(), t, 1) })
		time.Sleep(100 * time.Millisecond)
		if _, _, err := b.get(ctx, t, 1); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("client with a 700ms deadline: %v", err)
		}
		wg.Wait()
		if code != http.StatusOK || !bytes.Equal(body, b.blobs[1]) {
			t.Errorf("the client that stayed got %d, %d bytes", code, len(body))
		}
	})
}

// TestSpoolConcurrentFetches: with max 2 fetches, five clients asking for
// five blobs at once make S3 reads of two blobs at a time; all five are
// served.
func TestSpoolConcurrentFetches(t *testing.T) {
	sizes := []int{64 << 10, 64 << 10, 64 << 10, 64 << 10, 64 << 10}
	b := newBounded(t, sizes, mirror.WithMaxFetches(2))
	b.proxy.Add(faultproxy.Rule{Method: http.MethodGet, Match: func(r *http.Request) bool { return isBlobData(r.URL.Path) },
		Fault: faultproxy.Stall, Delay: 2 * time.Second})
	var wg sync.WaitGroup
	codes := make([]int, len(sizes))
	for i := range sizes {
		wg.Go(func() {
			var body []byte
			codes[i], body, _ = b.get(context.Background(), t, i)
			if !bytes.Equal(body, b.blobs[i]) {
				codes[i] = -1
			}
		})
	}
	// Each read stalls 2 s: wait (on a slow machine too) until the first
	// ones have started, then no more than the limit may be under way.
	for deadline := time.Now().Add(1500 * time.Millisecond); len(b.dataGETs()) < 2 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if n := len(b.dataGETs()); n != 2 {
		t.Errorf("blobs being read from S3 at once: %d, want 2", n)
	}
	wg.Wait()
	for i, c := range codes {
		if c != http.StatusOK {
			t.Errorf("blob %d: %d", i, c)
		}
	}
	if n := len(b.dataGETs()); n != len(sizes) {
		t.Errorf("blobs read from S3: %d, want %d", n, len(sizes))
	}
}
