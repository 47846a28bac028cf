package retry

import (
	"errors"
	"net/http"
	"testing"
	"time"
)

func TestRetryAfter(t *testing.T) {
	now := time.Date(2015, 10, 21, 7, 28, 0, 0, time.UTC)
	for _, tc := range []struct {
		header string
		want   time.Duration
		ok     bool
	}{
		{"", 0, false},
		{"3", 3 * time.Second, true},
		{"0", 0, true},
		{"-1", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
		{"99999999999", 0, false}, // overflows 32 bits: malformed, not forever
		{"Wed, 21 Oct 2015 07:28:30 GMT", 30 * time.Second, true},
		{"Wednesday, 21-Oct-15 07:29:00 GMT", time.Minute, true}, // RFC 850
		{"Wed Oct 21 07:28:10 2015", 10 * time.Second, true},     // asctime
		{"Wed, 21 Oct 2015 07:27:00 GMT", 0, true},               // past: now
	} {
		h := http.Header{}
		if tc.header != "" {
			h.Set("Retry-After", tc.header)
		}
		got, ok := RetryAfter(h, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("RetryAfter(%q) = %v, %v; want %v, %v", tc.header, got, ok, tc.want, tc.ok)
		}
	}
	if _, ok := RetryAfter(nil, now); ok {
		t.Error("RetryAfter(nil) reported a wait")
	}
}

func TestBackoff(t *testing.T) {
	p := Policy{Base: 100 * time.Millisecond, Max: 2 * time.Second}
	for _, tc := range []struct {
		n    int
		slow bool
		r    float64
		want time.Duration
	}{
		{1, false, 0, 50 * time.Millisecond},
		{1, false, 0.999999, 100 * time.Millisecond},
		{2, false, 0, 100 * time.Millisecond},
		{3, false, 0.5, 300 * time.Millisecond},
		{5, false, 0, 800 * time.Millisecond}, // 1.6s, half fixed
		{6, false, 0, time.Second},            // 3.2s capped to 2s, half fixed
		{50, false, 0, time.Second},           // no overflow
		{1, true, 0, 200 * time.Millisecond},
		{2, true, 0, 400 * time.Millisecond},
		{4, true, 0, time.Second},
		{0, false, 0, 50 * time.Millisecond},
	} {
		got := p.Backoff(tc.n, tc.slow, tc.r)
		// Compare to the millisecond: jitter arithmetic rounds.
		if got.Round(time.Millisecond) != tc.want {
			t.Errorf("Backoff(%d, slow=%v, r=%v) = %v, want %v", tc.n, tc.slow, tc.r, got, tc.want)
		}
	}
	// Jitter stays within [d/2, d].
	for i := 0; i < 1000; i++ {
		r := float64(i) / 1000
		if d := p.Backoff(3, false, r); d < 200*time.Millisecond || d > 400*time.Millisecond {
			t.Fatalf("Backoff(3, r=%v) = %v, outside [200ms, 400ms]", r, d)
		}
	}
}

func TestDelay(t *testing.T) {
	p := Policy{Base: time.Millisecond, Max: 2 * time.Second}
	for _, tc := range []struct {
		name     string
		header   string
		v        Verdict
		min, max time.Duration
	}{
		{"backoff", "", Retry, 500 * time.Microsecond, time.Millisecond},
		{"slow backoff", "", Slow, 2 * time.Millisecond, 4 * time.Millisecond},
		{"retry-after floor", "1", Slow, time.Second, time.Second},
		{"retry-after capped", "3600", Slow, 2 * time.Second, 2 * time.Second},
		{"malformed retry-after", "later", Retry, 500 * time.Microsecond, time.Millisecond},
	} {
		h := http.Header{}
		if tc.header != "" {
			h.Set("Retry-After", tc.header)
		}
		if d := p.Delay(1, tc.v, h); d < tc.min || d > tc.max {
			t.Errorf("%s: Delay = %v, want within [%v, %v]", tc.name, d, tc.min, tc.max)
		}
	}
}

func TestStatus(t *testing.T) {
	for code, want := range map[int]Verdict{
		200: Fatal, 400: Fatal, 401: Fatal, 403: Fatal, 404: Fatal, 412: Fatal, 416: Fatal,
		408: Retry, 500: Retry, 502: Retry, 504: Retry,
		429: Slow, 503: Slow,
	} {
		if got := Status(code); got != want {
			t.Errorf("Status(%d) = %v, want %v", code, got, want)
		}
	}
}

func TestCheckContentRange(t *testing.T) {
	for _, tc := range []struct {
		name           string
		cr             string
		off, end, size int64
		want           error
	}{
		{"exact", "bytes 10-19/100", 10, 19, 100, nil},
		{"size unknown", "bytes 10-19/100", 10, 19, -1, nil},
		{"total unknown", "bytes 10-19/*", 10, 19, 100, nil},
		{"open-ended to the end", "bytes 10-99/100", 10, -1, 100, nil},
		{"open-ended, size from total", "bytes 10-99/100", 10, -1, -1, nil},
		{"open-ended stops short", "bytes 10-49/100", 10, -1, 100, ErrBadRange},
		{"other start", "bytes 0-19/100", 10, 19, 100, ErrBadRange},
		{"resume from zero", "bytes 0-99/100", 10, -1, 100, ErrBadRange},
		{"other end", "bytes 10-20/100", 10, 19, 100, ErrBadRange},
		{"missing", "", 10, 19, 100, ErrBadRange},
		{"malformed", "bytes ten", 10, 19, 100, ErrBadRange},
		{"no unit", "10-19/100", 10, 19, 100, ErrBadRange},
		{"items unit", "items 10-19/100", 10, 19, 100, ErrBadRange},
		{"last before first", "bytes 19-10/100", 10, 19, 100, ErrBadRange},
		{"total too small", "bytes 10-19/19", 10, 19, -1, ErrBadRange},
		{"negative", "bytes -10-19/100", 10, 19, 100, ErrBadRange},
		{"size changed", "bytes 10-19/200", 10, 19, 100, ErrSizeChanged},
	} {
		err := CheckContentRange(tc.cr, tc.off, tc.end, tc.size)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: CheckContentRange(%q, %d, %d, %d) = %v, want %v", tc.name, tc.cr, tc.off, tc.end, tc.size, err, tc.want)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	for _, tc := range []struct {
		in                 string
		first, last, total int64
		ok                 bool
	}{
		{"bytes 0-99/1000", 0, 99, 1000, true},
		{"bytes 999-999/1000", 999, 999, 1000, true},
		{"bytes 5-9/*", 5, 9, -1, true},
		{"bytes 0-0/1", 0, 0, 1, true},
		{"bytes 0-1000/1000", 0, 0, 0, false}, // last beyond total
		{"bytes 9-5/10", 0, 0, 0, false},
		{"bytes -5/10", 0, 0, 0, false},
		{"bytes */1000", 0, 0, 0, false},
		{"items 0-1/2", 0, 0, 0, false},
		{"bytes 0-1", 0, 0, 0, false},
		{"", 0, 0, 0, false},
	} {
		first, last, total, err := ParseContentRange(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseContentRange(%q) error = %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && (first != tc.first || last != tc.last || total != tc.total) {
			t.Errorf("ParseContentRange(%q) = %d, %d, %d; want %d, %d, %d",
				tc.in, first, last, total, tc.first, tc.last, tc.total)
		}
	}
}
