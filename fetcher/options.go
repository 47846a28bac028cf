package fetcher

import (
	"time"

	"github.com/s3snap/s3snap/internal/retry"
)

// Defaults, chosen with integration/bench against a local S3 server (see
// BenchmarkFetcherTuning): past 8 MiB parts and 16 in flight the gain is
// within noise while memory grows linearly.
const (
	DefaultPartSize     = 8 << 20
	DefaultConcurrency  = 16
	DefaultRetries      = 5
	DefaultBackoffBase  = 100 * time.Millisecond
	DefaultBackoffMax   = 5 * time.Second
	DefaultStallTimeout = 30 * time.Second
)

type options struct {
	partSize     int64
	concurrency  int
	retries      int
	backoffBase  time.Duration
	backoffMax   time.Duration
	stallTimeout time.Duration
}

func defaultOptions() options {
	return options{
		partSize:     DefaultPartSize,
		concurrency:  DefaultConcurrency,
		retries:      DefaultRetries,
		backoffBase:  DefaultBackoffBase,
		backoffMax:   DefaultBackoffMax,
		stallTimeout: DefaultStallTimeout,
	}
}

// Option configures a Fetcher.
type Option func(*options)

// WithPartSize sets the size of one ranged GET (and of one read-ahead
// buffer). Values below 64 KiB are raised to 64 KiB.
func WithPartSize(n int64) Option {
	return func(o *options) { o.partSize = max(n, 64<<10) }
}

// WithConcurrency sets how many ranged GETs one reader keeps in flight. A
// Reader holds at most that many part buffers.
func WithConcurrency(n int) Option {
	return func(o *options) { o.concurrency = max(n, 1) }
}

// WithRetries sets the number of attempts per range, the first included.
func WithRetries(n int) Option {
	return func(o *options) { o.retries = max(n, 1) }
}

// WithBackoff sets the first retry delay and the cap of the exponential
// backoff. SlowDown and 429 start four times higher, under the same cap.
func WithBackoff(base, maxDelay time.Duration) Option {
	return func(o *options) {
		o.backoffBase = base
		o.backoffMax = max(maxDelay, base)
	}
}

// WithStallTimeout sets how long a GET may go without receiving a byte
// (headers included) before it is abandoned and resumed. Zero disables it.
func WithStallTimeout(d time.Duration) Option {
	return func(o *options) { o.stallTimeout = d }
}

// policy is the shared retry policy with this fetcher's settings.
func (o options) policy() retry.Policy {
	return retry.Policy{Attempts: o.retries, Base: o.backoffBase, Max: o.backoffMax}
}
