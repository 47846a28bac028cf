package snapshotter

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/internal/untar"
	"github.com/s3snap/s3snap/store"
)

// staged is a layer unpacked into an active, parentless snapshot.
type staged struct {
	key    string        // the active snapshot's key
	dir    string        // its upper directory, holding the layer's files
	dirs   []string      // implicit directories, to inherit from the parent
	diffID digest.Digest // what the unpacked tar hashed to
	bytes  int64         // compressed bytes fetched
	store  string        // the store it came from, for metrics
}

// unpackLayer fetches layer d from st into a new parentless active snapshot
// of sn, converting overlay whiteouts, and returns it with the uncompressed
// digest. The compressed digest is verified by the store's reader; on any
// error the snapshot is removed, so nothing half-written survives.
func unpackLayer(ctx context.Context, sn snapshots.Snapshotter, st *store.Store, d digest.Digest) (_ *staged, retErr error) {
	start := time.Now()
	key := stagePrefix + d.Encoded() + "-" + uniquePart()
	mounts, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(map[string]string{labelStagedLayer: d.String()}))
	if err != nil {
		return nil, fmt.Errorf("prepare staging snapshot for %s: %w", d, err)
	}
	defer func() {
		if retErr != nil {
			if err := sn.Remove(context.WithoutCancel(ctx), key); err != nil {
				log.G(ctx).WithError(err).WithField("key", key).Warn("remove failed staging snapshot")
			}
		}
	}()
	dir, err := upperDir(mounts)
	if err != nil {
		return nil, err
	}

	rc, info, err := st.OpenBlob(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("open layer %s: %w", d, err)
	}
	defer rc.Close()
	counted := &countingReader{r: rc}
	ds, err := compression.DecompressStream(counted)
	if err != nil {
		return nil, fmt.Errorf("decompress layer %s: %w", d, err)
	}
	defer ds.Close()
	h := sha256.New()
	tr := io.TeeReader(ds, h)
	rec := newDirRecorder()
	record := untar.WithFilter(func(hdr *tar.Header) (bool, error) {
		return true, rec.add(hdr.Name, hdr.Typeflag == tar.TypeDir)
	})
	// The staging snapshot is new, empty and ours alone: untar creates its
	// files with archive.Apply's semantics at a fraction of its cost.
	if err := untar.Apply(ctx, dir, tr, record); err != nil {
		return nil, blobError(fmt.Errorf("unpack layer %s: %w", d, err), counted)
	}
	// The tar reader stops at the end-of-archive marker: hash the padding
	// after it, and read the compressed stream to its end so the store's
	// reader verifies the layer's digest.
	if _, err := io.Copy(h, ds); err != nil {
		return nil, blobError(fmt.Errorf("read layer %s: %w", d, err), counted)
	}
	if _, err := io.Copy(io.Discard, counted); err != nil {
		return nil, fmt.Errorf("read layer %s: %w", d, err)
	}
	if counted.n != info.Size {
		return nil, fmt.Errorf("layer %s: read %d of %d bytes: %w", d, counted.n, info.Size, store.ErrSizeMismatch)
	}
	s := &staged{key: key, dir: dir, dirs: rec.implicit(), diffID: digest.NewDigest(digest.SHA256, h), bytes: counted.n, store: st.URL()}
	unpackSeconds.Observe(time.Since(start).Seconds())
	log.G(ctx).WithField("layer", d).WithField("bytes", s.bytes).WithField("took", time.Since(start)).Debug("layer unpacked from s3")
	return s, nil
}

// blobError decides what an unpack or inflate failure was: the rest of
// the compressed blob is read, so the store's reader checks its digest. A
// blob that does not hash to its digest was damaged (a flipped byte that
// gzip's checksum caught, say): the error then wraps the digest mismatch,
// which nobody can forge, and not the codec's complaint. Otherwise the
// layer is intact and err stands as it is.
func blobError(err error, blob io.Reader) error {
	if _, derr := io.Copy(io.Discard, blob); derr != nil && (errors.Is(derr, store.ErrDigestMismatch) || errors.Is(derr, store.ErrSizeMismatch)) {
		return fmt.Errorf("%w (%w)", derr, err)
	}
	return err
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
