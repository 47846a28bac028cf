package migrator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/store"
)

// memSource is a Source over content held in memory.
type memSource struct {
	root ocispec.Descriptor
	data map[digest.Digest][]byte

	mu     sync.Mutex
	opened map[digest.Digest]int
}

func newMemSource() *memSource {
	return &memSource{data: map[digest.Digest][]byte{}, opened: map[digest.Digest]int{}}
}

func (s *memSource) Root(context.Context) (ocispec.Descriptor, error) { return s.root, nil }

func (s *memSource) Manifest(_ context.Context, d digest.Digest) ([]byte, error) {
	b, ok := s.data[d]
	if !ok {
		return nil, fmt.Errorf("manifest %s: %w", d, store.ErrNotFound)
	}
	return b, nil
}

func (s *memSource) Blob(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	s.mu.Lock()
	s.opened[desc.Digest]++
	s.mu.Unlock()
	b, ok := s.data[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, store.ErrNotFound)
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (s *memSource) openCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.opened {
		n += c
	}
	return n
}

// add stores b and returns its descriptor.
func (s *memSource) add(mediaType string, b []byte) ocispec.Descriptor {
	d := digest.FromBytes(b)
	s.data[d] = b
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}
}

// image adds a config and layers with the given contents and an image
// manifest over them, and returns the manifest's descriptor.
func (s *memSource) image(t testing.TB, config string, layers ...string) ocispec.Descriptor {
	t.Helper()
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: s.add(ocispec.MediaTypeImageConfig, []byte(config))}
	m.SchemaVersion = 2
	for _, l := range layers {
		m.Layers = append(m.Layers, s.add(ocispec.MediaTypeImageLayerGzip, []byte(l)))
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return s.add(ocispec.MediaTypeImageManifest, raw)
}

// index adds an index over children.
func (s *memSource) index(t testing.TB, children ...ocispec.Descriptor) ocispec.Descriptor {
	t.Helper()
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: children}
	idx.SchemaVersion = 2
	raw, err := json.Marshal(idx)
	if err != nil {
		t.Fatal(err)
	}
	return s.add(ocispec.MediaTypeImageIndex, raw)
}

func digests(ds []ocispec.Descriptor) []digest.Digest {
	out := make([]digest.Digest, len(ds))
	for i, d := range ds {
		out[i] = d.Digest
	}
	return out
}

func TestMakePlan(t *testing.T) {
	src := newMemSource()
	amd := src.image(t, `{"architecture":"amd64"}`, "base", "amd-app")
	arm := src.image(t, `{"architecture":"arm64"}`, "base", "arm-app")
	amd.Platform = &ocispec.Platform{OS: "linux", Architecture: "amd64"}
	arm.Platform = &ocispec.Platform{OS: "linux", Architecture: "arm64"}
	idx := src.index(t, amd, arm, amd) // a duplicate entry is planned once
	nested := src.index(t, idx)

	for _, tc := range []struct {
		name      string
		root      ocispec.Descriptor
		manifests []digest.Digest
		blobs     int
	}{
		{"image", amd, []digest.Digest{amd.Digest}, 3},
		{"index", idx, []digest.Digest{amd.Digest, arm.Digest, idx.Digest}, 5},
		{"nested index", nested, []digest.Digest{amd.Digest, arm.Digest, idx.Digest, nested.Digest}, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src.root = tc.root
			p, err := MakePlan(context.Background(), src)
			if err != nil {
				t.Fatal(err)
			}
			var got []digest.Digest
			for _, m := range p.Manifests {
				got = append(got, m.Descriptor.Digest)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.manifests) {
				t.Errorf("manifests %v, want (children first) %v", got, tc.manifests)
			}
			if len(p.Blobs) != tc.blobs {
				t.Errorf("blobs %v, want %d unique", digests(p.Blobs), tc.blobs)
			}
			if p.Root.Digest != tc.root.Digest {
				t.Errorf("root %s, want %s", p.Root.Digest, tc.root.Digest)
			}
		})
	}
}

func TestMakePlanRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(t *testing.T, s *memSource) ocispec.Descriptor
		want error
	}{
		{"manifest bytes do not match digest", func(t *testing.T, s *memSource) ocispec.Descriptor {
			d := s.image(t, "c", "l")
			s.data[d.Digest] = append([]byte(" "), s.data[d.Digest]...)
			return d
		}, ErrSource},
		{"manifest size differs from descriptor", func(t *testing.T, s *memSource) ocispec.Descriptor {
			d := s.image(t, "c", "l")
			d.Size++
			return d
		}, ErrSource},
		{"child manifest missing", func(t *testing.T, s *memSource) ocispec.Descriptor {
			child := s.image(t, "c", "l")
			idx := s.index(t, child)
			delete(s.data, child.Digest)
			return idx
		}, store.ErrNotFound},
		{"blob listed with two sizes", func(t *testing.T, s *memSource) ocispec.Descriptor {
			a := s.image(t, "c", "l")
			var m ocispec.Manifest
			_ = json.Unmarshal(s.data[a.Digest], &m)
			m.Layers[0].Size++
			m.Config = s.add(ocispec.MediaTypeImageConfig, []byte("c2"))
			raw, _ := json.Marshal(m)
			return s.index(t, a, s.add(ocispec.MediaTypeImageManifest, raw))
		}, ErrSource},
		{"not a manifest", func(t *testing.T, s *memSource) ocispec.Descriptor {
			return s.add(ocispec.MediaTypeImageManifest, []byte(`{"schemaVersion":1}`))
		}, store.ErrInvalidManifest},
		{"sha512 root", func(t *testing.T, s *memSource) ocispec.Descriptor {
			return ocispec.Descriptor{Digest: digest.SHA512.FromString("x")}
		}, store.ErrInvalidName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := newMemSource()
			src.root = tc.make(t, src)
			_, err := MakePlan(context.Background(), src)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestMakePlanDepthLimit(t *testing.T) {
	src := newMemSource()
	d := src.image(t, "c", "l")
	for range maxDepth + 1 {
		d = src.index(t, d)
	}
	src.root = d
	if _, err := MakePlan(context.Background(), src); !errors.Is(err, store.ErrInvalidManifest) {
		t.Fatalf("err = %v, want ErrInvalidManifest for too deep nesting", err)
	}
}
