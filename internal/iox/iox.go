// Package iox holds the small io.Reader wrappers several packages share,
// so each mechanism has one home.
package iox

import (
	"context"
	"io"
	"sync"
)

// CountingReader counts the bytes read through it (N).
type CountingReader struct {
	R io.Reader
	N int64
}

func (c *CountingReader) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	c.N += int64(n)
	return n, err
}

// ContextReader returns r, made to stop a long read (with ctx's error) at
// its next Read once ctx is done.
func ContextReader(ctx context.Context, r io.Reader) io.Reader { return ctxReader{ctx, r} }

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// LockedReader lets several goroutines read R, one Read at a time: each
// gets the next bytes, and a reader beneath that hashes what passes (the
// store's digest check) still sees every byte once, in order. Lock it to
// close what is beneath while a Read may be under way elsewhere.
type LockedReader struct {
	sync.Mutex
	R io.Reader
}

func (l *LockedReader) Read(p []byte) (int, error) {
	l.Lock()
	defer l.Unlock()
	return l.R.Read(p)
}
