package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/fetcher"
	"github.com/s3snap/s3snap/integration/faultproxy"
	"github.com/s3snap/s3snap/integration/testenv"
)

// fetchPart is the part size of the fetcher tests: the smallest allowed, so
// objects of many parts stay small.
const fetchPart = 64 << 10

// fetchData returns n deterministic pseudo-random bytes.
func fetchData(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)})
	_, _ = r.Read(b)
	return b
}

func putFetchObject(t testing.TB, c *s3.Client, bucket, key string, data []byte) string {
	t.Helper()
	out, err := c.PutObject(context.Background(), &s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(data),
	})
	if err != nil {
		t.Fatalf("put s3://%s/%s: %v", bucket, key, err)
	}
	return aws.ToString(out.ETag)
}

// testFetcher returns a fetcher with small parts and millisecond backoff.
func testFetcher(c fetcher.API, opts ...fetcher.Option) *fetcher.Fetcher {
	return fetcher.New(c, append([]fetcher.Option{
		fetcher.WithPartSize(fetchPart),
		fetcher.WithConcurrency(4),
		fetcher.WithBackoff(time.Millisecond, 20*time.Millisecond),
	}, opts...)...)
}

func readAllFetch(ctx context.Context, f *fetcher.Fetcher, obj fetcher.Object) ([]byte, error) {
	r, err := f.Reader(ctx, obj)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// faultSetup is a bucket with one object behind a fault proxy.
type faultSetup struct {
	env    *testenv.S3Env
	direct *s3.Client
	proxy  *faultproxy.Proxy
	bucket string
	key    string
	data   []byte
	obj    fetcher.Object
}

func newFaultSetup(t *testing.T, size int) *faultSetup {
	t.Helper()
	e := testenv.S3(t)
	s := &faultSetup{env: e, direct: e.Client(t), bucket: e.NewBucket(t), key: "blobs/obj", data: fetchData(uint64(size), size)}
	etag := putFetchObject(t, s.direct, s.bucket, s.key, s.data)
	p, err := faultproxy.New(e.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	s.proxy = p
	s.obj = fetcher.Object{Bucket: s.bucket, Key: s.key, Size: int64(size), ETag: etag, Digest: digest.FromBytes(s.data)}
	return s
}

// client returns a client that goes through the fault proxy. The SDK's own
// retries are off so every retry the proxy sees is the fetcher's.
func (s *faultSetup) client() *s3.Client {
	return s.env.ClientFor(s.proxy.URL(), func(o *s3.Options) { o.RetryMaxAttempts = 1 })
}

func (s *faultSetup) gets() []faultproxy.Request {
	var out []faultproxy.Request
	for _, r := range s.proxy.Requests() {
		if r.Method == http.MethodGet {
			out = append(out, r)
		}
	}
	return out
}

func TestFetcherSizes(t *testing.T) {
	e := testenv.S3(t)
	c := e.Client(t)
	bucket := e.NewBucket(t)
	f := testFetcher(c)
	ctx := context.Background()

	for _, tc := range []struct {
		name string
		size int
	}{
		{"empty", 0},
		{"one byte", 1},
		{"part minus one", fetchPart - 1},
		{"one part", fetchPart},
		{"part plus one", fetchPart + 1},
		{"n parts", 7 * fetchPart},
		{"n parts plus one", 7*fetchPart + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "sizes/" + strings.ReplaceAll(tc.name, " ", "-")
			data := fetchData(uint64(tc.size), tc.size)
			etag := putFetchObject(t, c, bucket, key, data)

			st, err := f.Stat(ctx, bucket, key)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size != int64(tc.size) || st.ETag == "" {
				t.Fatalf("stat = %+v, want size %d and an etag", st, tc.size)
			}

			for _, obj := range []fetcher.Object{
				{Bucket: bucket, Key: key, Size: -1},                                             // head first
				{Bucket: bucket, Key: key, Size: int64(tc.size)},                                 // etag pinned from first part
				{Bucket: bucket, Key: key, Size: int64(tc.size), ETag: etag},                     // If-Match from the start
				{Bucket: bucket, Key: key, Size: -1, Digest: digest.FromBytes(data)},             // verified
				{Bucket: bucket, Key: key, Size: int64(tc.size), Digest: digest.FromBytes(data)}, // verified
			} {
				got, err := readAllFetch(ctx, f, obj)
				if err != nil {
					t.Fatalf("read %+v: %v", obj, err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("read %+v: %d bytes differ from the %d put", obj, len(got), len(data))
				}
			}

			// io.Copy takes the WriteTo path.
			r, err := f.Reader(ctx, fetcher.Object{Bucket: bucket, Key: key, Size: -1, Digest: digest.FromBytes(data)})
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if _, err := io.Copy(&buf, r); err != nil {
				t.Fatal(err)
			}
			r.Close()
			if !bytes.Equal(buf.Bytes(), data) {
				t.Fatal("io.Copy bytes differ")
			}

			ra, err := f.ReaderAt(ctx, fetcher.Object{Bucket: bucket, Key: key, Size: -1})
			if err != nil {
				t.Fatal(err)
			}
			if ra.Size() != int64(tc.size) {
				t.Fatalf("ReaderAt size %d, want %d", ra.Size(), tc.size)
			}
			got, err := io.ReadAll(io.NewSectionReader(ra, 0, ra.Size()))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("ReaderAt full read: %v (equal=%v)", err, bytes.Equal(got, data))
			}
		})
	}
}

func TestFetcherReadAtBoundaries(t *testing.T) {
	e := testenv.S3(t)
	c := e.Client(t)
	bucket := e.NewBucket(t)
	const size = 5*fetchPart + 123
	data := fetchData(5, size)
	putFetchObject(t, c, bucket, "obj", data)
	ctx := context.Background()
	ra, err := testFetcher(c).ReaderAt(ctx, fetcher.Object{Bucket: bucket, Key: "obj", Size: size})
	if err != nil {
		t.Fatal(err)
	}

	type rc struct {
		name    string
		off     int64
		n       int
		wantN   int
		wantEOF bool
	}
	cases := []rc{
		{"first byte", 0, 1, 1, false},
		{"whole object", 0, size, size, false},
		{"past end", 0, size + 10, size, true},
		{"last byte", size - 1, 1, 1, false},
		{"tail past end", size - 5, 10, 5, true},
		{"at end", size, 1, 0, true},
		{"beyond end", size + 100, 1, 0, true},
		{"spans three parts", fetchPart - 10, 2*fetchPart + 20, 2*fetchPart + 20, false},
		{"unaligned many parts", 17, 4*fetchPart + 99, 4*fetchPart + 99, false},
	}
	for k := int64(1); k <= 5; k++ {
		cases = append(cases,
			rc{fmt.Sprintf("k=%d part-1", k), k*fetchPart - 1, 1, 1, false},
			rc{fmt.Sprintf("k=%d part", k), k * fetchPart, 1, 1, false},
			rc{fmt.Sprintf("k=%d across", k), k*fetchPart - 1, 2, 2, false},
			rc{fmt.Sprintf("k=%d one part from boundary", k), k*fetchPart - fetchPart/2, fetchPart,
				int(min(fetchPart, size-(k*fetchPart-fetchPart/2))), k*fetchPart+fetchPart/2 > size},
		)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := make([]byte, tc.n)
			n, err := ra.ReadAt(p, tc.off)
			if n != tc.wantN {
				t.Fatalf("ReadAt(%d bytes at %d) n = %d, want %d (err %v)", tc.n, tc.off, n, tc.wantN, err)
			}
			if tc.wantEOF != (err == io.EOF) || (!tc.wantEOF && err != nil) {
				t.Fatalf("ReadAt(%d bytes at %d) err = %v, want EOF=%v", tc.n, tc.off, err, tc.wantEOF)
			}
			if n > 0 && !bytes.Equal(p[:n], data[tc.off:tc.off+int64(n)]) {
				t.Fatalf("ReadAt(%d bytes at %d): wrong bytes", tc.n, tc.off)
			}
		})
	}

	if _, err := ra.ReadAt(make([]byte, 1), -1); err == nil {
		t.Fatal("negative offset: no error")
	}

	// Concurrent readers share the ReaderAt.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Go(func() {
			off := int64(i) * (size / 16)
			p := make([]byte, fetchPart+7)
			n, err := ra.ReadAt(p, off)
			if err != nil && err != io.EOF {
				errs <- err
				return
			}
			if !bytes.Equal(p[:n], data[off:off+int64(n)]) {
				errs <- fmt.Errorf("concurrent ReadAt at %d: wrong bytes", off)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestFetcherDigestMismatch(t *testing.T) {
	e := testenv.S3(t)
	c := e.Client(t)
	bucket := e.NewBucket(t)
	data := fetchData(7, 3*fetchPart+5)
	putFetchObject(t, c, bucket, "obj", data)
	f := testFetcher(c)
	ctx := context.Background()
	wrong := digest.FromString("something else")

	got, err := readAllFetch(ctx, f, fetcher.Object{Bucket: bucket, Key: "obj", Size: -1, Digest: wrong})
	if !errors.Is(err, fetcher.ErrDigestMismatch) {
		t.Fatalf("Read with wrong digest: err = %v, want ErrDigestMismatch", err)
	}
	if len(got) != len(data) {
		t.Fatalf("mismatch reported after %d bytes, want at the end (%d)", len(got), len(data))
	}

	r, err := f.Reader(ctx, fetcher.Object{Bucket: bucket, Key: "obj", Size: -1, Digest: wrong})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.Copy(io.Discard, r); !errors.Is(err, fetcher.ErrDigestMismatch) {
		t.Fatalf("io.Copy with wrong digest: err = %v, want ErrDigestMismatch", err)
	}
	if _, err := r.Read(make([]byte, 1)); !errors.Is(err, fetcher.ErrDigestMismatch) {
		t.Fatalf("Read after mismatch: err = %v, want it sticky", err)
	}

	if _, err := f.Reader(ctx, fetcher.Object{Bucket: bucket, Key: "obj", Size: -1, Digest: "sha256:nothex"}); err == nil {
		t.Fatal("malformed digest accepted")
	}
}

func TestFetcherNotFound(t *testing.T) {
	e := testenv.S3(t)
	c := e.Client(t)
	bucket := e.NewBucket(t)
	f := testFetcher(c)
	ctx := context.Background()

	if _, err := f.Stat(ctx, bucket, "missing"); !errors.Is(err, fetcher.ErrNotFound) {
		t.Fatalf("Stat: err = %v, want ErrNotFound", err)
	}
	if _, err := f.Reader(ctx, fetcher.Object{Bucket: bucket, Key: "missing", Size: -1}); !errors.Is(err, fetcher.ErrNotFound) {
		t.Fatalf("Reader (size unknown): err = %v, want ErrNotFound", err)
	}
	// Size given: the miss shows on the first GET.
	_, err := readAllFetch(ctx, f, fetcher.Object{Bucket: bucket, Key: "missing", Size: 10})
	if !errors.Is(err, fetcher.ErrNotFound) {
		t.Fatalf("Read (size known): err = %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), "s3://"+bucket+"/missing range 0-9") {
		t.Fatalf("error lacks context: %v", err)
	}
	ra, err := f.ReaderAt(ctx, fetcher.Object{Bucket: bucket, Key: "missing", Size: 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ra.ReadAt(make([]byte, 10), 0); !errors.Is(err, fetcher.ErrNotFound) {
		t.Fatalf("ReadAt: err = %v, want ErrNotFound", err)
	}
	if _, err := f.Stat(ctx, bucket+"-nope", "k"); !errors.Is(err, fetcher.ErrNotFound) {
		t.Fatalf("Stat in missing bucket: err = %v, want ErrNotFound", err)
	}
}

// TestFetcherClose checks Close stops GETs in flight and later reads fail.
func TestFetcherClose(t *testing.T) {
	s := newFaultSetup(t, 4*fetchPart)
	s.proxy.Add(faultproxy.Rule{Method: "GET", Key: s.key, Fault: faultproxy.Stall, Delay: 10 * time.Second})
	r, err := testFetcher(s.client()).Reader(context.Background(), s.obj)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := r.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	r.Close()
	if err := <-done; err == nil {
		t.Fatal("Read during Close succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v: GETs were not cancelled", d)
	}
	if _, err := r.Read(make([]byte, 1)); err == nil {
		t.Fatal("Read after Close succeeded")
	}
}
