package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/containerd/log"

	"github.com/s3snap/s3snap/internal/retry"
)

// getOptions apply to every GetObject the fetcher sends.
//
// The SDK's retryer is turned off here: it only retries the request phase,
// and a retry it made would start the range again from its first byte, while
// fetchRange resumes at the byte it got to. Two layers of retries would also
// multiply (5 SDK attempts x 5 of ours) and the SDK's shared retry quota would
// fail fast under a burst of SlowDown across many concurrent ranges. HeadObject
// keeps the SDK's retryer: it has no body to resume.
//
// Response checksum validation is left to "when required": a ranged GET has
// no checksum of its own, some S3-compatible servers send the whole object's
// checksum with a range anyway, and the digest check covers the full read.
func getOptions(o *s3.Options) {
	o.Retryer = aws.NopRetryer{}
	o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
}

// span is one ranged GET: n bytes at off.
type span struct{ off, n int64 }

// plan splits n bytes at off into spans of at most partSize bytes.
func plan(off, n, partSize int64) []span {
	if n <= 0 || partSize <= 0 {
		return nil
	}
	spans := make([]span, 0, (n+partSize-1)/partSize)
	for end := off + n; off < end; off += partSize {
		spans = append(spans, span{off: off, n: min(partSize, end-off)})
	}
	return spans
}

// fetchRange fills buf with bytes [off, off+len(buf)) of obj. A failed
// attempt is retried with backoff and resumes at the first byte not yet
// received, so bytes are never downloaded twice. It returns nil only when
// every byte of buf came from a response for exactly that range.
func (f *Fetcher) fetchRange(ctx context.Context, obj *Object, pin *etagPin, off int64, buf []byte) error {
	if len(buf) == 0 {
		return nil
	}
	end := off + int64(len(buf)) - 1
	got := 0
	for attempt := 1; ; attempt++ {
		n, err := f.getOnce(ctx, obj, pin, off+int64(got), buf[got:])
		got += n
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("get %s range %d-%d: %w", obj, off, end, context.Cause(ctx))
		}
		v := classify(err)
		if v == fatal {
			return fmt.Errorf("get %s range %d-%d: %w", obj, off, end, err)
		}
		if attempt >= f.opts.retries {
			if errors.Is(err, errBodyEnded) {
				return fmt.Errorf("get %s range %d-%d: %w: got %d of %d bytes after %d attempts: %w",
					obj, off, end, ErrShortRead, got, len(buf), attempt, err)
			}
			return fmt.Errorf("get %s range %d-%d: giving up after %d attempts: %w", obj, off, end, attempt, err)
		}

		delay := f.opts.policy().Delay(attempt, v, retryHeader(err))
		log.G(ctx).WithError(err).WithFields(log.Fields{
			"object":  obj.String(),
			"range":   strconv.FormatInt(off, 10) + "-" + strconv.FormatInt(end, 10),
			"resume":  off + int64(got),
			"attempt": attempt,
			"verdict": v.String(),
			"delay":   delay,
		}).Debug("fetcher: retrying range")

		if err := retry.Sleep(ctx, delay); err != nil {
			return fmt.Errorf("get %s range %d-%d: %w", obj, off, end, err)
		}
	}
}

// getOnce makes one GET for bytes [off, off+len(buf)) and copies the body
// into buf. It returns how many bytes of buf are good, even on error, so the
// next attempt can resume after them.
func (f *Fetcher) getOnce(ctx context.Context, obj *Object, pin *etagPin, off int64, buf []byte) (int, error) {
	// The stall watchdog cancels the attempt, not the read: a stalled
	// connection is retried like a reset one.
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var watchdog *time.Timer
	if d := f.opts.stallTimeout; d > 0 {
		watchdog = time.AfterFunc(d, func() { cancel(errStalled) })
		defer watchdog.Stop()
	}
	stalled := func(err error) error {
		if ctx.Err() == nil && errors.Is(context.Cause(actx), errStalled) {
			return fmt.Errorf("%w: %w", errStalled, err)
		}
		return err
	}

	end := off + int64(len(buf)) - 1
	in := &s3.GetObjectInput{
		Bucket: aws.String(obj.Bucket),
		Key:    aws.String(obj.Key),
		Range:  aws.String("bytes=" + strconv.FormatInt(off, 10) + "-" + strconv.FormatInt(end, 10)),
	}
	if etag := pin.get(); etag != "" {
		in.IfMatch = aws.String(etag)
	}
	out, err := f.client.GetObject(actx, in, getOptions)
	if err != nil {
		switch {
		case isNotFound(err):
			return 0, fmt.Errorf("%w: %w", ErrNotFound, err)
		case isPreconditionFailed(err):
			return 0, fmt.Errorf("%w: etag is no longer %s: %w", ErrObjectChanged, pin.get(), err)
		}
		return 0, stalled(err)
	}
	defer out.Body.Close()

	if err := checkResponse(out, obj.Size, off, end); err != nil {
		return 0, err
	}
	if etag := aws.ToString(out.ETag); !pin.check(etag) {
		return 0, fmt.Errorf("%w: etag %s, expected %s", ErrObjectChanged, etag, pin.get())
	}

	n := 0
	for n < len(buf) {
		m, rerr := out.Body.Read(buf[n:])
		n += m
		if m > 0 && watchdog != nil {
			watchdog.Reset(f.opts.stallTimeout)
		}
		if rerr == nil {
			continue
		}
		if n == len(buf) && rerr == io.EOF {
			break
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			return n, fmt.Errorf("%w after %d of %d bytes: %w", errBodyEnded, n, len(buf), rerr)
		}
		return n, stalled(rerr)
	}
	// The range is full. Anything more is a server bug, never data. With a
	// Content-Length the HTTP client stops at it; this catches chunked bodies.
	var extra [1]byte
	if m, _ := out.Body.Read(extra[:]); m > 0 {
		return n, fmt.Errorf("%w: body longer than the %d bytes asked", ErrBadRange, len(buf))
	}
	return n, nil
}

// checkResponse verifies that the headers describe exactly bytes off..end of
// an object of the expected size (size < 0: not known).
func checkResponse(out *s3.GetObjectOutput, size, off, end int64) error {
	want := end - off + 1
	if out.ContentLength != nil && *out.ContentLength != want {
		return fmt.Errorf("%w: content-length %d, asked %d", ErrBadRange, *out.ContentLength, want)
	}
	cr := aws.ToString(out.ContentRange)
	if cr == "" && off == 0 && out.ContentLength != nil && (size < 0 || size == want) {
		// A server that ignores Range answers 200 with the whole object;
		// that is fine only if the whole object is what was asked.
		return nil
	}
	switch err := retry.CheckContentRange(cr, off, end, size); {
	case errors.Is(err, retry.ErrSizeChanged):
		return fmt.Errorf("%w: %w", ErrObjectChanged, err)
	case err != nil:
		return fmt.Errorf("%w: %w", ErrBadRange, err)
	}
	return nil
}
