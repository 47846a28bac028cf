package iox

import (
	"hash"
	"io"
	"sync"
)

// hashBlock is how much HashAhead reads (and hashes) at a time, and
// hashBlocks how many blocks it keeps ahead of its reader.
const (
	hashBlock  = 1 << 20
	hashBlocks = 4
)

// HashAhead reads r on its own goroutine, up to hashBlocks*hashBlock
// bytes ahead, writing every byte to h before its reader sees it: the
// hash of a stream costs its reader nothing but a copy. h is whole (every
// byte of r) once Read has returned io.EOF. Close must be called either
// way: it stops the goroutine and waits for it, so that r is no longer
// read once Close returns.
func HashAhead(r io.Reader, h hash.Hash) *HashAheadReader {
	a := &HashAheadReader{blocks: make(chan block, hashBlocks), stop: make(chan struct{}), done: make(chan struct{})}
	a.r = BlockReader{Next: a.next, Put: PutBuf}
	go a.fill(r, h)
	return a
}

// HashAheadReader is the reader HashAhead returns.
type HashAheadReader struct {
	r      BlockReader
	blocks chan block
	stop   chan struct{}
	done   chan struct{} // closed when fill returns
	once   sync.Once
}

type block struct {
	buf *[]byte
	err error
}

func (a *HashAheadReader) fill(r io.Reader, h hash.Hash) {
	defer close(a.done)
	defer close(a.blocks)
	for {
		bp := GetBuf(hashBlock)
		n, err := io.ReadFull(r, *bp)
		*bp = (*bp)[:n]
		h.Write(*bp)
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		select {
		case a.blocks <- block{buf: bp, err: err}:
		case <-a.stop:
			return
		}
		if err != nil {
			return
		}
	}
}

func (a *HashAheadReader) Read(p []byte) (int, error) { return a.r.Read(p) }

func (a *HashAheadReader) next() (*[]byte, error) {
	b, ok := <-a.blocks
	if !ok {
		return nil, io.ErrClosedPipe
	}
	return b.buf, b.err
}

// Close stops the reading goroutine and waits for it: a read of r in
// progress ends first (at most one block).
func (a *HashAheadReader) Close() error {
	a.once.Do(func() { close(a.stop) })
	<-a.done
	return nil
}
