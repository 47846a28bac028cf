package lazy

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
)

// ErrBadLayer is what every read of a layer that failed verification
// returns (the mount answers EIO).
var ErrBadLayer = errors.New("lazy layer failed verification")

// MarkBad makes every later read of the layer fail with an error wrapping
// ErrBadLayer and cause.
func (l *Layer) MarkBad(cause error) {
	err := fmt.Errorf("layer %s: %w: %w", l.toc.Layer, ErrBadLayer, cause)
	l.bad.Store(&err)
}

// Bad returns why the layer was marked bad, or nil.
func (l *Layer) Bad() error {
	if bad := l.bad.Load(); bad != nil {
		return *bad
	}
	return nil
}

// Stream returns the layer's uncompressed data stream, read in order
// through the cache (fetching what is missing), whether or not the layer
// is marked bad.
func (l *Layer) Stream() io.Reader {
	return io.NewSectionReader(streamReaderAt{l}, 0, l.toc.StreamSize())
}

type streamReaderAt struct{ l *Layer }

func (s streamReaderAt) ReadAt(p []byte, off int64) (int, error) {
	return s.l.readFileAt(p, off, off+int64(len(p)))
}

// Verify checks the layer is the one whose diff ID is diffID, the diff ID
// the image config names (the one its chain ID was computed from): it
// rebuilds the layer's tar from the TOC and the chunks (cached ones read
// from disk, the rest fetched) and hashes it. It is meant to run once the
// background prefetch has the whole layer. On a mismatch (ErrMismatch) the
// layer is marked bad, so every read fails from then on, and counted in
// s3snap_lazy_verify_failures_total. A v1 TOC cannot be checked:
// ErrUnverifiable, counted in s3snap_lazy_unverified_layers_total. Any
// other error (S3 unreachable, ctx cancelled) leaves the layer as it was.
func (l *Layer) Verify(ctx context.Context, diffID digest.Digest) error {
	return l.VerifyStream(ctx, l.Stream(), diffID)
}

// VerifyStream is Verify over the layer's uncompressed data stream read
// from stream instead of through the cache: for a layer the chunk cache
// cannot hold whole, whose data object is then streamed once
// (TOC.ParallelStream) rather than evict what mounted layers read.
func (l *Layer) VerifyStream(ctx context.Context, stream io.Reader, diffID digest.Digest) error {
	err := l.toc.Verify(ctx, stream, diffID)
	switch {
	case err == nil:
		layersVerified.Inc()
	case errors.Is(err, ErrUnverifiable):
		layersUnverified.Inc()
	case errors.Is(err, ErrMismatch), errors.Is(err, ErrInvalidIndex):
		verifyFailures.Inc()
		l.MarkBad(err)
	}
	return err
}
