package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/store"
)

// maxManifestSize is the largest manifest a source may hand out; it is
// Distribution's own limit, which the store enforces too.
const maxManifestSize = 4 << 20

// annotationContainerdName is where containerd (and buildx) record an
// image's full name in an index.json.
const annotationContainerdName = "io.containerd.image.name"

// ErrRefNotFound is returned when an OCI layout holds no manifest with the
// asked-for name.
var ErrRefNotFound = fmt.Errorf("no such reference in OCI layout: %w", store.ErrNotFound)

// Layout is an OCI image layout directory (what `crane pull --format oci` or
// `docker buildx build --output type=oci,tar=false` write) as a Source.
type Layout struct {
	dir  string
	path layout.Path
	root ocispec.Descriptor
	// Entries are the manifests index.json lists.
	Entries []ocispec.Descriptor
}

// OpenLayout opens the OCI image layout in dir and selects its root: the
// manifest of index.json whose org.opencontainers.image.ref.name (or
// io.containerd.image.name) annotation is ref, or, with ref empty, the first
// one listed.
func OpenLayout(dir, ref string) (*Layout, error) {
	p, err := layout.FromPath(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s is not an OCI image layout (no index.json; `crane pull --format oci REF DIR` writes one): %w", dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open OCI layout %s: %w", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("open OCI layout %s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("open OCI layout %s: index.json: %w", dir, err)
	}
	l := &Layout{dir: dir, path: p}
	for _, d := range im.Manifests {
		l.Entries = append(l.Entries, fromV1(d))
	}
	root, err := selectRoot(l.Entries, ref)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	l.root = root
	return l, nil
}

// selectRoot picks the entry named ref (as written, or for a containerd
// image name the same reference spelt otherwise), or the first when ref is
// empty.
func selectRoot(entries []ocispec.Descriptor, ref string) (ocispec.Descriptor, error) {
	if len(entries) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("index.json lists no manifest: %w", ErrRefNotFound)
	}
	if ref == "" {
		return entries[0], nil
	}
	want, _ := name.ParseReference(ref)
	var names []string
	for _, e := range entries {
		for _, key := range []string{ocispec.AnnotationRefName, annotationContainerdName} {
			if n := e.Annotations[key]; n != "" {
				if n == ref {
					return e, nil
				}
				// docker save (25+) records docker.io/library/app:v1,
				// which users call app:v1.
				if got, err := name.ParseReference(n); key == annotationContainerdName && err == nil && want != nil && got.Name() == want.Name() {
					return e, nil
				}
				names = append(names, n)
			}
		}
	}
	if len(names) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("no manifest named %q (index.json has no %s annotations): %w", ref, ocispec.AnnotationRefName, ErrRefNotFound)
	}
	return ocispec.Descriptor{}, fmt.Errorf("no manifest named %q (it has %s): %w", ref, strings.Join(names, ", "), ErrRefNotFound)
}

// RefName is the root's name in index.json, if it has one.
func (l *Layout) RefName() string {
	if n := l.root.Annotations[ocispec.AnnotationRefName]; n != "" {
		return n
	}
	return l.root.Annotations[annotationContainerdName]
}

// Root is the selected index.json entry.
func (l *Layout) Root(context.Context) (ocispec.Descriptor, error) { return l.root, nil }

// Manifest reads blobs/sha256/<hex> whole (up to 4 MiB).
func (l *Layout) Manifest(_ context.Context, d digest.Digest) ([]byte, error) {
	rc, err := l.open(d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s from OCI layout %s: %w", d, l.dir, err)
	}
	if len(b) > maxManifestSize {
		return nil, fmt.Errorf("manifest %s in OCI layout %s is larger than %d bytes: %w", d, l.dir, maxManifestSize, store.ErrInvalidManifest)
	}
	return b, nil
}

// Blob opens blobs/sha256/<hex>.
func (l *Layout) Blob(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	return l.open(desc.Digest)
}

func (l *Layout) open(d digest.Digest) (io.ReadCloser, error) {
	h, err := v1.NewHash(d.String())
	if err != nil {
		return nil, fmt.Errorf("digest %q: %w: %v", d, store.ErrInvalidName, err)
	}
	rc, err := l.path.Blob(h)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s is not in OCI layout %s (incomplete layout?): %w", d, l.dir, err)
		}
		return nil, fmt.Errorf("open %s in OCI layout %s: %w", d, l.dir, err)
	}
	return rc, nil
}

// fromV1 converts a go-containerregistry descriptor to the OCI one.
func fromV1(d v1.Descriptor) ocispec.Descriptor {
	out := ocispec.Descriptor{
		MediaType:    string(d.MediaType),
		Digest:       digest.Digest(d.Digest.String()),
		Size:         d.Size,
		URLs:         d.URLs,
		Annotations:  d.Annotations,
		ArtifactType: d.ArtifactType,
	}
	if d.Platform != nil {
		out.Platform = &ocispec.Platform{
			Architecture: d.Platform.Architecture,
			OS:           d.Platform.OS,
			OSVersion:    d.Platform.OSVersion,
			OSFeatures:   d.Platform.OSFeatures,
			Variant:      d.Platform.Variant,
		}
	}
	return out
}
