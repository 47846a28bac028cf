package store

import (
	"context"
	"errors"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/s3snap/s3snap/fetcher"
)

// maxRetryDelay bounds the wait between attempts of the store's own SDK
// requests (HEADs, links, manifests, listings, small PUTs) instead of the
// SDK's up to 2 s then 4 s: they are small, a node has a fallback waiting
// for them, and the fetcher's ranged GETs back off on the same scale.
// Throttling keeps the SDK's longer delays.
const maxRetryDelay = 400 * time.Millisecond

// request runs fn, one S3 request with its SDK retries, through the store's
// circuit breaker: refused at once while it is open, cancelled if it opens
// meanwhile (the error then wraps ErrUnavailable), its outcome counted. fn
// must pass opts to its SDK call: they set its retries.
func (s *Store) request(ctx context.Context, fn func(ctx context.Context, opts func(*s3.Options)) error) error {
	t, err := s.breaker.admit(ctx)
	if err != nil {
		return err
	}
	rctx, release := bind(ctx, t)
	err = release(fn(rctx, t.sdkOptions))
	s.breaker.done(ctx, t, err)
	return err
}

// uploadObject uploads in (multipart when large) through the breaker.
// It is not cancelled when the breaker opens: an upload cut short would
// leave its parts behind, as the abort would be cancelled too.
func (s *Store) uploadObject(ctx context.Context, in *s3.PutObjectInput) error {
	t, err := s.breaker.admit(ctx)
	if err != nil {
		return err
	}
	//lint:ignore SA1019 manager is deprecated but stable; see Store.upload
	_, err = s.upload.Upload(ctx, in, func(u *manager.Uploader) {
		u.ClientOptions = append(slices.Clip(u.ClientOptions), t.sdkOptions)
	})
	s.breaker.done(ctx, t, err)
	return err
}

// bind returns ctx cancelled, with the breaker's refusal as the cause, if
// the breaker opens before release. release replaces a cancellation error
// caused so by that refusal.
func bind(ctx context.Context, t ticket) (context.Context, func(error) error) {
	if t.trip == nil {
		return ctx, func(err error) error { return err }
	}
	rctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(t.trip, func() { cancel(context.Cause(t.trip)) })
	return rctx, func(err error) error {
		stop()
		if err != nil && ctx.Err() == nil && errors.Is(err, context.Canceled) && !errors.Is(err, ErrUnavailable) {
			if cause := context.Cause(rctx); errors.Is(cause, ErrUnavailable) {
				err = cause
			}
		}
		cancel(nil)
		return err
	}
}

// sdkOptions sets one SDK request's retries: a single attempt while the
// breaker is tripping or probing, and no wait longer than maxRetryDelay.
func (t ticket) sdkOptions(o *s3.Options) {
	if o.Retryer == nil {
		return
	}
	attempts := o.Retryer.MaxAttempts()
	if t.single {
		attempts = 1
	}
	// AddWithMaxAttempts also makes any retryer a RetryerV2.
	if r, ok := retry.AddWithMaxAttempts(o.Retryer, attempts).(aws.RetryerV2); ok {
		o.Retryer = cappedRetryer{r}
	}
}

// cappedRetryer waits at most maxRetryDelay between attempts, but for
// throttling.
type cappedRetryer struct{ aws.RetryerV2 }

var throttled = retry.IsErrorThrottles(retry.DefaultThrottles)

func (r cappedRetryer) RetryDelay(attempt int, err error) (time.Duration, error) {
	d, derr := r.RetryerV2.RetryDelay(attempt, err)
	if derr != nil || throttled.IsErrorThrottle(err) == aws.TrueTernary {
		return d, derr
	}
	return min(d, maxRetryDelay), nil
}

// blobReader is a fetcher Reader counted by the breaker as one request and
// bound to it: the breaker opening stops the read.
type blobReader struct {
	rc      io.ReadCloser
	ctx     context.Context
	b       *breaker
	t       ticket
	release func(error) error
	once    sync.Once
	closed  sync.Once
}

// openReader starts a read of obj through the breaker.
func (s *Store) openReader(ctx context.Context, obj fetcher.Object) (io.ReadCloser, error) {
	t, err := s.breaker.admit(ctx)
	if err != nil {
		return nil, err
	}
	// A read's length says nothing about S3: no slow rule.
	t.start = time.Time{}
	rctx, release := bind(ctx, t)
	rc, err := s.fetch.Reader(rctx, obj)
	if err != nil {
		err = release(err)
		s.breaker.done(ctx, t, err)
		return nil, err
	}
	return &blobReader{rc: rc, ctx: ctx, b: s.breaker, t: t, release: release}, nil
}

// end records the read's outcome once: io.EOF or an error.
func (r *blobReader) end(err error) {
	r.once.Do(func() { r.b.done(r.ctx, r.t, err) })
}

func (r *blobReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	if err != nil {
		r.end(err)
	}
	return n, err
}

// WriteTo keeps the fetcher's copy-free path for io.Copy.
func (r *blobReader) WriteTo(w io.Writer) (int64, error) {
	n, err := io.Copy(w, r.rc)
	if err == nil {
		r.end(io.EOF)
	} else {
		r.end(err)
	}
	return n, err
}

func (r *blobReader) Close() error {
	err := r.rc.Close()
	r.end(context.Canceled) // closed before its end: says nothing
	r.closed.Do(func() { r.release(nil) })
	return err
}

// ReaderAt is random access to one object of the store with parallel
// ranged GETs. Its reads are never refused by the store's circuit breaker
// (they serve a lazily mounted layer, which has no fallback) but each one
// counts towards it.
type ReaderAt struct {
	ra  *fetcher.ReaderAt
	ctx context.Context
	b   *breaker
}

// Size returns the object's size in bytes.
func (r *ReaderAt) Size() int64 { return r.ra.Size() }

// ReadAt reads len(p) bytes at off, as io.ReaderAt.
func (r *ReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := r.ra.ReadAt(p, off)
	r.b.done(r.ctx, ticket{}, err)
	return n, err
}
