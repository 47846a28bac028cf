package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/store"
)

// Kind is a kind of image source `s3snap push` reads; DetectKind tells them
// apart.
type Kind int

// The kinds of image source.
const (
	KindUnknown Kind = iota
	// KindLayoutDir is an OCI image layout directory.
	KindLayoutDir
	// KindOCIArchive is a tar of an OCI image layout: what `docker buildx
	// build --output type=oci` writes, and `docker save` from Docker 25 on
	// (which adds a manifest.json).
	KindOCIArchive
	// KindDockerArchive is a `docker save` tar from before Docker 25:
	// manifest.json, a <id>.json config and uncompressed layer tars.
	KindDockerArchive
	// KindRegistry is a docker://HOST/REPO[:TAG|@DIGEST] reference.
	KindRegistry
)

func (k Kind) String() string {
	switch k {
	case KindLayoutDir:
		return "oci-layout"
	case KindOCIArchive:
		return "oci-archive"
	case KindDockerArchive:
		return "docker-archive"
	case KindRegistry:
		return "registry"
	}
	return "unknown"
}

var (
	// ErrArchive is returned for a tar that is not a usable image archive:
	// malformed or truncated, compressed, with an entry whose name escapes
	// the archive, or with neither index.json nor manifest.json.
	ErrArchive = errors.New("bad image archive")
	// ErrUnknownSource is returned by DetectKind for something that is no
	// kind of image source.
	ErrUnknownSource = errors.New("not an image source")
)

// sourceHint lists what push reads, for error messages.
const sourceHint = "want an OCI image layout directory, a tar of one (buildx --output type=oci), a docker save tar, or docker://HOST/REPO:TAG"

// DetectKind tells what src is: docker://... a registry reference; a
// directory with index.json an OCI layout; a tar with index.json an OCI
// archive (whatever else it holds); a tar with only manifest.json a legacy
// docker save. Anything else is an error wrapping ErrUnknownSource or
// ErrArchive.
func DetectKind(src string) (Kind, error) {
	if scheme, _, ok := strings.Cut(src, "://"); ok {
		if scheme == "docker" { // registry.SchemeDocker; the registry client reads it
			return KindRegistry, nil
		}
		return KindUnknown, fmt.Errorf("%q: unknown scheme %q (%s): %w", src, scheme, sourceHint, ErrUnknownSource)
	}
	fi, err := os.Stat(src)
	if errors.Is(err, fs.ErrNotExist) {
		return KindUnknown, fmt.Errorf("%s is not an OCI image layout or image tar: %w: %w", src, ErrUnknownSource, err)
	}
	if err != nil {
		return KindUnknown, fmt.Errorf("image source %s: %w", src, err)
	}
	if fi.IsDir() {
		if _, err := os.Stat(filepath.Join(src, "index.json")); err != nil {
			return KindUnknown, fmt.Errorf("%s is not an OCI image layout (no index.json; `crane pull --format oci REF DIR` writes one): %w: %w", src, ErrUnknownSource, err)
		}
		return KindLayoutDir, nil
	}
	if !fi.Mode().IsRegular() {
		return KindUnknown, fmt.Errorf("%s is neither a directory nor a file (%s): %w", src, sourceHint, ErrUnknownSource)
	}
	t, err := openTar(src)
	if err != nil {
		return KindUnknown, err
	}
	defer t.Close()
	return t.kind()
}

// maxConfigSize bounds an image config read into memory (they are a few KiB;
// a history of thousands of steps is still far below).
const maxConfigSize = 64 << 20

// tarFile is a tar archive indexed by entry name, its entries served
// straight out of the file by offset: nothing is extracted.
type tarFile struct {
	path    string
	f       *os.File
	entries map[string]tarEntry
}

// tarEntry is where one entry's data lies, or what it links to.
type tarEntry struct {
	off, size int64
	// link is the archive path a symlink or hard link points at.
	link string
}

// openTar indexes the tar at p: reading only headers, seeking over data.
func openTar(p string) (*tarFile, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("open image tar: %w", err)
	}
	t := &tarFile{path: p, f: f, entries: map[string]tarEntry{}}
	if err := t.index(); err != nil {
		f.Close()
		return nil, err
	}
	return t, nil
}

func (t *tarFile) Close() error { return t.f.Close() }

func (t *tarFile) errorf(format string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", t.path, fmt.Sprintf(format, args...), ErrArchive)
}

func (t *tarFile) index() error {
	var magic [4]byte
	n, _ := io.ReadFull(t.f, magic[:])
	switch {
	case n >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		return t.errorf("gzip-compressed; decompress it first (gunzip), a plain tar is read in place")
	case n == 4 && bytes.Equal(magic[:], []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return t.errorf("zstd-compressed; decompress it first (zstd -d), a plain tar is read in place")
	}
	fi, err := t.f.Stat()
	if err != nil {
		return err
	}
	// A SectionReader seeks, so tar skips entry data instead of reading
	// it, and the position after Next is where the entry's data starts.
	sr := io.NewSectionReader(t.f, 0, fi.Size())
	tr := tar.NewReader(sr)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil && !errors.Is(err, tar.ErrInsecurePath) {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return t.errorf("truncated tar (it ends inside an entry)")
			}
			return t.errorf("not a valid tar: %v", err)
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return t.errorf("%v", err)
		}
		switch hdr.Typeflag {
		case tar.TypeReg:
			for k := range hdr.PAXRecords {
				if strings.HasPrefix(k, "GNU.sparse.") {
					return t.errorf("entry %q is a sparse file, which image tars never hold", hdr.Name)
				}
			}
			off, err := sr.Seek(0, io.SeekCurrent)
			if err != nil {
				return err
			}
			if off+hdr.Size > fi.Size() {
				return t.errorf("truncated tar (entry %q ends past the end of the file)", hdr.Name)
			}
			t.entries[name] = tarEntry{off: off, size: hdr.Size}
		case tar.TypeSymlink, tar.TypeLink:
			target := hdr.Linkname
			if hdr.Typeflag == tar.TypeSymlink && !path.IsAbs(target) {
				target = path.Join(path.Dir(name), target)
			}
			resolved, err := cleanName(target)
			if err != nil {
				return t.errorf("link %q: %v", hdr.Name, err)
			}
			t.entries[name] = tarEntry{link: resolved}
		case tar.TypeGNUSparse:
			return t.errorf("entry %q is a sparse file, which image tars never hold", hdr.Name)
		default:
			// Directories and the like hold no image content.
		}
	}
	if len(t.entries) == 0 {
		return t.errorf("an empty tar, or not a tar at all (%s)", sourceHint)
	}
	return nil
}

// cleanName makes an entry name an archive path ("./blobs//x" is
// "blobs/x"), refusing names that leave the archive: a reader extracting it
// would write outside its directory, so such a tar is not trusted at all.
func cleanName(n string) (string, error) {
	if n == "" || path.IsAbs(n) || strings.Contains(n, `\`) {
		return "", fmt.Errorf("entry name %q is absolute or not a plain relative path", n)
	}
	c := path.Clean(n)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("entry name %q escapes the archive (path traversal)", n)
	}
	return c, nil
}

// kind classifies the archive by the files at its root.
func (t *tarFile) kind() (Kind, error) {
	if _, ok := t.entries["index.json"]; ok {
		return KindOCIArchive, nil
	}
	if _, ok := t.entries["manifest.json"]; ok {
		return KindDockerArchive, nil
	}
	return KindUnknown, t.errorf("neither index.json (an OCI layout) nor manifest.json (docker save) at its root (%s)", sourceHint)
}

// lookup finds name, following links.
func (t *tarFile) lookup(name string) (tarEntry, bool) {
	for range 16 {
		e, ok := t.entries[name]
		if !ok || e.link == "" {
			return e, ok
		}
		name = e.link
	}
	return tarEntry{}, false
}

// open returns the data of entry name.
func (t *tarFile) open(name string) (*io.SectionReader, error) {
	e, ok := t.lookup(name)
	if !ok {
		return nil, fmt.Errorf("%s: no %s in the archive: %w", t.path, name, store.ErrNotFound)
	}
	return io.NewSectionReader(t.f, e.off, e.size), nil
}

// readAll reads entry name whole, refusing more than limit bytes.
func (t *tarFile) readAll(name string, limit int64) ([]byte, error) {
	r, err := t.open(name)
	if err != nil {
		return nil, err
	}
	if r.Size() > limit {
		return nil, t.errorf("%s is %d bytes, more than the %d allowed", name, r.Size(), limit)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: read %s: %w", t.path, name, err)
	}
	return b, nil
}

// Archive is an image tar as a copy Source: an OCI layout tar served in
// place, or a legacy docker save tar made into an image (see
// openDockerArchive). It is safe for concurrent use; Close it.
type Archive struct {
	t    *tarFile
	kind Kind
	root ocispec.Descriptor
	// Entries are the images the archive lists (index.json's manifests).
	Entries []ocispec.Descriptor

	docker *dockerImage // KindDockerArchive
}

// OpenArchive opens the image tar at p (KindOCIArchive or
// KindDockerArchive) and selects its root: the image named ref (an OCI
// ref.name annotation, or a docker save RepoTag), or the first one.
func OpenArchive(ctx context.Context, p, ref string) (*Archive, error) {
	t, err := openTar(p)
	if err != nil {
		return nil, err
	}
	a := &Archive{t: t}
	if a.kind, err = t.kind(); err == nil {
		if a.kind == KindOCIArchive {
			err = a.openOCI(ref)
		} else {
			err = a.openDocker(ctx, ref)
		}
	}
	if err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// Kind is KindOCIArchive or KindDockerArchive.
func (a *Archive) Kind() Kind { return a.kind }

// Close closes the file and removes anything made for a legacy docker save.
func (a *Archive) Close() error {
	if a.docker != nil {
		a.docker.remove()
	}
	return a.t.Close()
}

func (a *Archive) openOCI(ref string) error {
	raw, err := a.t.readAll("index.json", maxManifestSize)
	if err != nil {
		return err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(raw, &idx); err != nil {
		return a.t.errorf("index.json is not an OCI index: %v", err)
	}
	a.Entries = idx.Manifests
	a.root, err = selectRoot(a.Entries, ref)
	if err != nil {
		return fmt.Errorf("%s: %w", a.t.path, err)
	}
	return nil
}

// Root is the selected image.
func (a *Archive) Root(context.Context) (ocispec.Descriptor, error) { return a.root, nil }

// Manifest reads blobs/sha256/<hex> (or the manifest made for a docker
// save).
func (a *Archive) Manifest(_ context.Context, d digest.Digest) ([]byte, error) {
	if a.docker != nil {
		if d == a.root.Digest {
			return a.docker.manifest, nil
		}
		return nil, fmt.Errorf("%s: no manifest %s: %w", a.t.path, d, store.ErrNotFound)
	}
	name, err := blobPath(d)
	if err != nil {
		return nil, err
	}
	return a.t.readAll(name, maxManifestSize)
}

// Blob opens a config or layer. Its bytes are checked against desc as they
// are read: a damaged archive fails at the end of the blob, naming it.
func (a *Archive) Blob(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if a.docker != nil {
		return a.openDockerBlob(desc)
	}
	name, err := blobPath(desc.Digest)
	if err != nil {
		return nil, err
	}
	r, err := a.t.open(name)
	if err != nil {
		return nil, err
	}
	if desc.Size >= 0 && r.Size() != desc.Size {
		return nil, fmt.Errorf("%s: %s is %d bytes, the manifest says %d: %w: %w", a.t.path, name, r.Size(), desc.Size, ErrArchive, store.ErrSizeMismatch)
	}
	return &checkedReader{r: r, v: desc.Digest.Verifier(), what: a.t.path + ": " + name}, nil
}

// blobPath is where an OCI layout keeps blob d.
func blobPath(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("digest %q: %w: %v", d, store.ErrInvalidName, err)
	}
	return path.Join("blobs", d.Algorithm().String(), d.Encoded()), nil
}

// checkedReader returns an error instead of io.EOF when what it read does not
// hash to the digest.
type checkedReader struct {
	r    io.Reader
	v    digest.Verifier
	what string
}

func (c *checkedReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.v.Write(p[:n])
	if err == io.EOF && !c.v.Verified() {
		return n, fmt.Errorf("%s does not hash to its digest (a damaged archive): %w: %w", c.what, ErrArchive, store.ErrDigestMismatch)
	}
	return n, err
}

func (c *checkedReader) Close() error { return nil }
