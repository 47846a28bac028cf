package migrator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"

	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/store"
)

// DefaultLazyIndexMinSize is the smallest layer LazyIndexer indexes by
// default: a smaller one unpacks in about the time its index would take
// to mount.
const DefaultLazyIndexMinSize = 10 << 20

// LazyIndexer builds the lazy-pull index (lazy.Build, format v2) of every
// tar layer of at least a minimum size as it is copied into a store, from
// the same bytes: the blob's stream is teed into the builder, which
// uploads the index's data object as it goes, so the source is read once
// and memory stays bounded (the builder's chunks in flight; a slow
// builder slows the copy, never buffers it). The TOC is written once the
// blob is stored (its digest verified), before any manifest and so before
// the tag. A layer the copy finds already in the bucket is indexed from
// the bucket; one with a v2 index already is left alone. A layer that
// cannot be indexed (a sparse file, too many entries, a tar the reader
// rejects) is logged and skipped: it is still pulled, unpacked. Failing
// to write an index (lazy.ErrWrite) fails the image, as a failed copy.
type LazyIndexer struct {
	st      *store.Store
	minSize int64
	opts    []lazy.BuildOption
	flight  singleflight.Group // one index per layer at a time
}

// NewLazyIndexer indexes layers of at least minSize bytes copied into st.
func NewLazyIndexer(st *store.Store, minSize int64, opts ...lazy.BuildOption) *LazyIndexer {
	return &LazyIndexer{st: st, minSize: minSize, opts: opts}
}

// IndexedTarget is a Target that indexes the layers copied through it;
// it counts what it wrote.
type IndexedTarget struct {
	Target
	x       *LazyIndexer
	indexes atomic.Int64
	bytes   atomic.Int64
}

// Wrap returns dst (which must write into the indexer's store) indexing
// the layers copied through it. Use one per image to count its indexes.
func (x *LazyIndexer) Wrap(dst Target) *IndexedTarget { return &IndexedTarget{Target: dst, x: x} }

// Indexes is how many layer indexes were written through t; Bytes their
// data and TOC objects' bytes.
func (t *IndexedTarget) Indexes() int { return int(t.indexes.Load()) }

// Bytes is the size of the index objects written through t.
func (t *IndexedTarget) Bytes() int64 { return t.bytes.Load() }

// PutBlob copies the blob and, for a layer to index, builds its index.
func (t *IndexedTarget) PutBlob(ctx context.Context, repo string, desc ocispec.Descriptor, open Opener) (bool, error) {
	if desc.Size < t.x.minSize || !lazy.IsTarLayer(desc.MediaType) {
		return t.Target.PutBlob(ctx, repo, desc, open)
	}
	// Whoever copies a layer indexes it; the other images wait for both.
	v, err, _ := t.x.flight.Do(desc.Digest.String(), func() (any, error) {
		res, err := t.x.copyIndexed(ctx, t.Target, repo, desc, open)
		if res.built { // counted for the image that built it
			t.indexes.Add(1)
			t.bytes.Add(res.bytes)
		}
		return res, err
	})
	if err != nil {
		return false, err
	}
	return v.(indexResult).existed, nil
}

type indexResult struct {
	existed bool
	built   bool
	bytes   int64
}

// copyIndexed copies desc through dst and makes sure it has a v2 index.
func (x *LazyIndexer) copyIndexed(ctx context.Context, dst Destination, repo string, desc ocispec.Descriptor, open Opener) (indexResult, error) {
	if toc, _, err := lazy.FetchTOC(ctx, x.st, desc.Digest); err == nil && toc.Verifiable() {
		existed, err := dst.PutBlob(ctx, repo, desc, open)
		return indexResult{existed: existed}, err
	}
	var b *teeBuild
	existed, err := dst.PutBlob(ctx, repo, desc, func(ctx context.Context) (io.ReadCloser, error) {
		if b != nil {
			b.abort(errors.New("copy tried again")) // a retry builds anew
		}
		rc, err := open(ctx)
		if err != nil {
			return nil, err
		}
		b = x.start(ctx, desc.Digest)
		return b.tee(rc), nil
	})
	if err != nil {
		if b != nil {
			b.abort(err)
		}
		return indexResult{existed: existed}, err
	}
	var toc *lazy.TOC
	if b != nil {
		toc, err = b.finish()
	} else {
		// The blob was in the bucket already: index it from there.
		var res lazy.Result
		if res, err = lazy.IndexLayer(ctx, x.st, desc.Digest, "", x.opts...); err == nil {
			return indexResult{existed: existed, built: !res.Existed, bytes: res.DataSize + res.TOCSize}, nil
		}
	}
	if err != nil {
		// The blob is stored and verified: what the index could not be
		// built from is the layer's matter (a sparse file, a tar the
		// reader rejects), not the copy's.
		if ctx.Err() == nil && !errors.Is(err, lazy.ErrWrite) {
			log.G(ctx).WithError(err).WithField("layer", desc.Digest).Warn("layer not indexed for lazy pulls; it is unpacked when pulled")
			return indexResult{existed: existed}, nil
		}
		return indexResult{existed: existed}, fmt.Errorf("lazy index of layer %s: %w", desc.Digest, err)
	}
	n, err := lazy.PutTOC(ctx, x.st, toc)
	if err != nil {
		return indexResult{existed: existed}, fmt.Errorf("lazy index of layer %s: %w", desc.Digest, err)
	}
	return indexResult{existed: existed, built: true, bytes: toc.DataSize + n}, nil
}

// teeBuild is an index being built from a copy's stream.
type teeBuild struct {
	pw     *io.PipeWriter
	done   chan struct{}
	toc    *lazy.TOC
	err    error
	cancel context.CancelFunc

	mu     sync.Mutex
	failed bool // the builder stopped reading: the copy goes on without it
}

func (x *LazyIndexer) start(ctx context.Context, layer digest.Digest) *teeBuild {
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	b := &teeBuild{pw: pw, done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(b.done)
		b.toc, b.err = lazy.UploadData(ctx, x.st, layer, pr, x.opts...)
		pr.CloseWithError(b.err) // a failed build unblocks the copy's writes
	}()
	return b
}

// tee returns rc, every byte read also given to the builder.
func (b *teeBuild) tee(rc io.ReadCloser) io.ReadCloser { return &teeReader{rc, b} }

type teeReader struct {
	io.ReadCloser
	b *teeBuild
}

func (r *teeReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if n > 0 {
		r.b.write(p[:n])
	}
	return n, err
}

func (b *teeBuild) write(p []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.failed {
		if _, err := b.pw.Write(p); err != nil {
			b.failed = true
		}
	}
}

// finish ends the stream (the blob was stored, its digest verified) and
// returns the built TOC.
func (b *teeBuild) finish() (*lazy.TOC, error) {
	b.mu.Lock()
	b.pw.Close()
	b.mu.Unlock()
	<-b.done
	b.cancel()
	if b.toc == nil {
		return nil, b.err
	}
	return b.toc, nil
}

// abort stops the build; nothing of it completes.
func (b *teeBuild) abort(err error) {
	b.pw.CloseWithError(err)
	b.cancel()
	<-b.done
}
