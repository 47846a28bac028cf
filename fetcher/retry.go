package fetcher

import (
	"context"
	"errors"
	"net/http"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/s3snap/s3snap/internal/retry"
)

// verdict says whether a failed attempt is worth another one; the
// classification of HTTP statuses and transport faults is the shared policy
// in internal/retry, extended here with S3's error codes.
type verdict = retry.Verdict

const (
	fatal     = retry.Fatal // give up now: retrying cannot help
	retryable = retry.Retry // transient: retry after the normal backoff
	retrySlow = retry.Slow  // throttled: retry after a longer backoff
)

var (
	// errStalled: the attempt received nothing for the stall timeout.
	errStalled = errors.New("no data received within stall timeout")
	// errBodyEnded: the body ended before the last byte of the range.
	errBodyEnded = errors.New("body ended early")
)

// throttleCodes are S3 (and S3-compatible) error codes asking the client to
// slow down. They get the longer backoff whatever their HTTP status.
var throttleCodes = map[string]bool{
	"SlowDown":                 true,
	"Throttling":               true,
	"ThrottlingException":      true,
	"RequestLimitExceeded":     true,
	"TooManyRequests":          true,
	"TooManyRequestsException": true,
}

// transientCodes are error codes S3 documents as safe to retry even though
// some come with a 4xx status (RequestTimeout is a 400).
var transientCodes = map[string]bool{
	"RequestTimeout":          true,
	"InternalError":           true,
	"ServiceUnavailable":      true,
	"RequestTimeoutException": true,
}

// classify decides whether err, from one attempt at one range, is retried.
// The caller has already checked that its own context is still live, so a
// context error here means the attempt was abandoned by the stall watchdog
// only when it is errStalled.
func classify(err error) verdict {
	switch {
	case err == nil:
		return fatal
	case errors.Is(err, errStalled), errors.Is(err, errBodyEnded):
		return retryable
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fatal
	case errors.Is(err, ErrBadRange), errors.Is(err, ErrObjectChanged),
		errors.Is(err, ErrNotFound), errors.Is(err, ErrDigestMismatch):
		return fatal
	}

	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		code := apiErr.ErrorCode()
		if throttleCodes[code] {
			return retrySlow
		}
		if transientCodes[code] {
			return retryable
		}
	}
	if status, ok := httpStatus(err); ok {
		// Any status but 408, 429, 500, 502, 503 and 504 is an answer, not
		// a transport failure: 403, 404, 412, 416 will not change on retry.
		return retry.Status(status)
	}

	// No HTTP response: the request or the body failed in transport.
	var sendErr *smithyhttp.RequestSendError
	if errors.As(err, &sendErr) || retry.Transient(err) {
		return retryable
	}
	return fatal
}

// accessCodes are S3 error codes that refuse the client itself (its
// credentials or its rights) rather than answer about an object.
var accessCodes = map[string]bool{
	"AccessDenied":          true,
	"InvalidAccessKeyId":    true,
	"SignatureDoesNotMatch": true,
	"ExpiredToken":          true,
	"InvalidToken":          true,
	"TokenRefreshRequired":  true,
}

// Unavailable reports whether err, the final error of a request (after its
// retries), means S3 could not serve this client at all: no connection, a
// reset, a timeout or stall, DNS, a 5xx or throttling answer, or a refusal
// of the client's credentials or rights (403, expired token, no
// credentials). Those last do not heal on retry but are as fatal to every
// other request, so a caller tracking S3's health (a circuit breaker)
// counts them too. An answer about the object (404, 412, a bad range), a
// digest mismatch or a cancellation is not unavailability.
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	if classify(err) != fatal {
		return true
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) && accessCodes[apiErr.ErrorCode()] {
		return true
	}
	if status, ok := httpStatus(err); ok && status == http.StatusForbidden {
		return true
	}
	var signErr *v4.SigningError
	return errors.As(err, &signErr) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// httpStatus returns the status code of the response behind err, if any.
func httpStatus(err error) (int, bool) {
	// A send failure comes wrapped in a ResponseError too, with status 0:
	// there was no response.
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) && re.HTTPStatusCode() > 0 {
		return re.HTTPStatusCode(), true
	}
	return 0, false
}

// isNotFound reports a 404 or a code meaning the key (or bucket) is absent.
func isNotFound(err error) bool {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode() {
		case "NoSuchKey", "NotFound", "NoSuchBucket":
			return true
		}
	}
	status, ok := httpStatus(err)
	return ok && status == http.StatusNotFound
}

// isPreconditionFailed reports a 412: If-Match no longer matches.
func isPreconditionFailed(err error) bool {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode() == "PreconditionFailed" {
		return true
	}
	status, ok := httpStatus(err)
	return ok && status == http.StatusPreconditionFailed
}

// retryHeader returns the headers of the response behind err, if any, for
// their Retry-After: S3 itself rarely sends one; proxies and S3-compatible
// servers may.
func retryHeader(err error) http.Header {
	var re *smithyhttp.ResponseError
	if !errors.As(err, &re) || re.Response == nil || re.Response.Response == nil {
		return nil
	}
	return re.Response.Header
}
