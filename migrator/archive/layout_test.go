package archive

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/migrator"
)

func TestSelectRoot(t *testing.T) {
	a := ocispec.Descriptor{Digest: digest.FromString("a"), Annotations: map[string]string{ocispec.AnnotationRefName: "example.com/a:v1"}}
	b := ocispec.Descriptor{Digest: digest.FromString("b"), Annotations: map[string]string{annotationContainerdName: "example.com/b:v2"}}
	plain := ocispec.Descriptor{Digest: digest.FromString("c")}
	for _, tc := range []struct {
		name    string
		entries []ocispec.Descriptor
		ref     string
		want    digest.Digest
		err     bool
	}{
		{"only", []ocispec.Descriptor{plain}, "", plain.Digest, false},
		{"first of several", []ocispec.Descriptor{a, b}, "", a.Digest, false},
		{"by ref.name", []ocispec.Descriptor{a, b}, "example.com/a:v1", a.Digest, false},
		{"by containerd name", []ocispec.Descriptor{a, b}, "example.com/b:v2", b.Digest, false},
		{"unknown ref", []ocispec.Descriptor{a, b}, "example.com/c", "", true},
		{"ref but no annotations", []ocispec.Descriptor{plain}, "x", "", true},
		{"empty", nil, "", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := selectRoot(tc.entries, tc.ref)
			if tc.err {
				if !errors.Is(err, ErrRefNotFound) {
					t.Fatalf("err = %v, want ErrRefNotFound", err)
				}
				return
			}
			if err != nil || got.Digest != tc.want {
				t.Fatalf("got %s, %v; want %s", got.Digest, err, tc.want)
			}
		})
	}
}

func TestOpenLayout(t *testing.T) {
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := random.Index(512, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{ocispec.AnnotationRefName: "multi"})); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	l, err := OpenLayout(dir, "multi")
	if err != nil {
		t.Fatal(err)
	}
	root, _ := l.Root(ctx)
	want, _ := idx.Digest()
	if root.Digest.String() != want.String() || root.MediaType != ocispec.MediaTypeImageIndex || l.RefName() != "multi" {
		t.Fatalf("root = %+v, want index %s", root, want)
	}
	raw, err := l.Manifest(ctx, root.Digest)
	if err != nil {
		t.Fatal(err)
	}
	wantRaw, _ := idx.RawManifest()
	if string(raw) != string(wantRaw) {
		t.Errorf("manifest bytes differ from what was written")
	}
	plan, err := migrator.MakePlan(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Manifests) != 3 || len(plan.Blobs) != 2*(1+2) {
		t.Fatalf("plan has %d manifests and %d blobs, want 3 and 6", len(plan.Manifests), len(plan.Blobs))
	}
	rc, err := l.Blob(ctx, plan.Blobs[1])
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if digest.FromBytes(b) != plan.Blobs[1].Digest {
		t.Errorf("blob bytes do not hash to %s", plan.Blobs[1].Digest)
	}

	// A layout missing a blob says so.
	gone := plan.Blobs[2].Digest
	if err := os.Remove(filepath.Join(dir, "blobs", "sha256", gone.Encoded())); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Blob(ctx, plan.Blobs[2]); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing blob: err = %v, want fs.ErrNotExist", err)
	}
}

func TestOpenLayoutErrors(t *testing.T) {
	if _, err := OpenLayout(filepath.Join(t.TempDir(), "nope"), ""); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing dir: err = %v, want fs.ErrNotExist", err)
	}
	dir := t.TempDir()
	if _, err := layout.Write(dir, empty.Index); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenLayout(dir, ""); !errors.Is(err, ErrRefNotFound) {
		t.Errorf("empty layout: err = %v, want ErrRefNotFound", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenLayout(dir, ""); err == nil {
		t.Errorf("corrupt index.json: no error")
	}
}
