package mirror

import (
	"errors"
	"fmt"
	"io"
)

// Read-ahead bounds of readSeeker: the first read after a seek fetches at
// least minChunk, and each further sequential read doubles that up to
// maxChunk, so a small range costs one small GET and a long one a few large
// parallel ones, never one GET per 32 KiB copy buffer.
const (
	minChunk = 64 << 10
	maxChunk = 16 << 20
)

// readSeeker adapts random access to an io.ReadSeeker for
// http.ServeContent, with growing read-ahead.
type readSeeker struct {
	ra    io.ReaderAt
	size  int64
	off   int64
	buf   []byte // bytes at bufOff
	bufAt int64
	chunk int
}

func newReadSeeker(ra io.ReaderAt, size int64) *readSeeker {
	return &readSeeker{ra: ra, size: size, chunk: minChunk}
}

func (r *readSeeker) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	if r.off < r.bufAt || r.off >= r.bufAt+int64(len(r.buf)) {
		n := min(r.size-r.off, int64(max(len(p), r.chunk)))
		if int64(cap(r.buf)) < n {
			r.buf = make([]byte, n)
		}
		r.buf = r.buf[:n]
		got, err := r.ra.ReadAt(r.buf, r.off)
		if got < len(r.buf) && err != nil && !errors.Is(err, io.EOF) {
			r.buf = r.buf[:0]
			return 0, err
		}
		r.buf, r.bufAt = r.buf[:got], r.off
		r.chunk = min(r.chunk*2, maxChunk)
		if got == 0 {
			return 0, io.ErrUnexpectedEOF
		}
	}
	n := copy(p, r.buf[r.off-r.bufAt:])
	r.off += int64(n)
	return n, nil
}

func (r *readSeeker) Seek(offset int64, whence int) (int64, error) {
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = r.off + offset
	case io.SeekEnd:
		abs = r.size + offset
	default:
		return 0, fmt.Errorf("seek: invalid whence %d", whence)
	}
	if abs < 0 {
		return 0, fmt.Errorf("seek to %d: negative position", abs)
	}
	if abs != r.off {
		r.chunk = minChunk
	}
	r.off = abs
	return abs, nil
}
