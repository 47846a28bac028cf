// Package retry is s3snap's one retry policy, shared by the fetcher (ranged
// GETs from S3) and the migrator's registry client: which failures are worth
// another attempt (5xx, 429 and throttling, connection resets and other
// transport faults), how long to wait (exponential backoff with equal
// jitter, longer when throttled, a server's Retry-After in seconds or as an
// HTTP date honoured up to the cap), and how a resumed read checks that the
// server answered exactly the bytes asked (a strict Content-Range check).
//
// It decides and waits; the callers own the loops, because what an attempt
// is (one ranged GET, one HTTP round trip, one resumed body) differs.
package retry

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"
)

// Verdict says whether a failed attempt is worth another one.
type Verdict int

const (
	Fatal Verdict = iota // give up now: retrying cannot help
	Retry                // transient: retry after the normal backoff
	Slow                 // throttled: retry after a longer backoff
)

func (v Verdict) String() string {
	switch v {
	case Retry:
		return "retry"
	case Slow:
		return "retry-slow"
	default:
		return "fatal"
	}
}

// Status classifies an HTTP status code. 429 and 503 ask the client to slow
// down; 408, 500, 502 and 504 are transient; any other status is an answer
// that will not change on retry (403, 404, 412, 416...).
func Status(code int) Verdict {
	switch code {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		return Slow
	case http.StatusRequestTimeout, http.StatusInternalServerError,
		http.StatusBadGateway, http.StatusGatewayTimeout:
		return Retry
	}
	return Fatal
}

// Transient reports whether err, from a request that got no HTTP response
// or whose body broke, is a network fault worth another try: a reset,
// refused or aborted connection, a broken pipe, a body that ended early, a
// timeout or other net.Error. Cancellation never is.
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ne net.Error
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.As(err, &ne)
}

// Policy says how often and how long a request is retried.
type Policy struct {
	// Attempts is the most tries of one request, the first included (at
	// least 1).
	Attempts int
	// Base is the first backoff; it doubles per attempt, with jitter, up
	// to Max. Throttled attempts start four times higher. A Retry-After
	// longer than the backoff is honoured, capped at Max.
	Base, Max time.Duration
}

// Tries is p.Attempts, at least 1.
func (p Policy) Tries() int { return max(p.Attempts, 1) }

// Backoff returns the delay before retry number n (1 for the first retry):
// exponential from p.Base, four times longer when slow, capped at p.Max,
// with "equal jitter" (half fixed, half random from r in [0,1)) so that
// many requests failing together do not come back together, yet none
// retries at once.
func (p Policy) Backoff(n int, slow bool, r float64) time.Duration {
	n = max(n, 1)
	maxDelay := max(p.Max, p.Base)
	d := p.Base
	if slow {
		d *= 4
	}
	for i := 1; i < n && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	half := d / 2
	return half + time.Duration(r*float64(d-half))
}

// Delay returns the wait before retry number n after an attempt judged v,
// whose response (nil if none) may carry a Retry-After: the jittered
// backoff, or the server's Retry-After if longer, never above p.Max.
func (p Policy) Delay(n int, v Verdict, resp http.Header) time.Duration {
	d := p.Backoff(n, v == Slow, rand.Float64())
	if ra, ok := RetryAfter(resp, time.Now()); ok {
		d = max(d, min(ra, max(p.Max, p.Base)))
	}
	return d
}

// RetryAfter returns the wait a Retry-After header in h asks for, in
// delay-seconds or as an HTTP date (relative to now; a past date is zero).
// ok is false without a header or with a malformed one.
func RetryAfter(h http.Header, now time.Time) (d time.Duration, ok bool) {
	v := h.Get("Retry-After")
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 32); err == nil {
		if secs < 0 {
			return 0, false
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// Sleep waits d or until ctx is done, returning ctx's cause then.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
