package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/migrator"
	"github.com/s3snap/s3snap/store"
)

// tarEnt is one entry of a test tar.
type tarEnt struct {
	name, link string
	typ        byte
	data       []byte
}

func writeTar(t *testing.T, p string, ents ...tarEnt) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.data))}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tarDir writes every file under dir into a tar at p, names prefixed "./"
// as `tar -C dir .` writes them.
func tarDir(t *testing.T, dir, p string) []byte {
	t.Helper()
	var ents []tarEnt
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		rel, _ := filepath.Rel(dir, path)
		ents = append(ents, tarEnt{name: "./" + filepath.ToSlash(rel), data: b})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return writeTar(t, p, ents...)
}

func pseudoRandom(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// legacySave writes a pre-Docker-25 `docker save` tar: manifest.json, the
// config named after its digest, uncompressed layers as <id>/layer.tar.
// damage, if not nil, may change the bytes written after the digests are
// taken.
func legacySave(t *testing.T, p string, layers [][]byte, damage func(cfg []byte, layers [][]byte)) (config []byte) {
	t.Helper()
	layers = slices.Clone(layers)
	for i := range layers {
		layers[i] = bytes.Clone(layers[i])
	}
	var cfg dockerConfig
	for _, l := range layers {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, digest.FromBytes(l))
	}
	config, _ = json.Marshal(map[string]any{"architecture": "amd64", "os": "linux", "rootfs": map[string]any{"type": "layers", "diff_ids": cfg.RootFS.DiffIDs}})
	cd := digest.FromBytes(config)
	var names []string
	ents := []tarEnt{{name: cd.Encoded() + ".json", data: config}}
	for i, l := range layers {
		id := digest.FromString(string(rune('a' + i))).Encoded()
		names = append(names, id+"/layer.tar")
		ents = append(ents, tarEnt{name: id + "/", typ: tar.TypeDir}, tarEnt{name: id + "/layer.tar", data: l})
	}
	man, _ := json.Marshal([]map[string]any{{"Config": cd.Encoded() + ".json", "RepoTags": []string{"app:v1"}, "Layers": names}})
	ents = append(ents, tarEnt{name: "manifest.json", data: man})
	if damage != nil {
		damage(ents[0].data, layers)
	}
	writeTar(t, p, ents...)
	return config
}

func layerTar(t *testing.T, seed uint64, n int) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "l.tar")
	return writeTar(t, p, tarEnt{name: "file", data: pseudoRandom(seed, n)})
}

func TestDetectKind(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, ents ...tarEnt) string {
		p := filepath.Join(dir, name)
		writeTar(t, p, ents...)
		return p
	}
	idx := tarEnt{name: "index.json", data: []byte(`{"schemaVersion":2,"manifests":[]}`)}
	man := tarEnt{name: "manifest.json", data: []byte(`[]`)}
	layoutDir := filepath.Join(dir, "layout")
	if _, err := layout.Write(layoutDir, empty.Index); err != nil {
		t.Fatal(err)
	}
	ociTar := mk("oci.tar", tarEnt{name: "oci-layout", data: []byte(`{}`)}, idx)
	truncated := filepath.Join(dir, "truncated.tar")
	full := writeTar(t, truncated, idx, tarEnt{name: "blobs/sha256/x", data: pseudoRandom(1, 5000)})
	os.WriteFile(truncated, full[:3000], 0o644)
	gz := filepath.Join(dir, "oci.tar.gz")
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write(full)
	zw.Close()
	os.WriteFile(gz, b.Bytes(), 0o644)
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, pseudoRandom(2, 4096), 0o644)
	emptyFile := filepath.Join(dir, "empty")
	os.WriteFile(emptyFile, nil, 0o644)

	for _, tc := range []struct {
		name string
		src  string
		want Kind
		err  error
	}{
		{"registry", "docker://127.0.0.1:5000/team/app:v1", KindRegistry, nil},
		{"other scheme", "oci://x", KindUnknown, ErrUnknownSource},
		{"layout dir", layoutDir, KindLayoutDir, nil},
		{"dir without index.json", t.TempDir(), KindUnknown, ErrUnknownSource},
		{"missing", filepath.Join(dir, "nope"), KindUnknown, fs.ErrNotExist},
		{"oci tar", ociTar, KindOCIArchive, nil},
		{"oci tar, ./ names", mk("dot.tar", tarEnt{name: "./", typ: tar.TypeDir}, tarEnt{name: "./index.json", data: idx.data}), KindOCIArchive, nil},
		{"docker 25 save", mk("d25.tar", man, idx), KindOCIArchive, nil},
		{"legacy docker save", mk("legacy.tar", man), KindDockerArchive, nil},
		{"neither", mk("neither.tar", tarEnt{name: "README", data: []byte("hi")}), KindUnknown, ErrArchive},
		{"index.json not at the root", mk("nested.tar", tarEnt{name: "img/index.json", data: idx.data}), KindUnknown, ErrArchive},
		{"truncated", truncated, KindUnknown, ErrArchive},
		{"gzip", gz, KindUnknown, ErrArchive},
		{"not a tar", garbage, KindUnknown, ErrArchive},
		{"empty file", emptyFile, KindUnknown, ErrArchive},
		{"path traversal", mk("evil.tar", idx, tarEnt{name: "../../etc/cron.d/x", data: []byte("x")}), KindUnknown, ErrArchive},
		{"absolute name", mk("abs.tar", idx, tarEnt{name: "/etc/passwd", data: []byte("x")}), KindUnknown, ErrArchive},
		{"symlink escaping", mk("link.tar", idx, tarEnt{name: "blobs/x", typ: tar.TypeSymlink, link: "../../../etc/passwd"}), KindUnknown, ErrArchive},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DetectKind(tc.src)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("DetectKind = %v, %v; want an error wrapping %v", got, err, tc.err)
				}
				t.Logf("error: %v", err)
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("DetectKind = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// TestOCIArchive: a tar of an OCI layout serves the same manifests and blobs
// as the directory, by offset; a flipped byte is found while a blob streams.
func TestOCIArchive(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	idx, err := random.Index(2048, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendIndex(idx); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "oci.tar")
	raw := tarDir(t, dir, p)

	a, err := OpenArchive(ctx, p, "")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Kind() != KindOCIArchive {
		t.Errorf("kind %v", a.Kind())
	}
	want, _ := idx.Digest()
	plan, err := migrator.MakePlan(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Root.Digest.String() != want.String() || len(plan.Manifests) != 3 || len(plan.Blobs) != 6 {
		t.Fatalf("plan: root %s, %d manifests, %d blobs; want %s, 3, 6", plan.Root.Digest, len(plan.Manifests), len(plan.Blobs), want)
	}
	for _, b := range plan.Blobs {
		rc, err := a.Blob(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		if err := migrator.DrainVerify(rc, b); err != nil {
			t.Errorf("blob %s: %v", b.Digest, err)
		}
	}

	// Flip a byte in the middle of a layer's data.
	layer := plan.Blobs[len(plan.Blobs)-1]
	at := bytes.Index(raw, []byte(layer.Digest.Encoded()+"\x00"))
	if at < 0 {
		t.Fatal("layer entry not found in the tar")
	}
	bad := bytes.Clone(raw)
	bad[at-at%512+512+int(layer.Size)/2] ^= 0x40
	badPath := filepath.Join(t.TempDir(), "bad.tar")
	os.WriteFile(badPath, bad, 0o644)
	ba, err := OpenArchive(ctx, badPath, "")
	if err != nil {
		t.Fatal(err)
	}
	defer ba.Close()
	rc, err := ba.Blob(ctx, layer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, rc); !errors.Is(err, store.ErrDigestMismatch) || !errors.Is(err, ErrArchive) {
		t.Errorf("reading a damaged blob: %v; want a digest mismatch", err)
	}
}

// TestDockerArchive: a legacy docker save becomes a Docker schema 2 image
// with its config byte for byte and layers gzip'd the same way every time;
// a layer that does not match its diff ID is refused.
func TestDockerArchive(t *testing.T) {
	ctx := context.Background()
	layers := [][]byte{layerTar(t, 1, 100<<10), layerTar(t, 2, 3000)}
	p := filepath.Join(t.TempDir(), "save.tar")
	config := legacySave(t, p, layers, nil)

	var digests []digest.Digest
	for range 2 {
		a, err := OpenArchive(ctx, p, "docker.io/library/app:v1")
		if err != nil {
			t.Fatal(err)
		}
		plan, err := migrator.MakePlan(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, plan.Root.Digest)
		m := plan.Manifests[0].Manifest.Image
		if m.Config.Digest != digest.FromBytes(config) || len(m.Layers) != 2 || m.MediaType != "application/vnd.docker.distribution.manifest.v2+json" {
			t.Fatalf("manifest %s", plan.Manifests[0].Raw)
		}
		for i, l := range m.Layers {
			rc, err := a.Blob(ctx, l)
			if err != nil {
				t.Fatal(err)
			}
			gz, _ := io.ReadAll(rc)
			rc.Close()
			if digest.FromBytes(gz) != l.Digest || int64(len(gz)) != l.Size {
				t.Errorf("layer %d: served bytes are not %s", i, l.Digest)
			}
			zr, err := gzip.NewReader(bytes.NewReader(gz))
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := io.ReadAll(zr); !bytes.Equal(got, layers[i]) {
				t.Errorf("layer %d does not gunzip to the saved tar", i)
			}
		}
		a.Close()
		if _, err := os.Stat(a.docker.tmp); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Close left %s behind", a.docker.tmp)
		}
	}
	if digests[0] != digests[1] {
		t.Errorf("two opens made %s and %s", digests[0], digests[1])
	}

	if _, err := OpenArchive(ctx, p, "other:v1"); !errors.Is(err, ErrRefNotFound) {
		t.Errorf("--ref other:v1: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.tar")
	legacySave(t, bad, layers, func(_ []byte, l [][]byte) { l[1][len(l[1])/3] ^= 1 })
	if _, err := OpenArchive(ctx, bad, ""); !errors.Is(err, store.ErrDigestMismatch) {
		t.Errorf("flipped byte in a layer: %v; want a digest mismatch", err)
	} else {
		t.Logf("error: %v", err)
	}
}

// TestSelectRootDockerNames: a Docker 25+ save names images
// docker.io/library/app:v1 (containerd's annotation) and v1 (ref.name); users
// say app:v1.
func TestSelectRootDockerNames(t *testing.T) {
	a := ocispec.Descriptor{Digest: digest.FromString("a"), Annotations: map[string]string{annotationContainerdName: "docker.io/library/app:v1", ocispec.AnnotationRefName: "v1"}}
	b := ocispec.Descriptor{Digest: digest.FromString("b"), Annotations: map[string]string{annotationContainerdName: "registry.example.com/team/app:v2", ocispec.AnnotationRefName: "v2"}}
	for ref, want := range map[string]digest.Digest{
		"app:v1": a.Digest, "library/app:v1": a.Digest, "docker.io/library/app:v1": a.Digest, "v2": b.Digest,
		"registry.example.com/team/app:v2": b.Digest, "app:v2": "", "team/app:v2": "",
	} {
		got, err := selectRoot([]ocispec.Descriptor{a, b}, ref)
		switch {
		case want == "" && !errors.Is(err, ErrRefNotFound):
			t.Errorf("%s: got %s, %v; want ErrRefNotFound", ref, got.Digest, err)
		case want != "" && (err != nil || got.Digest != want):
			t.Errorf("%s: got %s, %v; want %s", ref, got.Digest, err, want)
		}
	}
}
