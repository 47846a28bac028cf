package migrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/store"
)

// ErrNoPlatform is returned when a platform filter leaves an index empty.
var ErrNoPlatform = errors.New("no manifest for the selected platforms")

func IsIndexType(mt string) bool {
	return mt == ocispec.MediaTypeImageIndex || mt == store.MediaTypeDockerManifestList
}

// IndexChildren returns the child digests of an index (nil for anything
// else).
func IndexChildren(raw []byte) []digest.Digest {
	m, err := store.ParseManifest(raw)
	if err != nil || !m.IsIndex() {
		return nil
	}
	out := make([]digest.Digest, 0, len(m.Index.Manifests))
	for _, c := range m.Index.Manifests {
		out = append(out, c.Digest)
	}
	return out
}

// Platforms is a platform filter: os/arch[/variant] entries.
type Platforms []ocispec.Platform

// ParsePlatforms parses "linux/amd64,linux/arm64/v8".
func ParsePlatforms(s string) (Platforms, error) {
	var ps Platforms
	for _, f := range strings.Split(s, ",") {
		parts := strings.Split(strings.TrimSpace(f), "/")
		if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
			return nil, fmt.Errorf("platform %q: want os/arch[/variant]", f)
		}
		p := ocispec.Platform{OS: parts[0], Architecture: parts[1]}
		if len(parts) == 3 {
			p.Variant = parts[2]
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// String formats the filter as it is parsed.
func (ps Platforms) String() string {
	var s []string
	for _, p := range ps {
		v := p.OS + "/" + p.Architecture
		if p.Variant != "" {
			v += "/" + p.Variant
		}
		s = append(s, v)
	}
	return strings.Join(s, ",")
}

// Match reports whether p is selected (a descriptor without a platform,
// such as an attestation, is not).
func (ps Platforms) Match(p *ocispec.Platform) bool {
	if p == nil {
		return false
	}
	for _, want := range ps {
		if want.OS == p.OS && want.Architecture == p.Architecture && (want.Variant == "" || want.Variant == p.Variant) {
			return true
		}
	}
	return false
}

// FilterPlatforms returns src with its root index cut down to the children
// ps selects. That makes a new index with a new digest (the children keep
// theirs); Filtered reports it. A root that is not an index is unchanged.
func FilterPlatforms(src Source, ps Platforms) *FilteredSource {
	return &FilteredSource{Source: src, ps: ps}
}

// FilteredSource is a Source whose root index lists only some platforms.
type FilteredSource struct {
	Source
	ps Platforms

	once     sync.Once
	root     ocispec.Descriptor
	raw      []byte
	err      error
	original digest.Digest
}

// Root returns the filtered index's descriptor.
func (f *FilteredSource) Root(ctx context.Context) (ocispec.Descriptor, error) {
	f.once.Do(func() { f.root, f.err = f.filter(ctx) })
	return f.root, f.err
}

// Original is the source's own root digest (after Root was called).
func (f *FilteredSource) Original() digest.Digest { return f.original }

// Filtered reports whether the root was rewritten (after Root was called).
func (f *FilteredSource) Filtered() bool { return f.raw != nil }

func (f *FilteredSource) filter(ctx context.Context) (ocispec.Descriptor, error) {
	root, err := f.Source.Root(ctx)
	if err != nil {
		return root, err
	}
	f.original = root.Digest
	raw, err := f.Source.Manifest(ctx, root.Digest)
	if err != nil {
		return root, err
	}
	if err := checkManifestBytes(root, raw); err != nil {
		return root, err
	}
	m, err := store.ParseManifest(raw)
	if err != nil || !m.IsIndex() {
		return root, err
	}
	// Edit the document generically so fields we do not model survive.
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(raw, &doc); err != nil {
		return root, fmt.Errorf("index %s: %w: %v", root.Digest, store.ErrInvalidManifest, err)
	}
	var keep []ocispec.Descriptor
	for _, c := range m.Index.Manifests {
		if f.ps.Match(c.Platform) {
			keep = append(keep, c)
		}
	}
	if len(keep) == 0 {
		return root, fmt.Errorf("index %s: %s: %w", root.Digest, f.ps, ErrNoPlatform)
	}
	if len(keep) == len(m.Index.Manifests) {
		return root, nil
	}
	if doc["manifests"], err = json.Marshal(keep); err != nil {
		return root, err
	}
	if f.raw, err = json.Marshal(doc); err != nil {
		return root, err
	}
	return ocispec.Descriptor{MediaType: m.MediaType, Digest: digest.FromBytes(f.raw), Size: int64(len(f.raw))}, nil
}

// Manifest returns the filtered index for its new digest.
func (f *FilteredSource) Manifest(ctx context.Context, d digest.Digest) ([]byte, error) {
	if f.raw != nil && d == f.root.Digest {
		return f.raw, nil
	}
	return f.Source.Manifest(ctx, d)
}
