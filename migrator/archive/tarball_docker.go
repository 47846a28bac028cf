package archive

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/s3snap/s3snap/internal/iox"
	"github.com/s3snap/s3snap/store"
)

// LegacyGzipLevel is how layers of a legacy docker save are compressed:
// go-containerregistry's level (what `crane push x.tar` uses), so the layer
// and manifest digests are the ones crane gives for the same tar, built with
// the same Go. compress/gzip with a fixed level and an empty header makes the
// same bytes on every run.
const LegacyGzipLevel = gzip.BestSpeed

// dockerImage is a legacy docker save image made pushable: its config byte
// for byte (so the image ID stays what docker says), each uncompressed layer
// gzip'd once into a temporary file, and the Docker schema 2 manifest
// go-containerregistry's tarball package makes for them.
type dockerImage struct {
	manifest     []byte
	config       []byte
	configDigest digest.Digest
	layers       map[digest.Digest]dockerLayer
	tmp          string
}

// dockerLayer is where a layer's compressed bytes are: a temporary file, or
// (a layer the tar already holds gzip'd) a tar entry.
type dockerLayer struct {
	file  string
	entry string
	size  int64
}

func (d *dockerImage) remove() {
	if d.tmp != "" {
		os.RemoveAll(d.tmp)
	}
}

// dockerConfig is the part of an image config the layers are checked
// against.
type dockerConfig struct {
	RootFS struct {
		DiffIDs []digest.Digest `json:"diff_ids"`
	} `json:"rootfs"`
}

func (a *Archive) openDocker(ctx context.Context, ref string) error {
	t := a.t
	raw, err := t.readAll("manifest.json", maxManifestSize)
	if err != nil {
		return err
	}
	var m tarball.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return t.errorf("manifest.json is not a docker save manifest: %v", err)
	}
	desc, err := selectDockerImage(m, ref)
	if err != nil {
		return fmt.Errorf("%s: %w", t.path, err)
	}
	cfgName, err := cleanName(desc.Config)
	if err != nil {
		return t.errorf("manifest.json: config: %v", err)
	}
	img := &dockerImage{layers: map[digest.Digest]dockerLayer{}}
	a.docker = img
	if img.config, err = t.readAll(cfgName, maxConfigSize); err != nil {
		return err
	}
	img.configDigest = digest.FromBytes(img.config)
	// docker names the config after its digest, the image ID.
	if want, ok := digestInName(cfgName); ok && want != img.configDigest {
		return fmt.Errorf("%s: config %s hashes to %s (a damaged archive): %w: %w", t.path, cfgName, img.configDigest, ErrArchive, store.ErrDigestMismatch)
	}
	var cfg dockerConfig
	if err := json.Unmarshal(img.config, &cfg); err != nil {
		return t.errorf("config %s is not an image config: %v", cfgName, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(desc.Layers) {
		return t.errorf("manifest.json lists %d layers, the config %d diff IDs", len(desc.Layers), len(cfg.RootFS.DiffIDs))
	}
	for id, src := range desc.LayerSources {
		// Docker 25 lists every layer here as uncompressed; anything else is
		// a foreign (Windows base) layer, which is never pushed.
		if src.MediaType != types.DockerUncompressedLayer && src.MediaType != types.OCIUncompressedLayer {
			return t.errorf("layer %s is a foreign layer (%s), which push does not support", id, src.MediaType)
		}
	}
	if img.tmp, err = os.MkdirTemp("", "s3snap-push-"); err != nil {
		return fmt.Errorf("temporary directory for compressed layers: %w", err)
	}

	descs := make([]v1.Descriptor, len(desc.Layers))
	where := make([]dockerLayer, len(desc.Layers))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i, l := range desc.Layers {
		g.Go(func() error {
			d, dl, err := a.compressLayer(gctx, l, cfg.RootFS.DiffIDs[i], img.tmp)
			if err != nil {
				return fmt.Errorf("%s: layer %d (%s): %w", t.path, i+1, l, err)
			}
			descs[i] = v1.Descriptor{MediaType: types.DockerLayer, Size: dl.size, Digest: d}
			where[i] = dl
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i, d := range descs {
		img.layers[digest.Digest(d.Digest.String())] = where[i]
	}

	// Built exactly as go-containerregistry's tarball.Image does, so the
	// digest is the one `crane push` gives for the same tar.
	cd, err := v1.NewHash(img.configDigest.String())
	if err != nil {
		return err
	}
	man := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.DockerManifestSchema2,
		Config:        v1.Descriptor{MediaType: types.DockerConfigJSON, Size: int64(len(img.config)), Digest: cd},
		Layers:        descs,
	}
	if img.manifest, err = json.Marshal(man); err != nil {
		return err
	}
	a.root = ocispec.Descriptor{MediaType: string(types.DockerManifestSchema2), Digest: digest.FromBytes(img.manifest), Size: int64(len(img.manifest))}
	if len(desc.RepoTags) > 0 {
		a.root.Annotations = map[string]string{ocispec.AnnotationRefName: desc.RepoTags[0]}
	}
	a.Entries = []ocispec.Descriptor{a.root}
	return nil
}

// compressLayer checks tar entry l against its diff ID and gzips it into dir
// as <digest>.gz, or, if it is gzip'd already, checks it and leaves it where
// it is.
func (a *Archive) compressLayer(ctx context.Context, l string, diffID digest.Digest, dir string) (v1.Hash, dockerLayer, error) {
	name, err := cleanName(l)
	if err != nil {
		return v1.Hash{}, dockerLayer{}, fmt.Errorf("%v: %w", err, ErrArchive)
	}
	r, err := a.t.open(name)
	if err != nil {
		return v1.Hash{}, dockerLayer{}, err
	}
	var magic [2]byte
	n, _ := r.ReadAt(magic[:], 0)
	if n == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		return a.checkGzipLayer(ctx, name, r, diffID)
	}
	f, err := os.CreateTemp(dir, "layer-")
	if err != nil {
		return v1.Hash{}, dockerLayer{}, err
	}
	defer os.Remove(f.Name()) // renamed into place on success
	defer f.Close()
	diff, comp := sha256.New(), sha256.New()
	cw := &countWriter{}
	zw, err := gzip.NewWriterLevel(io.MultiWriter(f, comp, cw), LegacyGzipLevel)
	if err != nil {
		return v1.Hash{}, dockerLayer{}, err
	}
	if _, err := io.Copy(zw, io.TeeReader(iox.ContextReader(ctx, r), diff)); err != nil {
		return v1.Hash{}, dockerLayer{}, fmt.Errorf("compress: %w", err)
	}
	if err := zw.Close(); err != nil {
		return v1.Hash{}, dockerLayer{}, fmt.Errorf("compress: %w", err)
	}
	if err := checkDiffID(diff.Sum(nil), diffID); err != nil {
		return v1.Hash{}, dockerLayer{}, err
	}
	if err := f.Close(); err != nil {
		return v1.Hash{}, dockerLayer{}, err
	}
	h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(comp.Sum(nil))}
	// Named by digest: the same layer listed twice is compressed twice
	// into the same bytes, and one file serves both.
	final := path.Join(dir, h.Hex+".gz")
	if err := os.Rename(f.Name(), final); err != nil {
		return v1.Hash{}, dockerLayer{}, err
	}
	return h, dockerLayer{file: final, size: cw.n}, nil
}

// checkGzipLayer checks a layer the tar holds gzip'd (crane and
// go-containerregistry write these): it is pushed as it is.
func (a *Archive) checkGzipLayer(ctx context.Context, name string, r *io.SectionReader, diffID digest.Digest) (v1.Hash, dockerLayer, error) {
	comp := sha256.New()
	zr, err := gzip.NewReader(io.TeeReader(iox.ContextReader(ctx, r), comp))
	if err != nil {
		return v1.Hash{}, dockerLayer{}, fmt.Errorf("gzip: %v: %w", err, ErrArchive)
	}
	diff := sha256.New()
	if _, err := io.Copy(diff, zr); err != nil {
		return v1.Hash{}, dockerLayer{}, fmt.Errorf("gzip: %v: %w", err, ErrArchive)
	}
	if _, err := io.Copy(comp, r); err != nil { // trailing bytes count too
		return v1.Hash{}, dockerLayer{}, err
	}
	if err := checkDiffID(diff.Sum(nil), diffID); err != nil {
		return v1.Hash{}, dockerLayer{}, err
	}
	h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(comp.Sum(nil))}
	return h, dockerLayer{entry: name, size: r.Size()}, nil
}

func checkDiffID(sum []byte, want digest.Digest) error {
	got := digest.NewDigestFromBytes(digest.SHA256, sum)
	if got != want {
		return fmt.Errorf("content hashes to %s, the image config says %s (a damaged archive): %w: %w", got, want, ErrArchive, store.ErrDigestMismatch)
	}
	return nil
}

// openDockerBlob serves the config from memory and layers from where they
// are.
func (a *Archive) openDockerBlob(desc ocispec.Descriptor) (io.ReadCloser, error) {
	d := a.docker
	if desc.Digest == d.configDigest {
		return io.NopCloser(bytes.NewReader(d.config)), nil
	}
	l, ok := d.layers[desc.Digest]
	switch {
	case !ok:
		return nil, fmt.Errorf("%s: no blob %s in the image: %w", a.t.path, desc.Digest, store.ErrNotFound)
	case l.file != "":
		return os.Open(l.file)
	}
	r, err := a.t.open(l.entry)
	if err != nil {
		return nil, err
	}
	return &checkedReader{r: r, v: desc.Digest.Verifier(), what: a.t.path + ": " + l.entry}, nil
}

// selectDockerImage picks the image of manifest.json with RepoTag ref (as
// written, or the same name spelt otherwise: app:v1, docker.io/library/app:v1),
// or the first.
func selectDockerImage(m tarball.Manifest, ref string) (tarball.Descriptor, error) {
	if len(m) == 0 {
		return tarball.Descriptor{}, fmt.Errorf("manifest.json lists no image: %w", ErrRefNotFound)
	}
	if ref == "" {
		return m[0], nil
	}
	want, _ := name.ParseReference(ref)
	var tags []string
	for _, d := range m {
		for _, tag := range d.RepoTags {
			if tag == ref {
				return d, nil
			}
			if got, err := name.ParseReference(tag); err == nil && want != nil && got.Name() == want.Name() {
				return d, nil
			}
			tags = append(tags, tag)
		}
	}
	if len(tags) == 0 {
		return tarball.Descriptor{}, fmt.Errorf("no image tagged %q (manifest.json has no RepoTags): %w", ref, ErrRefNotFound)
	}
	return tarball.Descriptor{}, fmt.Errorf("no image tagged %q (it has %s): %w", ref, strings.Join(tags, ", "), ErrRefNotFound)
}

// digestInName reads the sha256 a file is named after (<hex>.json,
// blobs/sha256/<hex>, sha256:<hex>).
func digestInName(p string) (digest.Digest, bool) {
	h := strings.TrimPrefix(strings.TrimSuffix(path.Base(p), ".json"), "sha256:")
	if len(h) != 64 {
		return "", false
	}
	if _, err := hex.DecodeString(h); err != nil {
		return "", false
	}
	return digest.NewDigestFromEncoded(digest.SHA256, h), true
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }
