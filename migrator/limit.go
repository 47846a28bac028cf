package migrator

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"sync"

	"golang.org/x/time/rate"
)

// Limits for big moves: a byte rate all blob copies of a run share, and a
// request rate per registry host. Both are token buckets
// (golang.org/x/time/rate) that hand out their tokens in the order they are
// asked for, so a limit slows every job alike and starves none.

// bandwidthChunk is the share of a Bandwidth one reader takes per turn:
// small, so concurrent copies interleave finely, and the burst above the
// rate stays small.
const bandwidthChunk = 32 << 10

// Bandwidth caps the bytes per second that every reader it wraps reads
// together. It is safe for concurrent use; one Bandwidth is meant to be
// shared by all the copies of a run.
type Bandwidth struct {
	lim   *rate.Limiter
	chunk int
}

// NewBandwidth returns a limit of bytesPerSecond (at least 1).
func NewBandwidth(bytesPerSecond int64) *Bandwidth {
	bps := max(bytesPerSecond, 1)
	chunk := int(min(bps, bandwidthChunk))
	return &Bandwidth{lim: rate.NewLimiter(rate.Limit(bps), chunk), chunk: chunk}
}

// BytesPerSecond is the limit.
func (b *Bandwidth) BytesPerSecond() int64 { return int64(b.lim.Limit()) }

// Reader returns r read at no more than the shared rate. size is how many
// bytes r holds (-1: unknown). Each reader takes its turn for an equal
// chunk of the rate (the last chunk of a blob only what is left), whatever
// the size of its reads, so concurrent copies get equal shares. A cancelled
// ctx ends the wait with its error.
func (b *Bandwidth) Reader(ctx context.Context, r io.Reader, size int64) io.Reader {
	return &limitedReader{ctx: ctx, r: r, b: b, remaining: size}
}

type limitedReader struct {
	ctx       context.Context
	r         io.Reader
	b         *Bandwidth
	remaining int64 // bytes still expected; -1: unknown
	credit    int   // bytes paid for and not read yet
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return l.r.Read(p)
	}
	if l.credit == 0 && l.remaining == 0 {
		// Everything expected is read: this read should see EOF; pay
		// afterwards for whatever a source sends beyond its size.
		n, err := l.r.Read(p[:min(len(p), l.b.chunk)])
		if n > 0 {
			if werr := l.b.lim.WaitN(l.ctx, n); werr != nil {
				return n, werr
			}
		}
		return n, err
	}
	if l.credit == 0 {
		want := l.b.chunk
		if l.remaining > 0 && l.remaining < int64(want) {
			want = int(l.remaining)
		}
		if err := l.b.lim.WaitN(l.ctx, want); err != nil {
			return 0, err
		}
		l.credit = want
	}
	n, err := l.r.Read(p[:min(len(p), l.credit)])
	l.credit -= n
	if l.remaining > 0 {
		l.remaining = max(l.remaining-int64(n), 0)
	}
	return n, err
}

// limitedReadCloser is a limitedReader that closes what it reads.
type limitedReadCloser struct {
	io.Reader
	io.Closer
}

// Target returns t with every blob it copies in read through b. Manifests
// and tags, a few KiB each, are not counted.
func (b *Bandwidth) Target(t Target) Target { return &bandwidthTarget{Target: t, b: b} }

type bandwidthTarget struct {
	Target
	b *Bandwidth
}

func (t *bandwidthTarget) PutBlob(ctx context.Context, repo string, desc Descriptor, open Opener) (bool, error) {
	return t.Target.PutBlob(ctx, repo, desc, func(ctx context.Context) (io.ReadCloser, error) {
		rc, err := open(ctx)
		if err != nil {
			return nil, err
		}
		return limitedReadCloser{Reader: t.b.Reader(ctx, rc, desc.Size), Closer: rc}, nil
	})
}

// WithBandwidth makes Migrate read blobs no faster than b allows, across all
// images and jobs (nil: no limit).
func WithBandwidth(b *Bandwidth) RunOption { return func(o *runOptions) { o.bandwidth = b } }

// RequestRate caps the requests per second sent to each host, with one
// token bucket per host shared by every client that uses it: a source and a
// destination on the same registry share one limit. Retries count, as the
// registry sees them too. It is safe for concurrent use.
type RequestRate struct {
	perSecond float64
	burst     int

	mu    sync.Mutex
	hosts map[string]*rate.Limiter
}

// NewRequestRate returns a limit of perSecond requests per second per host
// (perSecond > 0), with a burst of one: requests are spaced evenly, so in
// any one second a host sees at most perSecond+1 of them.
func NewRequestRate(perSecond float64) (*RequestRate, error) {
	if !(perSecond > 0) || math.IsInf(perSecond, 1) {
		return nil, fmt.Errorf("request rate %v: want a positive number of requests per second", perSecond)
	}
	return &RequestRate{perSecond: perSecond, burst: 1, hosts: map[string]*rate.Limiter{}}, nil
}

// PerSecond is the limit per host.
func (r *RequestRate) PerSecond() float64 { return r.perSecond }

// Burst is how many requests a host may get at once after a quiet spell.
func (r *RequestRate) Burst() int { return r.burst }

func (r *RequestRate) limiter(host string) *rate.Limiter {
	r.mu.Lock()
	defer r.mu.Unlock()
	l, ok := r.hosts[host]
	if !ok {
		l = rate.NewLimiter(rate.Limit(r.perSecond), r.burst)
		r.hosts[host] = l
	}
	return l
}

// Transport returns inner with every request waiting for its host's turn
// first (nil inner: http.DefaultTransport).
func (r *RequestRate) Transport(inner http.RoundTripper) http.RoundTripper {
	if inner == nil {
		inner = http.DefaultTransport
	}
	return &rateTransport{inner: inner, r: r}
}

type rateTransport struct {
	inner http.RoundTripper
	r     *RequestRate
}

func (t *rateTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := t.r.limiter(req.URL.Host).Wait(req.Context()); err != nil {
		if req.Body != nil {
			req.Body.Close() // a RoundTripper must close the body, even on error
		}
		return nil, fmt.Errorf("wait for request rate limit of %s: %w", req.URL.Host, err)
	}
	return t.inner.RoundTrip(req)
}
