package integration

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/integration/faultproxy"
	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/store"
)

// breakerSetup is a store reading a real S3 server through a fault proxy,
// with a short breaker cooldown, and a blob in its bucket.
type breakerSetup struct {
	proxy *faultproxy.Proxy
	st    *store.Store
	blob  digest.Digest
	data  []byte
}

const testCooldown = 2 * time.Second

func newBreakerSetup(t *testing.T) *breakerSetup {
	t.Helper()
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	data := pseudoRandom(7, 3<<20)
	d := digest.FromBytes(data)
	if _, err := store.New(e.Client(t), bucket).PutBlob(context.Background(), d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	proxy, err := faultproxy.New(e.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	st := store.New(e.ClientFor(proxy.URL()), bucket, store.WithBreaker(store.DefaultBreakerThreshold, testCooldown))
	return &breakerSetup{proxy: proxy, st: st, blob: d, data: data}
}

// hasBlob times one HasBlob and counts the requests it sent.
func (s *breakerSetup) hasBlob(t *testing.T) (time.Duration, int, error) {
	t.Helper()
	n := s.proxy.Count()
	start := time.Now()
	ok, err := s.st.HasBlob(context.Background(), s.blob)
	took := time.Since(start)
	if err == nil && !ok {
		t.Fatal("HasBlob: the blob is not there")
	}
	return took, s.proxy.Count() - n, err
}

// TestStoreBreaker: with S3 unavailable (stopped, resetting connections,
// answering 500 or 403) the store's first requests fail after their
// retries, then its circuit breaker opens and every request fails at once
// with ErrUnavailable, without reaching S3. Once S3 is back and the
// cooldown is over, one probe goes through and requests work again.
func TestStoreBreaker(t *testing.T) {
	for _, tc := range []struct {
		name    string
		down    func(p *faultproxy.Proxy)
		counted bool // the proxy sees the failing requests
		retried bool // the SDK retries them
	}{
		{"stopped", func(p *faultproxy.Proxy) { p.Down() }, false, true},
		{"connections reset", func(p *faultproxy.Proxy) { p.Add(faultproxy.Rule{Fault: faultproxy.Reset, After: -1}) }, true, true},
		{"500", func(p *faultproxy.Proxy) {
			p.Add(faultproxy.Rule{Fault: faultproxy.Status, Status: http.StatusInternalServerError, Code: "InternalError"})
		}, true, true},
		{"403", func(p *faultproxy.Proxy) {
			p.Add(faultproxy.Rule{Fault: faultproxy.Status, Status: http.StatusForbidden, Code: "AccessDenied"})
		}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newBreakerSetup(t)
			if _, _, err := s.hasBlob(t); err != nil {
				t.Fatalf("S3 up: %v", err)
			}
			tc.down(s.proxy)

			// The first request fails on its own; so do the next until
			// the breaker has seen enough.
			took, sent, err := s.hasBlob(t)
			if err == nil || errors.Is(err, store.ErrUnavailable) {
				t.Fatalf("first request with S3 down: %v, want S3's own failure", err)
			}
			t.Logf("first request failed after %v, %d requests: %v", took.Round(time.Millisecond), sent, err)
			if tc.counted && tc.retried && sent < 2 {
				t.Errorf("the first request made %d attempts, want retries", sent)
			}
			failures := 1
			for ; failures < store.DefaultBreakerThreshold+1; failures++ {
				_, sent, err = s.hasBlob(t)
				if errors.Is(err, store.ErrUnavailable) {
					break
				}
				if err == nil {
					t.Fatal("HasBlob succeeded with S3 down")
				}
				// Tripping: no more retries.
				if tc.counted && sent != 1 {
					t.Errorf("request %d while tripping sent %d requests, want 1", failures+1, sent)
				}
			}
			if failures != store.DefaultBreakerThreshold {
				t.Fatalf("the breaker opened after %d failures, want %d", failures, store.DefaultBreakerThreshold)
			}
			opened := time.Now()
			for i := range 5 {
				took, sent, err = s.hasBlob(t)
				if !errors.Is(err, store.ErrUnavailable) {
					t.Fatalf("request %d with the breaker open: %v, want ErrUnavailable", i, err)
				}
				if took > 50*time.Millisecond || sent != 0 {
					t.Errorf("refused request took %v and sent %d requests, want < 50ms and none", took, sent)
				}
			}
			if !strings.Contains(err.Error(), s.st.URL()) {
				t.Errorf("refusal %q does not name the store", err)
			}
			// Reads are refused too, before any request.
			if _, _, err := s.st.OpenBlob(context.Background(), s.blob); !errors.Is(err, store.ErrUnavailable) {
				t.Errorf("OpenBlob with the breaker open: %v", err)
			}

			// S3 back.
			s.proxy.Reset()
			if err := s.proxy.Up(); err != nil {
				t.Fatal(err)
			}
			if _, _, err := s.hasBlob(t); !errors.Is(err, store.ErrUnavailable) {
				t.Fatalf("S3 back, within the cooldown: %v, want still ErrUnavailable", err)
			}
			time.Sleep(time.Until(opened.Add(testCooldown)))
			if _, sent, err := s.hasBlob(t); err != nil || sent != 1 {
				t.Fatalf("probe after the cooldown: %v (%d requests), want one request that succeeds", err, sent)
			}
			got := readBlob(t, s.st, s.blob)
			if !bytes.Equal(got, s.data) {
				t.Fatal("read after S3 came back differs")
			}
		})
	}
}

func readBlob(t *testing.T, st *store.Store, d digest.Digest) []byte {
	t.Helper()
	rc, _, err := st.OpenBlob(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStoreBreakerStopsRequestsInFlight: requests already waiting on S3
// (a stalled HEAD, a blob read whose ranges stall) end at once with
// ErrUnavailable when other requests open the breaker, instead of waiting
// out their own timeouts and retries.
func TestStoreBreakerStopsRequestsInFlight(t *testing.T) {
	s := newBreakerSetup(t)
	ctx := context.Background()
	rc, _, err := s.st.OpenBlob(ctx, s.blob) // its HEAD goes through now
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	// Everything for the blob stalls; everything else is refused.
	blobKey := "/" + s.blob.Encoded() + "/data"
	isBlob := func(r *http.Request) bool { return strings.HasSuffix(r.URL.Path, blobKey) }
	s.proxy.Add(faultproxy.Rule{Match: isBlob, Fault: faultproxy.Stall, Delay: time.Minute})
	s.proxy.Add(faultproxy.Rule{Match: func(r *http.Request) bool { return !isBlob(r) }, Fault: faultproxy.Reset, After: -1})

	type result struct {
		err  error
		took time.Duration
	}
	head, read := make(chan result, 1), make(chan result, 1)
	start := time.Now()
	go func() {
		_, err := s.st.HasBlob(ctx, s.blob)
		head <- result{err, time.Since(start)}
	}()
	go func() {
		_, err := io.Copy(io.Discard, rc)
		read <- result{err, time.Since(start)}
	}()
	time.Sleep(300 * time.Millisecond) // both are waiting on S3

	// Other requests fail until the breaker opens.
	other := digest.FromString("not there")
	for i := 0; i < store.DefaultBreakerThreshold; i++ {
		if _, err := s.st.HasBlob(ctx, other); err == nil {
			t.Fatal("HasBlob succeeded through resets")
		}
	}
	for name, ch := range map[string]chan result{"stalled HEAD": head, "stalled read": read} {
		select {
		case r := <-ch:
			if !errors.Is(r.err, store.ErrUnavailable) {
				t.Errorf("%s ended with %v, want ErrUnavailable", name, r.err)
			}
			t.Logf("%s ended after %v: %v", name, r.took.Round(time.Millisecond), r.err)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s still waiting 10s after the breaker opened", name)
		}
	}
}
