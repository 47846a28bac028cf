package untar

import (
	"math/bits"
	"sync"
)

// fileBufs hold the contents of files read ahead of the workers, one pool
// a power-of-two size class from 4KiB to bufferedMax: a layer's thousands
// of small files would otherwise each be a new, zeroed allocation.
var fileBufs [bufClasses]sync.Pool

const (
	minBufShift = 12               // 4KiB
	bufClasses  = 23 - minBufShift // up to 4MiB (bufferedMax)
)

// bufClass is the class of a buffer holding n bytes (0 < n <= bufferedMax).
func bufClass(n int64) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len64(uint64(n-1)) - minBufShift
}

// getBuf returns a buffer of length n, not zeroed: the caller fills it.
func getBuf(n int64) *[]byte {
	c := bufClass(n)
	if b, ok := fileBufs[c].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minBufShift))
	return &b
}

func putBuf(b *[]byte) { fileBufs[bufClass(int64(cap(*b)))].Put(b) }
