package lazy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/store"
)

// FetchTOC reads and validates layer's TOC from st: the current format's,
// else a v1 one (which cannot be verified: TOC.Verifiable). No TOC (an
// index not built, or not finished) is an error wrapping ErrNoIndex; the
// encoded bytes are returned too, to keep a local copy.
func FetchTOC(ctx context.Context, st *store.Store, layer digest.Digest) (*TOC, []byte, error) {
	for v := Version; v >= MinVersion; v-- {
		toc, b, err := fetchTOC(ctx, st, v, layer)
		if errors.Is(err, ErrNoIndex) && v > MinVersion {
			continue
		}
		return toc, b, err
	}
	panic("unreachable")
}

// FetchVerifiableTOC is FetchTOC for a v2 TOC only, the kind that can
// rebuild its layer's tar: no v2 index is an error wrapping ErrNoIndex.
func FetchVerifiableTOC(ctx context.Context, st *store.Store, layer digest.Digest) (*TOC, error) {
	toc, _, err := fetchTOC(ctx, st, Version, layer)
	return toc, err
}

func fetchTOC(ctx context.Context, st *store.Store, v int, layer digest.Digest) (*TOC, []byte, error) {
	b, err := st.GetExtra(ctx, VersionKey(v, layer, "toc"), MaxTOCSize)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, fmt.Errorf("layer %s in %s: %w", layer, st.URL(), ErrNoIndex)
	}
	if err != nil {
		return nil, nil, err
	}
	toc, err := DecodeTOC(b)
	if err != nil {
		return nil, nil, err
	}
	if toc.Layer != layer || toc.Version != v {
		return nil, nil, fmt.Errorf("v%d toc stored for %s describes %.80s (v%d): %w", v, layer, toc.Layer, toc.Version, ErrInvalidIndex)
	}
	if err := checkDataSize(ctx, st, toc); err != nil {
		return nil, nil, err
	}
	return toc, b, nil
}

// checkDataSize checks toc's data object in st is the size the TOC says:
// a TOC describing another (or a truncated) data object is invalid. No
// data object at all is too: the TOC is written last.
func checkDataSize(ctx context.Context, st *store.Store, toc *TOC) error {
	size, err := st.StatExtra(ctx, toc.Key("data"))
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("layer %s in %s: toc without a data object: %w: %w", toc.Layer, st.URL(), ErrInvalidIndex, err)
	}
	if err != nil {
		return err
	}
	if size != toc.DataSize {
		return fmt.Errorf("layer %s in %s: data object of %d bytes, the toc says %d: %w", toc.Layer, st.URL(), size, toc.DataSize, ErrInvalidIndex)
	}
	return nil
}

// OpenData returns an OpenFunc reading toc's data object from st, bound to
// ctx (the mount's lifetime). It checks the object's size against the TOC
// first (one HEAD): the TOC may be a local copy, older than the bucket.
func OpenData(ctx context.Context, st *store.Store, toc *TOC) OpenFunc {
	return func() (io.ReaderAt, error) {
		if err := checkDataSize(ctx, st, toc); err != nil {
			return nil, err
		}
		return st.ExtraReaderAt(ctx, toc.Key("data"), toc.DataSize)
	}
}

// Result is what IndexLayer did for one layer.
type Result struct {
	Layer    digest.Digest `json:"layer"`
	DiffID   digest.Digest `json:"diffID,omitempty"`
	Existed  bool          `json:"existed"` // a valid index was already there
	Skipped  string        `json:"skipped,omitempty"`
	Entries  int           `json:"entries,omitempty"`
	Chunks   int           `json:"chunks,omitempty"`
	Size     int64         `json:"size,omitempty"`     // uncompressed file content
	DataSize int64         `json:"dataSize,omitempty"` // the data object
	TOCSize  int64         `json:"tocSize,omitempty"`  // the TOC object written
	Seconds  float64       `json:"seconds"`
	Error    string        `json:"error,omitempty"`
}

// IndexLayer builds layer's index in st unless a valid one is there: the
// blob is streamed from the bucket (its digest verified at the end), the
// data object uploaded while it is built, the TOC written last. diffID, if
// given, must match what the layer uncompresses to.
func IndexLayer(ctx context.Context, st *store.Store, layer, diffID digest.Digest, opts ...BuildOption) (Result, error) {
	start := time.Now()
	res := Result{Layer: layer}
	done := func(toc *TOC) {
		res.DiffID, res.Entries, res.Chunks, res.DataSize = toc.DiffID, len(toc.Entries), len(toc.Chunks), toc.DataSize
		res.Size = toc.StreamSize()
		res.Seconds = time.Since(start).Seconds()
	}
	// A v1 index is rebuilt: v2 can be verified.
	if toc, _, err := FetchTOC(ctx, st, layer); err == nil && toc.Verifiable() && (diffID == "" || toc.DiffID == diffID) {
		res.Existed = true
		done(toc)
		return res, nil
	} else if err != nil && !errors.Is(err, ErrNoIndex) && !errors.Is(err, ErrInvalidIndex) {
		return res, err
	}
	rc, _, err := st.OpenBlob(ctx, layer)
	if err != nil {
		return res, err
	}
	defer rc.Close()
	toc, err := UploadData(ctx, st, layer, rc, opts...)
	if err != nil {
		return res, err
	}
	if diffID != "" && toc.DiffID != diffID {
		return res, fmt.Errorf("layer %s uncompresses to %s, the image config says %s: %w", layer, toc.DiffID, diffID, store.ErrDigestMismatch)
	}
	if res.TOCSize, err = PutTOC(ctx, st, toc); err != nil {
		return res, err
	}
	done(toc)
	return res, nil
}

// UploadData builds layer's index from blob (the layer's bytes, verified
// by the caller's reader, which Build reads to its end) and uploads its
// data object to st as it is built; the TOC is returned, not written
// (PutTOC does, last). Memory stays bounded: chunks are compressed and
// uploaded as the blob streams through.
func UploadData(ctx context.Context, st *store.Store, layer digest.Digest, blob io.Reader, opts ...BuildOption) (*TOC, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	uploaded := make(chan error, 1)
	go func() {
		err := st.PutExtra(ctx, Key(layer, "data"), pr)
		pr.CloseWithError(fmt.Errorf("upload ended: %w", err)) // unblock the builder if it failed
		uploaded <- err
	}()
	toc, err := Build(ctx, layer, blob, pw, opts...)
	if err != nil {
		pw.CloseWithError(err) // the upload is aborted, nothing completes
		<-uploaded
		return nil, err
	}
	pw.Close()
	if err := <-uploaded; err != nil {
		return nil, fmt.Errorf("upload index data of %s: %w: %w", layer, ErrWrite, err)
	}
	return toc, nil
}

// PutTOC writes toc to st, completing its index, and returns its encoded
// size. A TOC the loader would reject is never written.
func PutTOC(ctx context.Context, st *store.Store, toc *TOC) (int64, error) {
	b, err := toc.Encode()
	if err != nil {
		return 0, err
	}
	if _, err := DecodeTOC(b); err != nil {
		return 0, fmt.Errorf("built an unreadable toc for %s: %w", toc.Layer, err)
	}
	if err := st.PutExtra(ctx, toc.Key("toc"), bytes.NewReader(b)); err != nil {
		return 0, fmt.Errorf("upload index toc of %s: %w: %w", toc.Layer, ErrWrite, err)
	}
	return int64(len(b)), nil
}

// IndexImage builds the missing indexes of every layer of the manifest d
// of repo (every child's, for an index), each layer once. progress, if
// set, is called after each layer. It goes on past a failed layer and
// returns every result with an error joining the failures.
func IndexImage(ctx context.Context, st *store.Store, repo string, d digest.Digest, progress func(Result), opts ...BuildOption) ([]Result, error) {
	var results []Result
	err := eachLayer(ctx, st, repo, d, func(l ocispec.Descriptor, diffID digest.Digest) error {
		var (
			res Result
			err error
		)
		if !IsTarLayer(l.MediaType) {
			res = Result{Layer: l.Digest, Skipped: "media type " + l.MediaType + " is not a tar layer"}
		} else if res, err = IndexLayer(ctx, st, l.Digest, diffID, opts...); err != nil {
			res.Error = err.Error()
			err = fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		results = append(results, res)
		if progress != nil {
			progress(res)
		}
		return err
	})
	return results, err
}

// eachLayer calls fn with every layer of the manifest d of repo (every
// child's, for an index), each layer once, and its diff ID. It goes on
// past a failure and returns every one joined.
func eachLayer(ctx context.Context, st *store.Store, repo string, d digest.Digest, fn func(l ocispec.Descriptor, diffID digest.Digest) error) error {
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
			if seen[l.Digest] {
				continue
			}
			seen[l.Digest] = true
			if err := fn(l, ids[i]); err != nil {
				errs = append(errs, err)
			}
		}
		return nil
	}
	if err := walk(d, 0); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// diffIDs reads an image's config for its layers' diff IDs.
func diffIDs(ctx context.Context, st *store.Store, m *ocispec.Manifest) ([]digest.Digest, error) {
	cfg, err := st.ImageConfig(ctx, m.Config.Digest)
	if err != nil {
		return nil, err
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("config %s has %d diff ids for %d layers: %w", m.Config.Digest, len(cfg.RootFS.DiffIDs), len(m.Layers), store.ErrInvalidManifest)
	}
	return cfg.RootFS.DiffIDs, nil
}

// IsTarLayer reports whether a layer media type is a (compressed) tar.
func IsTarLayer(mt string) bool {
	if strings.Contains(mt, "nondistributable") {
		return false // never in a registry, so never in the bucket
	}
	return strings.HasPrefix(mt, "application/vnd.oci.image.layer.") || strings.HasPrefix(mt, "application/vnd.docker.image.rootfs.diff.tar")
}
