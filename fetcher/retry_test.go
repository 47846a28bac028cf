package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// responseErr builds the error chain the SDK returns for an error response.
func responseErr(status int, code string, header http.Header) error {
	if header == nil {
		header = http.Header{}
	}
	var apiErr error = &smithy.GenericAPIError{Code: code, Message: "test"}
	if code == "" {
		apiErr = errors.New("no body")
	}
	return &smithy.OperationError{
		ServiceID:     "S3",
		OperationName: "GetObject",
		Err: &awshttp.ResponseError{
			ResponseError: &smithyhttp.ResponseError{
				Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status, Header: header}},
				Err:      apiErr,
			},
		},
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want verdict
	}{
		{"slowdown", responseErr(503, "SlowDown", nil), retrySlow},
		{"503 no code", responseErr(503, "", nil), retrySlow},
		{"429", responseErr(429, "TooManyRequests", nil), retrySlow},
		{"500", responseErr(500, "InternalError", nil), retryable},
		{"502", responseErr(502, "", nil), retryable},
		{"504", responseErr(504, "", nil), retryable},
		{"408", responseErr(408, "", nil), retryable},
		{"400 RequestTimeout", responseErr(400, "RequestTimeout", nil), retryable},
		{"403", responseErr(403, "AccessDenied", nil), fatal},
		{"404", responseErr(404, "NoSuchKey", nil), fatal},
		{"412", responseErr(412, "PreconditionFailed", nil), fatal},
		{"416", responseErr(416, "InvalidRange", nil), fatal},
		{"400", responseErr(400, "InvalidArgument", nil), fatal},
		{"send failed in response error", &smithy.OperationError{Err: &awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: 0}},
			Err:      &smithyhttp.RequestSendError{Err: &net.OpError{Op: "read", Err: syscall.ECONNRESET}},
		}}}, retryable},
		{"send reset", &smithy.OperationError{Err: &smithyhttp.RequestSendError{Err: syscall.ECONNRESET}}, retryable},
		{"send refused", &smithyhttp.RequestSendError{Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}, retryable},
		{"body reset", &net.OpError{Op: "read", Err: syscall.ECONNRESET}, retryable},
		{"unexpected eof", io.ErrUnexpectedEOF, retryable},
		{"body ended", fmt.Errorf("%w: %w", errBodyEnded, io.ErrUnexpectedEOF), retryable},
		{"stalled", fmt.Errorf("%w: %w", errStalled, context.Canceled), retryable},
		{"canceled", context.Canceled, fatal},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), fatal},
		{"bad range", fmt.Errorf("%w: long", ErrBadRange), fatal},
		{"changed", fmt.Errorf("%w: %w", ErrObjectChanged, responseErr(412, "PreconditionFailed", nil)), fatal},
		{"not found", fmt.Errorf("%w: %w", ErrNotFound, responseErr(404, "NoSuchKey", nil)), fatal},
		{"unknown", errors.New("something"), fatal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := classify(tc.err); got != tc.want {
				t.Errorf("classify(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestNotFoundAndPrecondition(t *testing.T) {
	for _, tc := range []struct {
		name          string
		err           error
		notFound, pre bool
	}{
		{"NoSuchKey", responseErr(404, "NoSuchKey", nil), true, false},
		{"head 404", responseErr(404, "NotFound", nil), true, false},
		{"head 404 no code", responseErr(404, "", nil), true, false},
		{"typed NoSuchKey", &types.NoSuchKey{}, true, false},
		{"412", responseErr(412, "PreconditionFailed", nil), false, true},
		{"403", responseErr(403, "AccessDenied", nil), false, false},
		{"net", syscall.ECONNRESET, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := isNotFound(tc.err); got != tc.notFound {
				t.Errorf("isNotFound = %v, want %v", got, tc.notFound)
			}
			if got := isPreconditionFailed(tc.err); got != tc.pre {
				t.Errorf("isPreconditionFailed = %v, want %v", got, tc.pre)
			}
		})
	}
}

func TestRetryHeader(t *testing.T) {
	h := http.Header{}
	h.Set("Retry-After", "3")
	if got := retryHeader(responseErr(503, "SlowDown", h)).Get("Retry-After"); got != "3" {
		t.Errorf("retryHeader of a 503 with Retry-After: 3 = %q", got)
	}
	if got := retryHeader(io.ErrUnexpectedEOF); got != nil {
		t.Errorf("retryHeader without a response = %v, want nil", got)
	}
}

func TestUnavailable(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"refused", &smithyhttp.RequestSendError{Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}, true},
		{"dns", &smithyhttp.RequestSendError{Err: &net.DNSError{Err: "no such host", Name: "s3", IsNotFound: true}}, true},
		{"gave up on 503", fmt.Errorf("get x: giving up after 5 attempts: %w", responseErr(503, "SlowDown", nil)), true},
		{"500", responseErr(500, "InternalError", nil), true},
		{"short read", fmt.Errorf("%w: %w", ErrShortRead, fmt.Errorf("%w: %w", errBodyEnded, io.ErrUnexpectedEOF)), true},
		{"stalled", fmt.Errorf("%w: %w", errStalled, context.Canceled), true},
		{"403", responseErr(403, "AccessDenied", nil), true},
		{"403 head, no body", responseErr(403, "", nil), true},
		{"expired token", responseErr(400, "ExpiredToken", nil), true},
		{"no credentials", &smithy.OperationError{Err: &v4.SigningError{Err: errors.New("failed to retrieve credentials: no EC2 IMDS role found")}}, true},
		{"404", fmt.Errorf("%w: %w", ErrNotFound, responseErr(404, "NoSuchKey", nil)), false},
		{"412", fmt.Errorf("%w: %w", ErrObjectChanged, responseErr(412, "PreconditionFailed", nil)), false},
		{"bad range", fmt.Errorf("%w: long", ErrBadRange), false},
		{"digest", fmt.Errorf("%w: got a", ErrDigestMismatch), false},
		{"canceled", fmt.Errorf("get x: %w", context.Canceled), false},
		{"deadline", context.DeadlineExceeded, false},
		{"400", responseErr(400, "InvalidArgument", nil), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Unavailable(tc.err); got != tc.want {
				t.Errorf("Unavailable(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
