package migrator

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

	"github.com/containerd/log"
)

// Refresher is a credential that can be renewed, such as an ECR token.
type Refresher interface {
	// Refresh returns the Authorization header value of a fresh
	// credential, given the one the server refused: if the credential
	// was already renewed since, the new one; else a newly issued one.
	Refresh(ctx context.Context, refused string) (string, error)
}

// RetryPolicy says how often and how long registry requests are retried.
type RetryPolicy struct {
	// Attempts is the most tries of one request (at least 1).
	Attempts int
	// Base is the first backoff; it doubles per attempt, with jitter, up
	// to Max. A Retry-After header overrides it (capped at Max).
	Base, Max time.Duration
}

// DefaultRetry retries a request up to 6 times over about a minute.
var DefaultRetry = RetryPolicy{Attempts: 6, Base: 500 * time.Millisecond, Max: 30 * time.Second}

func (p RetryPolicy) backoff(attempt int) time.Duration {
	d := p.Base << min(attempt, 16)
	if d > p.Max || d <= 0 {
		d = p.Max
	}
	return d/2 + rand.N(d/2+1)
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// retryTransport retries registry requests that failed for a reason worth
// retrying: 429 (waiting as long as Retry-After says), 5xx, connection
// resets; and, when the registry's credential expires (a 401 to a request
// that carried one), renews it once and replays the request. Only requests
// whose body can be replayed (none, or GetBody set) are retried.
type retryTransport struct {
	inner   http.RoundTripper
	policy  RetryPolicy
	refresh Refresher // nil: credentials do not expire
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	refreshed := false
	cur := req
	for attempt := 0; ; attempt++ {
		resp, err := t.inner.RoundTrip(cur)
		last := attempt+1 >= max(t.policy.Attempts, 1) || !replayable
		var wait time.Duration
		switch {
		case err != nil:
			if last || !retryableErr(err) || ctx.Err() != nil {
				return nil, err
			}
			wait = t.policy.backoff(attempt)
			log.G(ctx).WithError(err).WithField("url", redactURL(req)).Debug("registry request failed; retrying")
		case resp.StatusCode == http.StatusUnauthorized && t.refresh != nil && cur.Header.Get("Authorization") != "" && !refreshed && replayable:
			// The credential expired (or was revoked): renew and replay.
			refreshed = true
			attempt-- // not a failure of the server
			discard(resp)
			hdr, rerr := t.refresh.Refresh(ctx, cur.Header.Get("Authorization"))
			if rerr != nil {
				return nil, rerr
			}
			log.G(ctx).WithField("url", redactURL(req)).Info("registry credential refreshed after 401; replaying")
			next, rerr := replay(req)
			if rerr != nil {
				return nil, rerr
			}
			next.Header.Set("Authorization", hdr)
			cur = next
			continue
		case retryableStatus(resp.StatusCode) && !last:
			wait = retryAfter(resp, t.policy.Max)
			if wait < 0 {
				wait = t.policy.backoff(attempt)
			}
			log.G(ctx).WithFields(log.Fields{"url": redactURL(req), "status": resp.StatusCode, "wait": wait}).Info("registry busy; retrying")
			discard(resp)
		default:
			return resp, err
		}
		if err := sleep(ctx, wait); err != nil {
			return nil, err
		}
		next, rerr := replay(cur)
		if rerr != nil {
			return nil, rerr
		}
		cur = next
	}
}

// replay clones req with a fresh body.
func replay(req *http.Request) (*http.Request, error) {
	next := req.Clone(req.Context())
	if req.GetBody != nil {
		b, err := req.GetBody()
		if err != nil {
			return nil, err
		}
		next.Body = b
	}
	return next, nil
}

func discard(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

func redactURL(req *http.Request) string {
	u := *req.URL
	u.RawQuery = "" // presigned URLs carry credentials in the query
	return u.String()
}

func retryableStatus(code int) bool {
	switch code {
	case http.StatusTooManyRequests, http.StatusRequestTimeout, http.StatusInternalServerError,
		http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// retryAfter returns the wait a Retry-After header asks for (seconds or an
// HTTP date), capped at maxWait, or -1 without one.
func retryAfter(resp *http.Response, maxWait time.Duration) time.Duration {
	v := resp.Header.Get("Retry-After")
	if v == "" {
		return -1
	}
	var d time.Duration
	if s, err := strconv.Atoi(v); err == nil {
		d = time.Duration(s) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = time.Until(t)
	} else {
		return -1
	}
	return min(max(d, 0), maxWait)
}

// retryableErr reports whether a transport error is a network fault worth
// another try.
func retryableErr(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ne net.Error
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.As(err, &ne)
}
