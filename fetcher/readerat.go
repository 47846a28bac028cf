package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// ReaderAt gives random access to one object. Reads larger than a part are
// split into concurrent ranged GETs written straight into the caller's
// buffer. It is safe for concurrent use; all its ReadAt calls together keep
// at most Concurrency GETs in flight.
type ReaderAt struct {
	f   *Fetcher
	ctx context.Context
	obj Object
	pin *etagPin
	sem chan struct{}
}

// ReaderAt returns random access to obj, bound to ctx: cancelling ctx fails
// every later ReadAt. obj.Digest is not checked: a random read is not a
// full read.
func (f *Fetcher) ReaderAt(ctx context.Context, obj Object) (*ReaderAt, error) {
	obj, err := f.resolve(ctx, obj)
	if err != nil {
		return nil, err
	}
	return &ReaderAt{
		f:   f,
		ctx: ctx,
		obj: obj,
		pin: &etagPin{etag: obj.ETag},
		sem: make(chan struct{}, f.opts.concurrency),
	}, nil
}

// Size returns the object's size in bytes.
func (r *ReaderAt) Size() int64 { return r.obj.Size }

// ReadAt reads len(p) bytes at off. Like any io.ReaderAt it returns io.EOF
// with n < len(p) only when the object ends inside p; any other n < len(p)
// comes with the error that stopped it.
func (r *ReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read %s at %d: negative offset", r.obj, off)
	}
	if off >= r.obj.Size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := min(int64(len(p)), r.obj.Size-off)
	spans := plan(off, n, r.f.opts.partSize)

	// First error cancels the other spans of this call only.
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	errs := make([]error, len(spans))
	var wg sync.WaitGroup
	for i, s := range spans {
		buf := p[s.off-off : s.off-off+s.n]
		get := func() {
			select {
			case r.sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = fmt.Errorf("get %s range %d-%d: %w", r.obj, s.off, s.off+s.n-1, context.Cause(ctx))
				return
			}
			defer func() { <-r.sem }()
			if errs[i] = r.f.fetchRange(ctx, &r.obj, r.pin, s.off, buf); errs[i] != nil {
				cancel()
			}
		}
		if len(spans) == 1 {
			get()
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			get()
		}()
	}
	wg.Wait()

	// Report the bytes good from the start of p up to the first failed
	// span, and the error that caused the failure rather than one of the
	// cancellations it triggered in the other spans.
	var good int64
	var firstErr error
	for i, s := range spans {
		if errs[i] != nil {
			firstErr = errs[i]
			break
		}
		good += s.n
	}
	if firstErr != nil {
		for _, err := range errs {
			if err != nil && !errors.Is(err, context.Canceled) {
				firstErr = err
				break
			}
		}
		return int(good), firstErr
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}
