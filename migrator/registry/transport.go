package registry

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/containerd/log"

	"github.com/s3snap/s3snap/internal/retry"
)

// Refresher is a credential that can be renewed, such as an ECR token.
type Refresher interface {
	// Refresh returns the Authorization header value of a fresh
	// credential, given the one the server refused: if the credential
	// was already renewed since, the new one; else a newly issued one.
	Refresh(ctx context.Context, refused string) (string, error)
}

// RetryPolicy says how often and how long registry requests are retried:
// the shared policy of internal/retry.
type RetryPolicy = retry.Policy

// DefaultRetry retries a request up to 6 times over about a minute.
var DefaultRetry = RetryPolicy{Attempts: 6, Base: 500 * time.Millisecond, Max: 30 * time.Second}

// retryTransport retries registry requests that failed for a reason worth
// retrying under the shared policy (internal/retry): 429 (waiting at least
// as long as Retry-After says, up to the cap), 5xx, connection resets; and,
// when the registry's credential expires (a 401 to a request that carried
// one), renews it once and replays the request. Only requests
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
		last := attempt+1 >= t.policy.Tries() || !replayable
		var wait time.Duration
		switch {
		case err != nil:
			if last || !retry.Transient(err) || ctx.Err() != nil {
				return nil, err
			}
			wait = t.policy.Delay(attempt+1, retry.Retry, nil)
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
		case retry.Status(resp.StatusCode) != retry.Fatal && !last:
			wait = t.policy.Delay(attempt+1, retry.Status(resp.StatusCode), resp.Header)
			log.G(ctx).WithFields(log.Fields{"url": redactURL(req), "status": resp.StatusCode, "wait": wait}).Info("registry busy; retrying")
			discard(resp)
		default:
			return resp, err
		}
		if err := retry.Sleep(ctx, wait); err != nil {
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
