package testenv

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// RealisticImage builds (once, cached) the benchmark image of
// integration/bench/mkimage.sh: six gzip layers of this machine's real files.
// Layers are read into memory (~300 MB).
func RealisticImage(t testing.TB, platform ocispec.Platform) *Image {
	t.Helper()
	script, err := filepath.Abs(filepath.Join(moduleRoot(t), "integration", "bench", "mkimage.sh"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(script).Output()
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	var layers [][]byte
	var diffIDs []digest.Digest
	for _, path := range strings.Fields(string(out)) {
		gz, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, gz)
		diffIDs = append(diffIDs, cachedDiffID(t, path, gz))
	}
	return ImageFromLayers(t, platform, layers, diffIDs)
}

// ImageFromLayers builds an image manifest and config over ready layers.
func ImageFromLayers(t testing.TB, platform ocispec.Platform, layers [][]byte, diffIDs []digest.Digest, config ...ocispec.ImageConfig) *Image {
	t.Helper()
	im := &Image{Platform: platform, Layers: layers}
	cfg := ocispec.Image{Platform: platform, RootFS: ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
		Config: ocispec.ImageConfig{Cmd: []string{"/bin/true"}}}
	if len(config) > 0 {
		cfg.Config = config[0]
	}
	im.Config = mustJSON(t, cfg)
	m := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(im.Config), Size: int64(len(im.Config))},
	}
	m.SchemaVersion = 2
	for _, l := range layers {
		m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(l), Size: int64(len(l))})
	}
	im.Manifest = mustJSON(t, m)
	im.Digest = digest.FromBytes(im.Manifest)
	return im
}

// cachedDiffID is the uncompressed digest of a gzip layer, cached beside it.
func cachedDiffID(t testing.TB, path string, gz []byte) digest.Digest {
	t.Helper()
	sidecar := path + ".diffid"
	if b, err := os.ReadFile(sidecar); err == nil {
		if d, err := digest.Parse(strings.TrimSpace(string(b))); err == nil {
			return d
		}
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, zr); err != nil {
		t.Fatal(err)
	}
	d := digest.NewDigest(digest.SHA256, h)
	_ = os.WriteFile(sidecar, []byte(d.String()), 0o644)
	return d
}

// moduleRoot finds the directory holding go.mod above the working dir.
func moduleRoot(t testing.TB) string {
	t.Helper()
	dir, _ := os.Getwd()
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the working directory")
		}
		dir = parent
	}
}
