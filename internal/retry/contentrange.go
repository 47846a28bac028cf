package retry

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

var (
	// ErrBadRange: the server answered a range request with other bytes
	// than asked: another or a malformed Content-Range, or none.
	ErrBadRange = errors.New("response does not match requested range")
	// ErrSizeChanged: the Content-Range names another total size than
	// expected: the object changed between requests.
	ErrSizeChanged = errors.New("object size changed")
)

// ParseContentRange parses "bytes first-last/total"; total is -1 for "*".
func ParseContentRange(s string) (first, last, total int64, err error) {
	bad := fmt.Errorf("malformed content-range %q", s)
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, 0, 0, bad
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, bad
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, 0, bad
	}
	if first, err = strconv.ParseInt(a, 10, 64); err != nil || first < 0 {
		return 0, 0, 0, bad
	}
	if last, err = strconv.ParseInt(b, 10, 64); err != nil || last < first {
		return 0, 0, 0, bad
	}
	if tot == "*" {
		return first, last, -1, nil
	}
	if total, err = strconv.ParseInt(tot, 10, 64); err != nil || total <= last {
		return 0, 0, 0, bad
	}
	return first, last, total, nil
}

// CheckContentRange verifies that the Content-Range header value cr
// describes exactly bytes off..end of an object of size bytes. end < 0
// means the request was open-ended ("bytes=off-"): the answer must then run
// to the object's last byte. size < 0 means the size is not known. It
// returns an error wrapping ErrBadRange, or ErrSizeChanged when only the
// total differs.
func CheckContentRange(cr string, off, end, size int64) error {
	if cr == "" {
		return fmt.Errorf("%w: no content-range in response to range %d-%s", ErrBadRange, off, endString(end))
	}
	first, last, total, err := ParseContentRange(cr)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadRange, err)
	}
	if end < 0 {
		switch {
		case size >= 0:
			end = size - 1
		case total >= 0:
			end = total - 1
		default:
			end = last
		}
	}
	if first != off || last != end {
		return fmt.Errorf("%w: content-range %q, asked %d-%s", ErrBadRange, cr, off, endString(end))
	}
	if size >= 0 && total >= 0 && total != size {
		return fmt.Errorf("%w: object is now %d bytes, expected %d", ErrSizeChanged, total, size)
	}
	return nil
}

func endString(end int64) string {
	if end < 0 {
		return ""
	}
	return strconv.FormatInt(end, 10)
}
