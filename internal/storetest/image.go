package storetest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"sort"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/store"
)

// Image is a small, valid OCI image built in memory for tests.
type Image struct {
	Manifest []byte
	Digest   digest.Digest
	Config   []byte
	Layers   [][]byte // gzip'd tars, in order
	Platform ocispec.Platform
}

// Blobs returns the config and layers by digest.
func (im *Image) Blobs() map[digest.Digest][]byte {
	m := map[digest.Digest][]byte{digest.FromBytes(im.Config): im.Config}
	for _, l := range im.Layers {
		m[digest.FromBytes(l)] = l
	}
	return m
}

// File is one regular file (or, with Link set, a symlink) in a test layer.
type File struct {
	Name string
	Data []byte
	Mode int64
	Link string
}

// LayerTar builds a gzip'd tar of files, deterministic for the same input.
func LayerTar(t testing.TB, files []File) (gz []byte, diffID digest.Digest) {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	mtime := time.Unix(1700000000, 0)
	for _, f := range files {
		hdr := &tar.Header{Name: f.Name, Mode: f.Mode, ModTime: mtime, Typeflag: tar.TypeReg, Size: int64(len(f.Data))}
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
		}
		if f.Link != "" {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeSymlink, f.Link, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if f.Link == "" {
			if _, err := tw.Write(f.Data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	zw.ModTime = mtime
	if _, err := zw.Write(raw.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), digest.FromBytes(raw.Bytes())
}

// NewImage builds an OCI image for platform with one layer per file set.
func NewImage(t testing.TB, platform ocispec.Platform, layers ...[]File) *Image {
	t.Helper()
	im := &Image{Platform: platform}
	cfg := ocispec.Image{
		Platform: platform,
		Config:   ocispec.ImageConfig{Cmd: []string{"/bin/true"}},
		RootFS:   ocispec.RootFS{Type: "layers"},
	}
	var descs []ocispec.Descriptor
	for _, files := range layers {
		gz, diffID := LayerTar(t, files)
		im.Layers = append(im.Layers, gz)
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, diffID)
		descs = append(descs, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(gz), Size: int64(len(gz))})
	}
	im.Config = MustJSON(t, cfg)
	m := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(im.Config), Size: int64(len(im.Config))},
		Layers:    descs,
	}
	m.SchemaVersion = 2
	im.Manifest = MustJSON(t, m)
	im.Digest = digest.FromBytes(im.Manifest)
	return im
}

// NewIndex builds an OCI index over images.
func NewIndex(t testing.TB, images ...*Image) []byte {
	t.Helper()
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}
	idx.SchemaVersion = 2
	for _, im := range images {
		p := im.Platform
		idx.Manifests = append(idx.Manifests, ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageManifest, Digest: im.Digest, Size: int64(len(im.Manifest)), Platform: &p,
		})
	}
	return MustJSON(t, idx)
}

// MustJSON marshals v, failing t on error.
func MustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// PutImage writes im into repo of s (blobs, then manifest) and returns its
// digest; it does not tag.
func PutImage(t testing.TB, s *store.Store, repo string, im *Image) digest.Digest {
	t.Helper()
	ctx := context.Background()
	blobs := im.Blobs()
	keys := make([]string, 0, len(blobs))
	for d := range blobs {
		keys = append(keys, d.String())
	}
	sort.Strings(keys)
	for _, k := range keys {
		d := digest.Digest(k)
		if _, err := s.PutBlob(ctx, d, int64(len(blobs[d])), bytes.NewReader(blobs[d])); err != nil {
			t.Fatalf("put blob %s: %v", d, err)
		}
	}
	d, err := s.PutManifest(ctx, repo, im.Manifest)
	if err != nil {
		t.Fatalf("put manifest: %v", err)
	}
	if d != im.Digest {
		t.Fatalf("PutManifest returned %s, want %s", d, im.Digest)
	}
	return d
}
