package migrator

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/store"
)

// maxDepth bounds how deeply indexes may nest (an index of indexes of
// images is already rare).
const maxDepth = 8

// Plan is everything one root reaches, in the order it must be written.
type Plan struct {
	Root ocispec.Descriptor
	// Manifests are unique and ordered children before parents; the root
	// is last.
	Manifests []PlannedManifest
	// Blobs are the unique configs and layers of every image, in the order
	// first met (foreign layers, which registries never hold, left out).
	Blobs []ocispec.Descriptor
}

// PlannedManifest is one manifest of a plan with its verified bytes.
type PlannedManifest struct {
	Descriptor ocispec.Descriptor
	Raw        []byte
	Manifest   *store.Manifest
}

// Size is the total of the plan's blob sizes.
func (p *Plan) Size() int64 {
	var n int64
	for _, b := range p.Blobs {
		n += b.Size
	}
	return n
}

// MakePlan reads every manifest under src's root, verifying each against the
// digest (and size) it was referenced by, and lists what must be copied.
func MakePlan(ctx context.Context, src Source) (*Plan, error) {
	root, err := src.Root(ctx)
	if err != nil {
		return nil, fmt.Errorf("source root: %w", err)
	}
	p := &Plan{Root: root}
	w := planWalker{src: src, plan: p, seenManifest: map[digest.Digest]bool{}, blobSize: map[digest.Digest]int64{}}
	m, err := w.walk(ctx, root, 0)
	if err != nil {
		return nil, err
	}
	if p.Root.MediaType == "" {
		p.Root.MediaType = m.MediaType
	}
	if p.Root.Size == 0 {
		p.Root.Size = int64(len(m.Raw))
	}
	return p, nil
}

type planWalker struct {
	src          Source
	plan         *Plan
	seenManifest map[digest.Digest]bool
	blobSize     map[digest.Digest]int64
}

func (w *planWalker) walk(ctx context.Context, desc ocispec.Descriptor, depth int) (*store.Manifest, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("manifest %s: indexes nest deeper than %d: %w", desc.Digest, maxDepth, store.ErrInvalidManifest)
	}
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("manifest digest %q: %w: %v", desc.Digest, store.ErrInvalidName, err)
	}
	if desc.Digest.Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("manifest %s: only sha256 digests are supported: %w", desc.Digest, store.ErrInvalidName)
	}
	raw, err := w.src.Manifest(ctx, desc.Digest)
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", desc.Digest, err)
	}
	if err := checkManifestBytes(desc, raw); err != nil {
		return nil, err
	}
	m, err := store.ParseManifest(raw)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	if m.IsIndex() {
		for _, c := range m.Index.Manifests {
			if w.seenManifest[c.Digest] {
				continue
			}
			if _, err := w.walk(ctx, c, depth+1); err != nil {
				return nil, fmt.Errorf("index %s: %w", desc.Digest, err)
			}
		}
	} else {
		for _, b := range m.Blobs() {
			if err := w.addBlob(b); err != nil {
				return nil, fmt.Errorf("manifest %s: %w", desc.Digest, err)
			}
		}
	}
	if !w.seenManifest[desc.Digest] {
		w.seenManifest[desc.Digest] = true
		d := desc
		if d.MediaType == "" {
			d.MediaType = m.MediaType
		}
		d.Size = int64(len(raw))
		w.plan.Manifests = append(w.plan.Manifests, PlannedManifest{Descriptor: d, Raw: raw, Manifest: m})
	}
	return m, nil
}

func (w *planWalker) addBlob(b ocispec.Descriptor) error {
	if b.Size < 0 {
		return fmt.Errorf("blob %s has size %d: %w", b.Digest, b.Size, ErrSource)
	}
	if size, ok := w.blobSize[b.Digest]; ok {
		if size != b.Size {
			return fmt.Errorf("blob %s is listed with sizes %d and %d: %w", b.Digest, size, b.Size, ErrSource)
		}
		return nil
	}
	w.blobSize[b.Digest] = b.Size
	w.plan.Blobs = append(w.plan.Blobs, b)
	return nil
}

// checkManifestBytes verifies raw is what desc names: its digest and, when
// the descriptor states one, its size.
func checkManifestBytes(desc ocispec.Descriptor, raw []byte) error {
	if got := digest.FromBytes(raw); got != desc.Digest {
		return fmt.Errorf("manifest %s: content hashes to %s: %w", desc.Digest, got, ErrSource)
	}
	if desc.Size > 0 && desc.Size != int64(len(raw)) {
		return fmt.Errorf("manifest %s: %d bytes, descriptor says %d: %w", desc.Digest, len(raw), desc.Size, ErrSource)
	}
	return nil
}

// rootRaw is the root manifest's bytes (the last manifest planned).
func (p *Plan) rootRaw() []byte {
	if n := len(p.Manifests); n > 0 && p.Manifests[n-1].Descriptor.Digest == p.Root.Digest {
		return p.Manifests[n-1].Raw
	}
	return nil
}
