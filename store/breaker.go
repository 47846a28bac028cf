package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/s3snap/s3snap/fetcher"
)

// ErrUnavailable is returned, without asking S3, while a store's circuit
// breaker is open: the store's recent requests found S3 unavailable, and
// callers with somewhere else to go (the registry) should go there now
// rather than wait out retries. The error names the store and when S3 will
// be asked again.
var ErrUnavailable = errors.New("s3 unavailable")

// Breaker defaults (see WithBreaker).
const (
	DefaultBreakerThreshold = 3
	DefaultBreakerCooldown  = 15 * time.Second
	// breakerMaxCooldown bounds the doubling of the cooldown, as a
	// multiple of the first one (15 s .. 2 min by default).
	breakerMaxCooldown = 8
	// slowFailure: one failed request that took this long (retrying,
	// or waiting for an answer that never came) opens the breaker at once.
	slowFailure = 3 * time.Second
)

var breakerOpen = promauto.NewGaugeVec(prometheus.GaugeOpts{
	Namespace: "s3snap", Subsystem: "store", Name: "breaker_open",
	Help: "1 while the store's circuit breaker is open (or probing): S3 was found unavailable and the store's requests fail at once until a probe succeeds, by store (s3://bucket/prefix).",
}, []string{"store"})

// breaker is a store's circuit breaker. Every S3 request the store makes
// goes through it:
//
//   - closed: requests go through. One that fails because S3 is
//     unavailable (fetcher.Unavailable: no connection, reset, timeout, 5xx
//     or throttling after its retries, 403 and other refusals of the
//     credentials) is a failure; one that S3 answered (success, 404, a
//     digest mismatch) clears the count; a cancellation counts for
//     nothing. threshold consecutive failures, or one that took longer
//     than slowFailure, open the breaker. While the count is above zero
//     ("tripping"), the store's SDK requests make a single attempt.
//   - open: for the cooldown every request fails at once with an error
//     wrapping ErrUnavailable, and requests in flight are cancelled with
//     it, so none keeps retrying (uploads excepted: a cancelled one would
//     leave its parts behind). Requests with no fallback (reads of a
//     lazily mounted layer) are never refused, only counted.
//   - half-open: after the cooldown one request, the probe, goes through
//     (one attempt); the others still fail at once. An answer closes the
//     breaker; a failure opens it again for twice the cooldown, up to
//     breakerMaxCooldown times the first. Any request S3 answers closes it.
//
// State changes are logged once each and shown by s3snap_store_breaker_open.
// A nil *breaker lets everything through.
type breaker struct {
	url         string
	threshold   int
	cooldown    time.Duration
	maxCooldown time.Duration
	slow        time.Duration
	now         func() time.Time
	gauge       prometheus.Gauge

	mu       sync.Mutex
	state    breakerState
	failures int           // consecutive, while closed
	wait     time.Duration // the current cooldown
	until    time.Time     // open: when the probe may go
	probing  bool          // half-open: the probe is out
	last     error         // the failure that opened it
	// trip is cancelled, with the refusal as its cause, when the breaker
	// opens: requests let through while closed are bound to it.
	trip       context.Context
	tripCancel context.CancelCauseFunc
}

type breakerState int

const (
	closed breakerState = iota
	open
	halfOpen
)

func (s breakerState) String() string {
	return [...]string{"closed", "open", "half-open"}[s]
}

// newBreaker returns the breaker of the store at url, or nil (no breaker)
// for threshold < 1.
func newBreaker(url string, threshold int, cooldown time.Duration, now func() time.Time) *breaker {
	if threshold < 1 {
		return nil
	}
	cooldown = max(cooldown, time.Second)
	b := &breaker{
		url:         url,
		threshold:   threshold,
		cooldown:    cooldown,
		maxCooldown: breakerMaxCooldown * cooldown,
		slow:        slowFailure,
		now:         now,
		gauge:       breakerOpen.WithLabelValues(url),
	}
	b.gauge.Add(0) // show the series before anything fails
	b.trip, b.tripCancel = context.WithCancelCause(context.Background())
	return b
}

// ticket is one request let through.
type ticket struct {
	probe bool
	// start is when the request began; zero for a request whose length
	// says nothing (a blob read), which the slow rule then ignores.
	start time.Time
	// single: the breaker is tripping or probing; make one attempt.
	single bool
	// trip is cancelled when the breaker opens; nil: not bound.
	trip context.Context
}

// admit lets a request through, or refuses it with an error wrapping
// ErrUnavailable.
func (b *breaker) admit(ctx context.Context) (ticket, error) {
	if b == nil {
		return ticket{}, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	switch b.state {
	case closed:
		return ticket{start: now, single: b.failures > 0, trip: b.trip}, nil
	case open:
		if now.Before(b.until) {
			return ticket{}, b.refusal()
		}
		b.state = halfOpen
		log.G(ctx).WithField("store", b.url).Debug("s3 store circuit breaker half-open: probing")
	}
	if b.probing {
		return ticket{}, b.refusal()
	}
	b.probing = true
	return ticket{probe: true, start: now, single: true}, nil
}

// refusal is the error of a refused request. b.mu is held.
func (b *breaker) refusal() error {
	when := "the probe in flight answers"
	if b.state == open {
		when = b.until.UTC().Format(time.RFC3339)
	}
	return fmt.Errorf("%s: %w: circuit breaker open, not asking again until %s (last failure: %v)", b.url, ErrUnavailable, when, b.last)
}

// done records how a request let through by admit ended.
func (b *breaker) done(ctx context.Context, t ticket, err error) {
	if b == nil {
		return
	}
	var took time.Duration
	if !t.start.IsZero() {
		took = b.now().Sub(t.start)
	}
	o := judge(err, took, b.slow)
	b.mu.Lock()
	defer b.mu.Unlock()
	if t.probe && b.state == halfOpen {
		b.probing = false
		switch o {
		case answered:
			b.close(ctx)
		case failed:
			b.open(ctx, err, min(2*b.wait, b.maxCooldown))
		}
		return
	}
	switch o {
	case answered:
		if b.state == closed {
			b.failures = 0
		} else {
			b.close(ctx) // S3 answered: it is back
		}
	case failed:
		if b.state != closed {
			return // a straggler: already open
		}
		b.failures++
		b.last = err
		if b.failures >= b.threshold || took >= b.slow {
			b.open(ctx, err, b.cooldown)
		}
	}
}

// open opens the breaker for wait. b.mu is held.
func (b *breaker) open(ctx context.Context, err error, wait time.Duration) {
	if b.state == closed {
		b.gauge.Inc()
	}
	failures := b.failures
	b.state, b.wait, b.until, b.failures, b.last = open, wait, b.now().Add(wait), 0, err
	if b.tripCancel != nil {
		b.tripCancel(b.refusal())
		b.trip, b.tripCancel = nil, nil
	}
	l := log.G(ctx).WithError(err).WithFields(log.Fields{"store": b.url, "cooldown": wait, "failures": failures})
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusForbidden {
		l = l.WithField("hint", "S3 refused the credentials: check the node's role and the bucket policy")
	}
	l.Warn("s3 store unavailable: circuit breaker open, requests go to the registry until a probe succeeds")
}

// close closes the breaker. b.mu is held.
func (b *breaker) close(ctx context.Context) {
	b.gauge.Dec()
	b.state, b.failures, b.wait, b.probing, b.last = closed, 0, 0, false, nil
	b.trip, b.tripCancel = context.WithCancelCause(context.Background())
	log.G(ctx).WithField("store", b.url).Info("s3 store available again: circuit breaker closed")
}

// outcome is what a finished request says about S3.
type outcome int

const (
	unknown  outcome = iota // cancelled, refused by the breaker, or a local error
	answered                // S3 answered, whatever it said
	failed                  // S3 was unavailable
)

// judge tells what err, a request's final error, says about S3.
func judge(err error, took, slow time.Duration) outcome {
	switch {
	case err == nil, errors.Is(err, io.EOF):
		return answered
	case errors.Is(err, ErrUnavailable):
		return unknown
	case fetcher.Unavailable(err):
		return failed
	case errors.Is(err, context.DeadlineExceeded):
		// The caller's deadline: S3 did not answer in time. Only a long
		// wait says something about S3 rather than about the deadline.
		if took >= slow {
			return failed
		}
		return unknown
	case errors.Is(err, context.Canceled):
		return unknown
	}
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) && re.HTTPStatusCode() > 0 {
		return answered
	}
	for _, e := range []error{fetcher.ErrNotFound, fetcher.ErrBadRange, fetcher.ErrObjectChanged, fetcher.ErrDigestMismatch,
		ErrNotFound, ErrDigestMismatch, ErrSizeMismatch, ErrCorrupt} {
		if errors.Is(err, e) {
			return answered
		}
	}
	return unknown
}
