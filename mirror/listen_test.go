package mirror

import (
	"errors"
	"testing"
)

func TestCheckPrivileged(t *testing.T) {
	for _, tc := range []struct {
		addr  string
		start int
		ok    bool
	}{
		{"127.0.0.1:505", 1024, true},
		{"127.0.0.1:1023", 1024, true},
		{"127.0.0.1:1024", 1024, false},
		{"127.0.0.1:5050", 1024, false},
		{"[::1]:506", 1024, true},
		{"127.0.0.1:505", 500, false}, // start lowered below the port
		{"127.0.0.1:505", 0, false},   // every port open to every user
	} {
		err := CheckPrivileged(tc.addr, tc.start)
		if (err == nil) != tc.ok || !tc.ok && !errors.Is(err, ErrUnprivilegedPort) {
			t.Errorf("CheckPrivileged(%q, %d) = %v, want ok=%v", tc.addr, tc.start, err, tc.ok)
		}
	}
	for _, bad := range []string{"127.0.0.1", "127.0.0.1:0", "127.0.0.1:http"} {
		if err := CheckPrivileged(bad, 1024); err == nil || errors.Is(err, ErrUnprivilegedPort) {
			t.Errorf("CheckPrivileged(%q) = %v, want an address error", bad, err)
		}
	}
}
