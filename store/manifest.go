package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types of the manifests the store accepts.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaTypeDockerForeignLayer = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
)

// Manifest is a parsed image manifest or index, with its raw bytes.
type Manifest struct {
	Digest    digest.Digest
	MediaType string
	Raw       []byte
	// Index is set for an index / manifest list: its child manifests.
	Index *ocispec.Index
	// Image is set for an image manifest: its config and layers.
	Image *ocispec.Manifest
}

// IsIndex reports whether m is an index (manifest list).
func (m *Manifest) IsIndex() bool { return m.Index != nil }

// ParseManifest parses raw as an OCI or Docker v2 image manifest or index.
// The media type comes from the document's own mediaType field (as
// Distribution does it), or from its shape when the field is absent.
func ParseManifest(raw []byte) (*Manifest, error) {
	var probe struct {
		SchemaVersion int               `json:"schemaVersion"`
		MediaType     string            `json:"mediaType"`
		Manifests     json.RawMessage   `json:"manifests"`
		Config        json.RawMessage   `json:"config"`
		Layers        []json.RawMessage `json:"layers"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return nil, fmt.Errorf("parse manifest: %w: %v", ErrInvalidManifest, err)
	}
	if probe.SchemaVersion != 2 {
		return nil, fmt.Errorf("schemaVersion %d is not supported: %w", probe.SchemaVersion, ErrInvalidManifest)
	}
	m := &Manifest{Digest: digest.FromBytes(raw), MediaType: probe.MediaType, Raw: raw}
	isIndex := probe.Manifests != nil
	switch probe.MediaType {
	case ocispec.MediaTypeImageIndex, MediaTypeDockerManifestList:
		isIndex = true
	case ocispec.MediaTypeImageManifest, MediaTypeDockerManifest:
		isIndex = false
	case "":
		if isIndex {
			m.MediaType = ocispec.MediaTypeImageIndex
		} else {
			m.MediaType = ocispec.MediaTypeImageManifest
		}
	default:
		return nil, fmt.Errorf("media type %q: %w", probe.MediaType, ErrInvalidManifest)
	}
	if isIndex {
		var idx ocispec.Index
		if err := json.Unmarshal(raw, &idx); err != nil {
			return nil, fmt.Errorf("parse index: %w: %v", ErrInvalidManifest, err)
		}
		for _, c := range idx.Manifests {
			if err := validateDigest(c.Digest); err != nil {
				// A document naming a bad digest is a bad manifest (and says why).
				return nil, fmt.Errorf("index child: %w: %w", ErrInvalidManifest, err)
			}
		}
		m.Index = &idx
		return m, nil
	}
	var img ocispec.Manifest
	if err := json.Unmarshal(raw, &img); err != nil {
		return nil, fmt.Errorf("parse manifest: %w: %v", ErrInvalidManifest, err)
	}
	if img.Config.Digest == "" {
		return nil, fmt.Errorf("manifest has no config: %w", ErrInvalidManifest)
	}
	for _, b := range append([]ocispec.Descriptor{img.Config}, img.Layers...) {
		if err := validateDigest(b.Digest); err != nil {
			return nil, fmt.Errorf("manifest blob: %w: %w", ErrInvalidManifest, err)
		}
	}
	m.Image = &img
	return m, nil
}

// Blobs returns the config and layers an image manifest references, less
// foreign (non-distributable) layers, which registries never hold.
func (m *Manifest) Blobs() []ocispec.Descriptor {
	if m.Image == nil {
		return nil
	}
	out := []ocispec.Descriptor{m.Image.Config}
	for _, l := range m.Image.Layers {
		if len(l.URLs) > 0 && isForeign(l.MediaType) {
			continue
		}
		out = append(out, l)
	}
	return out
}

func isForeign(mt string) bool {
	return mt == mediaTypeDockerForeignLayer || strings.Contains(mt, "nondistributable")
}

// PutManifest stores raw as a manifest of repository name and returns its
// digest. Everything it references must already be there: for an image
// manifest its config and layers in the bucket (they are linked into the
// repository here), for an index its child manifests in the repository.
// Otherwise it fails with ErrMissingReference and writes nothing.
func (s *Store) PutManifest(ctx context.Context, name string, raw []byte) (digest.Digest, error) {
	if err := ValidateRepository(name); err != nil {
		return "", err
	}
	m, err := ParseManifest(raw)
	if err != nil {
		return "", err
	}
	if m.IsIndex() {
		for _, c := range m.Index.Manifests {
			ok, err := s.exists(ctx, s.layout.revisionLink(name, c.Digest))
			if err != nil {
				return "", err
			}
			if !ok {
				return "", fmt.Errorf("put index %s in %s: child manifest %s: %w", m.Digest, name, c.Digest, ErrMissingReference)
			}
		}
	} else {
		blobs := m.Blobs()
		for _, b := range blobs {
			info, err := s.StatBlob(ctx, b.Digest)
			if errors.Is(err, ErrNotFound) && !errors.Is(err, ErrNoSuchBucket) {
				return "", fmt.Errorf("put manifest %s in %s: blob %s: %w", m.Digest, name, b.Digest, ErrMissingReference)
			}
			if err != nil {
				return "", err
			}
			if b.Size > 0 && info.Size != b.Size {
				return "", fmt.Errorf("put manifest %s in %s: blob %s is %d bytes in the bucket, the manifest says %d: %w",
					m.Digest, name, b.Digest, info.Size, b.Size, ErrSizeMismatch)
			}
		}
		for _, b := range blobs {
			if err := s.putSmall(ctx, s.layout.layerLink(name, b.Digest), linkBody(b.Digest)); err != nil {
				return "", err
			}
		}
	}
	if _, err := s.PutBlob(ctx, m.Digest, int64(len(raw)), bytes.NewReader(raw)); err != nil {
		return "", err
	}
	if err := s.putSmall(ctx, s.layout.revisionLink(name, m.Digest), linkBody(m.Digest)); err != nil {
		return "", err
	}
	return m.Digest, nil
}

// GetManifest returns manifest d of repository name, verified against d.
func (s *Store) GetManifest(ctx context.Context, name string, d digest.Digest) (*Manifest, error) {
	if err := ValidateRepository(name); err != nil {
		return nil, err
	}
	if err := validateDigest(d); err != nil {
		return nil, err
	}
	ok, err := s.exists(ctx, s.layout.revisionLink(name, d))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("manifest %s in %s: %w", d, name, ErrNotFound)
	}
	raw, err := s.getSmall(ctx, s.layout.blobData(d))
	if err != nil {
		return nil, fmt.Errorf("manifest %s in %s: %w", d, name, err)
	}
	if got := digest.FromBytes(raw); got != d {
		return nil, fmt.Errorf("manifest %s in %s hashes to %s: %w", d, name, got, ErrDigestMismatch)
	}
	return ParseManifest(raw)
}

// Tag points tag of repository name at manifest d. It checks that the
// manifest is in the repository and that everything it reaches (child
// manifests, configs, layers) is in place, then writes the tag's index link
// and, last, its current link: a reader never sees a tag it cannot pull.
func (s *Store) Tag(ctx context.Context, name, tag string, d digest.Digest) error {
	if err := ValidateTag(tag); err != nil {
		return err
	}
	if err := s.checkComplete(ctx, name, d); err != nil {
		return fmt.Errorf("tag %s:%s: %w", name, tag, err)
	}
	if err := s.putSmall(ctx, s.layout.tagIndex(name, tag, d), linkBody(d)); err != nil {
		return err
	}
	return s.putSmall(ctx, s.layout.tagCurrent(name, tag), linkBody(d))
}

// checkComplete verifies manifest d and everything below it is present.
func (s *Store) checkComplete(ctx context.Context, name string, d digest.Digest) error {
	m, err := s.GetManifest(ctx, name, d)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("manifest %s: %w", d, ErrMissingReference)
		}
		return err
	}
	if m.IsIndex() {
		for _, c := range m.Index.Manifests {
			if err := s.checkComplete(ctx, name, c.Digest); err != nil {
				return err
			}
		}
		return nil
	}
	for _, b := range m.Blobs() {
		ok, err := s.exists(ctx, s.layout.layerLink(name, b.Digest))
		if err == nil && ok {
			ok, err = s.HasBlob(ctx, b.Digest)
		}
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("manifest %s: blob %s: %w", d, b.Digest, ErrMissingReference)
		}
	}
	return nil
}

// Resolve returns the manifest digest tag points at, or ErrNotFound.
func (s *Store) Resolve(ctx context.Context, name, tag string) (digest.Digest, error) {
	if err := ValidateRepository(name); err != nil {
		return "", err
	}
	if err := ValidateTag(tag); err != nil {
		return "", err
	}
	d, err := s.readLink(ctx, s.layout.tagCurrent(name, tag))
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return "", fmt.Errorf("tag %s:%s: %w", name, tag, ErrNotFound)
		}
		return "", fmt.Errorf("resolve %s:%s: %w", name, tag, err)
	}
	return d, nil
}

// ListTags returns repository name's tags, sorted. One flat listing of the
// tags folder (about two keys a tag) costs fewer requests than a delimited
// listing plus a check per tag, and only a current link makes a tag.
func (s *Store) ListTags(ctx context.Context, name string) ([]string, error) {
	if err := ValidateRepository(name); err != nil {
		return nil, err
	}
	base := s.layout.tags(name)
	var tags []string
	err := s.list(ctx, base, func(key string) error {
		if tag, ok := strings.CutSuffix(strings.TrimPrefix(key, base), "/current/link"); ok && !strings.Contains(tag, "/") {
			tags = append(tags, tag)
		}
		return nil
	})
	sort.Strings(tags)
	return tags, err
}

// DeleteTag removes tag from repository name (its manifest stays).
func (s *Store) DeleteTag(ctx context.Context, name, tag string) error {
	if err := ValidateTag(tag); err != nil {
		return err
	}
	if _, err := s.Resolve(ctx, name, tag); err != nil {
		return err
	}
	// current first: once it is gone the tag no longer resolves.
	keys := []string{s.layout.tagCurrent(name, tag)}
	err := s.list(ctx, s.layout.tag(name, tag), func(key string) error {
		if key != keys[0] {
			keys = append(keys, key)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range keys {
		err := s.request(ctx, func(ctx context.Context, opts func(*s3.Options)) error {
			_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &k}, opts)
			return err
		})
		if err != nil {
			return fmt.Errorf("delete tag %s:%s: %w", name, tag, err)
		}
	}
	return nil
}

// ListRepositories returns every repository with at least one manifest,
// sorted. Nested names (team/app/api) are returned whole.
func (s *Store) ListRepositories(ctx context.Context) ([]string, error) {
	base := s.layout.repositories()
	seen := map[string]bool{}
	err := s.list(ctx, base, func(key string) error {
		rest := strings.TrimPrefix(key, base)
		if name, _, ok := strings.Cut(rest, "/_manifests/revisions/"); ok {
			seen[name] = true
		}
		return nil
	})
	repos := make([]string, 0, len(seen))
	for r := range seen {
		repos = append(repos, r)
	}
	sort.Strings(repos)
	return repos, err
}

// Exists reports whether the bucket holds a registry root at the store's
// prefix.
func (s *Store) Exists(ctx context.Context) (bool, error) {
	found := false
	err := s.listOne(ctx, s.layout.root+"/", func() { found = true })
	return found, err
}
