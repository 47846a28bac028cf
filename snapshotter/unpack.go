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

	"github.com/s3snap/s3snap/internal/iox"
	"github.com/s3snap/s3snap/internal/untar"
	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/store"
)

// staged is a layer unpacked into an active, parentless snapshot.
type staged struct {
	key    string        // the active snapshot's key
	dir    string        // its upper directory, holding the layer's files
	dirs   []string      // implicit directories, to inherit from the parent
	diffID digest.Digest // what the unpacked tar hashed to
	bytes  int64         // bytes fetched (the blob's, or the index data's)
	store  string        // the store it came from, for metrics
	source string        // "index" or "blob"
}

// unpackLayer fetches layer d from st into a new parentless active snapshot
// of sn and returns it with the digest its tar hashed to. Where st holds a
// v2 lazy index of the layer, the files are made from it: its zstd chunks
// fetched and decoded in parallel, the layer's tar rebuilt from them, no
// gzip. Nothing in the index is trusted but what the rebuilt tar hashes to,
// which the caller checks against the chain ID like any unpack; an index
// that fails (damaged, not the layer's) is left for the layer's blob.
func unpackLayer(ctx context.Context, sn snapshots.Snapshotter, st *store.Store, d digest.Digest) (*staged, error) {
	toc, err := lazy.FetchVerifiableTOC(ctx, st, d)
	return unpackLayerWith(ctx, sn, st, d, toc, err)
}

// unpackLayerWith is unpackLayer once layer d's v2 index has been looked
// up: toc, or tocErr (lazy.ErrNoIndex if there is none).
func unpackLayerWith(ctx context.Context, sn snapshots.Snapshotter, st *store.Store, d digest.Digest, toc *lazy.TOC, tocErr error) (*staged, error) {
	err := tocErr
	if err == nil {
		var sl *staged
		if sl, err = unpackIndexed(ctx, sn, st, d, toc); err == nil {
			return sl, nil
		}
	}
	if !errors.Is(err, lazy.ErrNoIndex) && ctx.Err() == nil {
		log.G(ctx).WithError(err).WithField("layer", d).Warn("unpack from the lazy index failed; unpacking the layer blob")
		indexUnpackFailures.Inc()
	}
	return unpackBlob(ctx, sn, st, d)
}

// unpackIndexed unpacks layer d from toc, its v2 lazy index in st.
func unpackIndexed(ctx context.Context, sn snapshots.Snapshotter, st *store.Store, d digest.Digest, toc *lazy.TOC) (_ *staged, retErr error) {
	ra, err := st.ExtraReaderAt(ctx, toc.Key("data"), toc.DataSize)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	s, err := newStage(ctx, sn, d)
	if err != nil {
		return nil, err
	}
	defer s.dropUnless(ctx, &retErr)
	stream := toc.ParallelStream(ctx, ra, 0)
	defer stream.Close()
	tr, err := toc.TarReader(stream)
	if err != nil {
		return nil, err
	}
	diffID, dirs, err := extract(ctx, s.dir, tr)
	if err != nil {
		return nil, fmt.Errorf("unpack layer %s from its index: %w", d, err)
	}
	if diffID != toc.DiffID {
		return nil, fmt.Errorf("layer %s: its index rebuilds a tar of %s, the index says %s: %w", d, diffID, toc.DiffID, lazy.ErrMismatch)
	}
	sl := &staged{key: s.key, dir: s.dir, dirs: dirs, diffID: diffID, bytes: toc.DataSize, store: st.URL(), source: "index"}
	unpackSeconds.Observe(time.Since(start).Seconds())
	log.G(ctx).WithField("layer", d).WithField("bytes", sl.bytes).WithField("took", time.Since(start)).Debug("layer unpacked from its lazy index")
	return sl, nil
}

// unpackBlob unpacks layer d from its blob in st, converting overlay
// whiteouts. The compressed digest is verified by the store's reader.
func unpackBlob(ctx context.Context, sn snapshots.Snapshotter, st *store.Store, d digest.Digest) (_ *staged, retErr error) {
	start := time.Now()
	s, err := newStage(ctx, sn, d)
	if err != nil {
		return nil, err
	}
	defer s.dropUnless(ctx, &retErr)

	rc, info, err := st.OpenBlob(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("open layer %s: %w", d, err)
	}
	counted := &iox.CountingReader{R: rc}
	// compression uses igzip, else unpigz, when on PATH, as containerd
	// does: then a goroutine of os/exec's feeds it from blob, and may
	// still be reading when an unpack that failed reads the rest itself
	// (blobError), or when rc is closed.
	blob := &iox.LockedReader{R: counted}
	defer func() {
		blob.Lock()
		defer blob.Unlock()
		rc.Close()
	}()
	ds, err := compression.DecompressStream(blob)
	if err != nil {
		return nil, fmt.Errorf("decompress layer %s: %w", d, err)
	}
	defer ds.Close()
	diffID, dirs, err := extract(ctx, s.dir, ds)
	if err != nil {
		return nil, blobError(fmt.Errorf("unpack layer %s: %w", d, err), blob)
	}
	// Read the compressed stream to its end so the store's reader
	// verifies the layer's digest.
	if _, err := io.Copy(io.Discard, blob); err != nil {
		return nil, fmt.Errorf("read layer %s: %w", d, err)
	}
	blob.Lock()
	read := counted.N
	blob.Unlock()
	if read != info.Size {
		return nil, fmt.Errorf("layer %s: read %d of %d bytes: %w", d, read, info.Size, store.ErrSizeMismatch)
	}
	sl := &staged{key: s.key, dir: s.dir, dirs: dirs, diffID: diffID, bytes: read, store: st.URL(), source: "blob"}
	unpackSeconds.Observe(time.Since(start).Seconds())
	log.G(ctx).WithField("layer", d).WithField("bytes", sl.bytes).WithField("took", time.Since(start)).Debug("layer unpacked from s3")
	return sl, nil
}

// stage is a new parentless active snapshot a layer is unpacked into.
type stage struct {
	sn       snapshots.Snapshotter
	key, dir string
}

func newStage(ctx context.Context, sn snapshots.Snapshotter, d digest.Digest) (*stage, error) {
	key := stagePrefix + d.Encoded() + "-" + uniquePart()
	mounts, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(map[string]string{labelStagedLayer: d.String()}))
	if err != nil {
		return nil, fmt.Errorf("prepare staging snapshot for %s: %w", d, err)
	}
	dir, err := upperDir(mounts)
	if err != nil {
		removeSnapshot(ctx, sn, key)
		return nil, err
	}
	return &stage{sn: sn, key: key, dir: dir}, nil
}

// dropUnless removes the staging snapshot if *errp is set: nothing
// half-written survives a failed unpack.
func (s *stage) dropUnless(ctx context.Context, errp *error) {
	if *errp != nil {
		removeSnapshot(ctx, s.sn, s.key)
	}
}

// extract unpacks the tar stream r into dir, the staging snapshot's upper
// directory: new, empty and ours alone, which is what lets untar create
// its files with archive.Apply's semantics at a fraction of its cost. It
// returns the digest of the whole stream (what follows the end-of-archive
// marker included) and the implicit directories.
func extract(ctx context.Context, dir string, r io.Reader) (digest.Digest, []string, error) {
	h := sha256.New()
	rec := newDirRecorder()
	record := untar.WithFilter(func(hdr *tar.Header) (bool, error) {
		return true, rec.add(hdr.Name, hdr.Typeflag == tar.TypeDir)
	})
	// Hashed on a goroutine of its own: the tar's reader is a layer's
	// one serial step.
	hr := iox.HashAhead(r, h)
	defer hr.Close()
	if err := untar.Apply(ctx, dir, hr, record); err != nil {
		return "", nil, err
	}
	if _, err := io.Copy(io.Discard, hr); err != nil {
		return "", nil, err
	}
	return digest.NewDigest(digest.SHA256, h), rec.implicit(), nil
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
