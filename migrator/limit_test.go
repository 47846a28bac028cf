package migrator

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// zeros is an endless source.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestBandwidthFairness: two copies sharing one limit, one reading in 1 MiB
// gulps and one in 4 KiB sips, each get about half, and together the rate.
func TestBandwidthFairness(t *testing.T) {
	const rate = 4 << 20
	const run = 1500 * time.Millisecond
	bw := NewBandwidth(rate)
	ctx, cancel := context.WithTimeout(context.Background(), run)
	defer cancel()
	var got [2]atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i, bufSize := range []int{1 << 20, 4 << 10} {
		wg.Go(func() {
			r := bw.Reader(ctx, zeros{}, -1)
			buf := make([]byte, bufSize)
			for {
				n, err := r.Read(buf)
				got[i].Add(int64(n))
				if err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	a, b := got[0].Load(), got[1].Load()
	t.Logf("big reads %d bytes, small reads %d bytes in %.2fs", a, b, elapsed)
	if ratio := float64(a) / float64(b); ratio < 0.85 || ratio > 1.15 {
		t.Errorf("shares %d and %d (ratio %.2f): want within 15%% of each other", a, b, ratio)
	}
	if rateGot := float64(a+b) / elapsed; rateGot > rate*1.1 || rateGot < rate*0.9 {
		t.Errorf("together %.0f bytes/s, want %d within 10%%", rateGot, rate)
	}
}

// TestBandwidthReaderExact: a reader of a known size reads it all, pays
// only for what it reads, and passes errors and EOF on.
func TestBandwidthReaderExact(t *testing.T) {
	bw := NewBandwidth(1 << 30)
	data := bytes.Repeat([]byte("abcdefgh"), 10000)
	for _, size := range []int64{int64(len(data)), -1, 10} { // right, unknown, wrong
		b, err := io.ReadAll(bw.Reader(context.Background(), bytes.NewReader(data), size))
		if err != nil || !bytes.Equal(b, data) {
			t.Errorf("size %d: read %d bytes, %v", size, len(b), err)
		}
	}
	// The limit's small burst: a chunk at most, so a slow rate really is
	// slow from the start.
	slow := NewBandwidth(64 << 10)
	start := time.Now()
	if _, err := io.Copy(io.Discard, slow.Reader(context.Background(), bytes.NewReader(make([]byte, 96<<10)), 96<<10)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("96 KiB at 64 KiB/s took %s, want about 1s", d)
	}
	// A cancelled context ends the wait.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := NewBandwidth(1).Reader(ctx, zeros{}, -1).Read(make([]byte, 10)); err == nil {
		t.Error("read with a cancelled context: no error")
	}
}

// TestRequestRate: each host gets its own limit; no second sees more than
// the rate plus the burst.
func TestRequestRate(t *testing.T) {
	if _, err := NewRequestRate(0); err == nil {
		t.Error("NewRequestRate(0): no error")
	}
	var mu sync.Mutex
	seen := map[string][]time.Time{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.Host] = append(seen[r.Host], time.Now())
		mu.Unlock()
	}))
	defer srv.Close()
	rr, err := NewRequestRate(20)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: rr.Transport(nil)}
	// Two names for one server: two hosts to the limiter.
	u, _ := url.Parse(srv.URL)
	hosts := []string{srv.URL, "http://localhost:" + u.Port()}
	var wg sync.WaitGroup
	for range 8 {
		for _, h := range hosts {
			wg.Go(func() {
				for range 5 {
					resp, err := client.Get(h)
					if err != nil {
						t.Error(err)
						return
					}
					resp.Body.Close()
				}
			})
		}
	}
	wg.Wait()
	for host, ts := range seen {
		sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
		if len(ts) != 40 {
			t.Errorf("%s: %d requests, want 40", host, len(ts))
		}
		if d := ts[len(ts)-1].Sub(ts[0]); d < 1800*time.Millisecond {
			t.Errorf("%s: 40 requests at 20/s took %s, want about 2s", host, d)
		}
		if w := maxInWindow(ts, time.Second); w > 20+rr.Burst() {
			t.Errorf("%s: %d requests in one second, limit 20 + burst %d", host, w, rr.Burst())
		}
	}
}

// maxInWindow is the most timestamps (sorted) within any window of d.
func maxInWindow(ts []time.Time, d time.Duration) int {
	best, j := 0, 0
	for i := range ts {
		for ts[i].Sub(ts[j]) >= d {
			j++
		}
		best = max(best, i-j+1)
	}
	return best
}
