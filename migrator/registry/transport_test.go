package registry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

type fakeRefresher struct{ n atomic.Int32 }

func (f *fakeRefresher) Refresh(_ context.Context, refused string) (string, error) {
	f.n.Add(1)
	return "Basic fresh", nil
}

func TestRetryTransport(t *testing.T) {
	fast := RetryPolicy{Attempts: 4, Base: time.Millisecond, Max: 2 * time.Second}
	for _, tc := range []struct {
		name     string
		replies  []int // status per attempt; 0: reset the connection
		header   string
		body     string
		want     int
		attempts int
		refresh  int32
		minWait  time.Duration
	}{
		{name: "ok", replies: []int{200}, want: 200, attempts: 1},
		{name: "429 with Retry-After", replies: []int{429, 200}, want: 200, attempts: 2, minWait: time.Second},
		{name: "503s", replies: []int{503, 502, 200}, want: 200, attempts: 3},
		{name: "gives up", replies: []int{503, 503, 503, 503, 503}, want: 503, attempts: 4},
		{name: "reset", replies: []int{0, 200}, want: 200, attempts: 2},
		{name: "401 renews once", replies: []int{401, 200}, header: "Basic old", want: 200, attempts: 2, refresh: 1},
		{name: "401 twice is an answer", replies: []int{401, 401}, header: "Basic old", want: 401, attempts: 2, refresh: 1},
		{name: "401 without credentials is a challenge", replies: []int{401}, want: 401, attempts: 1},
		{name: "404 is an answer", replies: []int{404}, want: 404, attempts: 1},
		{name: "replays the body", replies: []int{503, 200}, body: "payload", want: 200, attempts: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n atomic.Int32
			var auths []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				i := int(n.Add(1)) - 1
				auths = append(auths, r.Header.Get("Authorization"))
				if b, _ := io.ReadAll(r.Body); string(b) != tc.body {
					t.Errorf("attempt %d: body %q", i, b)
				}
				code := tc.replies[min(i, len(tc.replies)-1)]
				if code == 0 {
					c, _, _ := http.NewResponseController(w).Hijack()
					c.Close()
					return
				}
				if code == 429 {
					w.Header().Set("Retry-After", "1")
				}
				w.WriteHeader(code)
			}))
			defer srv.Close()
			ref := &fakeRefresher{}
			rt := &retryTransport{inner: http.DefaultTransport, policy: fast, refresh: ref}
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req, _ := http.NewRequest(http.MethodPost, srv.URL, body)
			if tc.header != "" {
				req.Header.Set("Authorization", tc.header)
			}
			start := time.Now()
			resp, err := rt.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want || int(n.Load()) != tc.attempts || ref.n.Load() != tc.refresh {
				t.Errorf("status %d after %d attempts, %d refreshes; want %d, %d, %d", resp.StatusCode, n.Load(), ref.n.Load(), tc.want, tc.attempts, tc.refresh)
			}
			if time.Since(start) < tc.minWait {
				t.Errorf("took %s, want at least %s", time.Since(start), tc.minWait)
			}
			if tc.refresh > 0 && auths[1] != "Basic fresh" {
				t.Errorf("replay carried %q", auths[1])
			}
		})
	}
}
