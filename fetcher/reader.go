package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	digest "github.com/opencontainers/go-digest"
)

// errClosed is the cause given to outstanding GETs when a Reader is closed.
var errClosed = errors.New("fetcher: reader closed")

// Reader returns the object in order, reading ahead with up to Concurrency
// ranged GETs in flight. Memory is bounded: at most Concurrency part buffers
// are held, recycled through the Fetcher, so a consumer can decompress while
// later parts download. If obj.Digest is set, the Read that would return
// io.EOF returns an error wrapping ErrDigestMismatch instead when the bytes do
// not match. Close cancels outstanding GETs; it must be called.
func (f *Fetcher) Reader(ctx context.Context, obj Object) (io.ReadCloser, error) {
	var d digest.Digester
	if obj.Digest != "" {
		if err := obj.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("read %s: %w", obj, err)
		}
		d = obj.Digest.Algorithm().Digester()
	}
	obj, err := f.resolve(ctx, obj)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	return &reader{
		f:        f,
		ctx:      ctx,
		cancel:   cancel,
		obj:      obj,
		pin:      &etagPin{etag: obj.ETag},
		digester: d,
	}, nil
}

// reader is the ordered read-ahead Reader. It is pull driven: Read keeps the
// window of launched parts full, so no scheduler goroutine is needed.
type reader struct {
	f        *Fetcher
	ctx      context.Context
	cancel   context.CancelCauseFunc
	obj      Object
	pin      *etagPin
	digester digest.Digester // nil: no digest to verify
	// lastHashed is the hashed channel of the last part launched: the
	// next part hashes after it, so the digest sees the bytes in order.
	lastHashed chan struct{}

	// mu serialises Read, WriteTo and the end of Close, so Close may be
	// called from another goroutine to abort a Read blocked on the network.
	mu    sync.Mutex
	next  int64   // offset of the next part to launch
	queue []*part // launched parts in order; queue[0] is being consumed
	wg    sync.WaitGroup
	err   error // sticky: io.EOF, a fetch error, or errClosed
}

// part is one ranged GET of the read-ahead window.
type part struct {
	buf  *[]byte // pooled backing array, nil when allocated to size
	data []byte  // the part's bytes
	pos  int     // bytes of data already handed to the consumer
	done chan struct{}
	err  error
	// hashed is closed once data went into the digest (nil without
	// digest). The buffer is reused only after both the consumer and the
	// hash are done with it.
	hashed chan struct{}
}

// fill launches parts until the window holds Concurrency of them.
func (r *reader) fill() {
	ps := r.f.opts.partSize
	for len(r.queue) < r.f.opts.concurrency && r.next < r.obj.Size {
		n := min(ps, r.obj.Size-r.next)
		p := &part{done: make(chan struct{})}
		if n == ps {
			p.buf = r.f.bufs.Get().(*[]byte)
			p.data = (*p.buf)[:n]
		} else {
			// A short tail (or a small blob) gets its own buffer so
			// a 1 KiB manifest does not pin a whole part.
			p.data = make([]byte, n)
		}
		off := r.next
		r.next += n
		r.queue = append(r.queue, p)
		prev := r.lastHashed
		if r.digester != nil {
			p.hashed = make(chan struct{})
			r.lastHashed = p.hashed
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			p.err = r.f.fetchRange(r.ctx, &r.obj, r.pin, off, p.data)
			close(p.done)
			if p.hashed == nil {
				return
			}
			// Hash here, in order, rather than in Read: the digest
			// then runs on another core while the consumer (a
			// decompressor, typically) works on the same bytes.
			if prev != nil {
				<-prev
			}
			if p.err == nil && r.ctx.Err() == nil {
				r.digester.Hash().Write(p.data)
			}
			close(p.hashed)
		}()
	}
}

// head waits for the first part of the window. It returns nil when the
// object has been read to its end.
func (r *reader) head() (*part, error) {
	for {
		r.fill()
		if len(r.queue) == 0 {
			return nil, nil
		}
		p := r.queue[0]
		<-p.done
		if p.err != nil {
			// Stop the rest of the window: nothing after a failed
			// part can be delivered.
			r.cancel(p.err)
			return nil, p.err
		}
		if p.pos < len(p.data) {
			return p, nil
		}
		r.pop()
	}
}

// pop releases the consumed first part and its buffer.
func (r *reader) pop() {
	p := r.queue[0]
	r.queue[0] = nil
	r.queue = r.queue[1:]
	if p.hashed != nil {
		<-p.hashed
	}
	if p.buf != nil {
		r.f.bufs.Put(p.buf)
	}
}

// end returns the error for the end of the object: io.EOF, or a digest
// mismatch in its place. Every part has been popped, so hashed.
func (r *reader) end() error {
	if r.digester != nil {
		// Parts skip hashing once the context is done; say why
		// rather than report a mismatch.
		if err := r.ctx.Err(); err != nil {
			return fmt.Errorf("read %s: %w", r.obj, context.Cause(r.ctx))
		}
		if got := r.digester.Digest(); got != r.obj.Digest {
			return fmt.Errorf("read %s: %w: got %s, want %s", r.obj, ErrDigestMismatch, got, r.obj.Digest)
		}
	}
	return io.EOF
}

func (r *reader) Read(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	if len(b) == 0 {
		return 0, nil
	}
	p, err := r.head()
	if err != nil {
		r.err = err
		return 0, err
	}
	if p == nil {
		r.err = r.end()
		return 0, r.err
	}
	n := copy(b, p.data[p.pos:])
	p.pos += n
	if p.pos == len(p.data) {
		// Free the buffer and start the next GET now rather than at
		// the next Read.
		r.pop()
		r.fill()
	}
	return n, nil
}

// WriteTo writes the object to w straight from the part buffers, saving the
// copy Read makes. io.Copy uses it. A digest mismatch is returned as the
// error after all bytes were written: the caller must treat them as bad.
func (r *reader) WriteTo(w io.Writer) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		if r.err == io.EOF {
			return 0, nil
		}
		return 0, r.err
	}
	var total int64
	for {
		p, err := r.head()
		if err != nil {
			r.err = err
			return total, err
		}
		if p == nil {
			r.err = r.end()
			if r.err == io.EOF {
				return total, nil
			}
			return total, r.err
		}
		n, werr := w.Write(p.data[p.pos:])
		p.pos += n
		total += int64(n)
		if werr != nil {
			return total, werr
		}
		if p.pos < len(p.data) {
			return total, io.ErrShortWrite
		}
	}
}

// Close cancels outstanding GETs and waits for them, so no goroutine is left
// writing into a buffer that goes back to the pool. It may be called while
// another goroutine is blocked in Read; that Read then fails.
func (r *reader) Close() error {
	// Cancel before taking the lock: a Read holding it is waiting for a
	// part, and only the cancellation makes it return.
	r.cancel(errClosed)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == errClosed {
		return nil
	}
	r.wg.Wait()
	for len(r.queue) > 0 {
		r.pop()
	}
	r.err = errClosed
	return nil
}
