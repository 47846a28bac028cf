package iox

import (
	"io"
	"math/bits"
	"sync"
)

// bufPools hold reusable buffers, one pool a power-of-two size class from
// 4KiB to MaxBuf: a layer's thousands of small files, or its stream's
// blocks, would otherwise each be a new, zeroed allocation.
var bufPools [bufClasses]sync.Pool

const (
	minBufShift = 12 // 4KiB
	maxBufShift = 22
	bufClasses  = maxBufShift - minBufShift + 1
	// MaxBuf is the largest buffer GetBuf gives.
	MaxBuf = 1 << maxBufShift
)

// bufClass is the class of a buffer holding n bytes (0 <= n <= MaxBuf).
func bufClass(n int64) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len64(uint64(n-1)) - minBufShift
}

// GetBuf returns a buffer of length n (at most MaxBuf), not zeroed: the
// caller fills it. PutBuf takes it back once nothing refers to it.
func GetBuf(n int64) *[]byte {
	c := bufClass(n)
	if b, ok := bufPools[c].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minBufShift))
	return &b
}

// PutBuf returns a buffer GetBuf gave.
func PutBuf(b *[]byte) { bufPools[bufClass(int64(cap(*b)))].Put(b) }

// BlockReader reads a stream handed over in blocks, in order: Next gives
// each block (its bytes come before its error; a block may be nil), and
// Put, if set, takes each back once it has been read.
type BlockReader struct {
	Next func() (*[]byte, error)
	Put  func(*[]byte)
	cur  []byte  // what is left to read of held
	held *[]byte // the block being read
	err  error
}

func (r *BlockReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 && r.err == nil {
		r.release()
		r.held, r.err = r.Next()
		if r.held != nil {
			r.cur = *r.held
		}
	}
	if len(r.cur) > 0 {
		n := copy(p, r.cur)
		r.cur = r.cur[n:]
		return n, nil
	}
	r.release()
	return 0, r.err
}

func (r *BlockReader) release() {
	if r.held != nil && r.Put != nil {
		r.Put(r.held)
	}
	r.held, r.cur = nil, nil
}

var _ io.Reader = (*BlockReader)(nil)
