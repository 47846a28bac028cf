package lazy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"

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
	var errs []error
	seen := map[digest.Digest]bool{}
	var walk func(d digest.Digest, depth int) error
	walk = func(d digest.Digest, depth int) error {
		m, err := st.GetManifest(ctx, repo, d)
		if err != nil {
			return err
		}
		if m.Index != nil {
			if depth > 4 {
				return fmt.Errorf("manifest %s: indexes nested too deep", d)
			}
			for _, c := range m.Index.Manifests {
				if err := walk(c.Digest, depth+1); err != nil {
					errs = append(errs, fmt.Errorf("index child %s: %w", c.Digest, err))
				}
			}
			return nil
		}
		ids, err := diffIDs(ctx, st, m.Image)
		if err != nil {
			return err
		}
		for i, l := range m.Image.Layers {
			if seen[l.Digest] || !IsTarLayer(l.MediaType) {
				continue
			}
			seen[l.Digest] = true
			err := CheckLayer(ctx, st, l.Digest, ids[i])
			if errors.Is(err, ErrNoIndex) && l.Size < minSize {
				continue
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("lazy index of layer %s: %w", l.Digest, err))
			}
		}
		return nil
	}
	if err := walk(d, 0); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
