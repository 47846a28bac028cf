package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
)

func TestTransient(t *testing.T) {
	for name, tc := range map[string]struct {
		err  error
		want bool
	}{
		"nil":            {nil, false},
		"reset":          {&net.OpError{Op: "read", Err: syscall.ECONNRESET}, true},
		"refused":        {&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, true},
		"pipe":           {fmt.Errorf("write: %w", syscall.EPIPE), true},
		"unexpected eof": {io.ErrUnexpectedEOF, true},
		"dns":            {&net.DNSError{Err: "no such host", Name: "r", IsNotFound: true}, true},
		"canceled":       {fmt.Errorf("get: %w", context.Canceled), false},
		"deadline":       {context.DeadlineExceeded, false},
		"other":          {errors.New("manifest invalid"), false},
	} {
		if got := Transient(tc.err); got != tc.want {
			t.Errorf("%s: Transient(%v) = %v, want %v", name, tc.err, got, tc.want)
		}
	}
}
