package lazy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/store"
)

// CheckLayer checks layer's index in st is complete and rebuilds the
// layer: a v2 TOC, its data object of the size it says, every chunk
// matching its digest, and the tar rebuilt from them hashing to diffID
// (the image config's). It reads the whole data object. No index at all
// is ErrNoIndex; a v1 one, ErrUnverifiable; one that does not rebuild
// the layer, ErrMismatch or ErrCorruptChunk.
func CheckLayer(ctx context.Context, st *store.Store, layer, diffID digest.Digest) error {
	toc, _, err := FetchTOC(ctx, st, layer)
	if err != nil {
		return err
	}
	if !toc.Verifiable() {
		return fmt.Errorf("layer %s: %w (s3snap index rewrites it)", layer, ErrUnverifiable)
	}
	ra, err := st.ExtraReaderAt(ctx, toc.Key("data"), toc.DataSize)
	if err != nil {
		return err
	}
	// Read in large spans: each is one ranged read, split into parallel GETs.
	data := bufio.NewReaderSize(io.NewSectionReader(ra, 0, toc.DataSize), 16<<20)
	return toc.Verify(ctx, toc.DataStream(data), diffID)
}

// CheckImage checks the indexes of the layers of manifest d of repo (every
// child's, for an index) with CheckLayer: a tar layer of at least minSize
// bytes must have one; a smaller one's is checked if it is there. It
// returns every failure joined.
func CheckImage(ctx context.Context, st *store.Store, repo string, d digest.Digest, minSize int64) error {
	return eachLayer(ctx, st, repo, d, func(l ocispec.Descriptor, diffID digest.Digest) error {
		if !IsTarLayer(l.MediaType) {
			return nil
		}
		err := CheckLayer(ctx, st, l.Digest, diffID)
		if errors.Is(err, ErrNoIndex) && l.Size < minSize {
			return nil
		}
		if err != nil {
			return fmt.Errorf("lazy index of layer %s: %w", l.Digest, err)
		}
		return nil
	})
}
