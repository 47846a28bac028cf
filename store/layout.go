package store

import (
	"fmt"
	"path"

	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// These paths are exactly where CNCF Distribution's storage drivers keep an
// image (registry/storage/paths.go), so a stock registry whose s3 driver has
// rootdirectory = prefix serves what we write, and we read what it wrote.
const rootSuffix = "docker/registry/v2"

// layout maps repository-level things to object keys under one root.
type layout struct {
	root string // "<prefix>/docker/registry/v2", no leading or trailing slash
}

func newLayout(prefix string) layout {
	prefix = strings.Trim(prefix, "/")
	if prefix == "" {
		return layout{root: rootSuffix}
	}
	return layout{root: prefix + "/" + rootSuffix}
}

// blobData: <root>/blobs/sha256/<hh>/<hex>/data.
func (l layout) blobData(d digest.Digest) string {
	hex := d.Encoded()
	return path.Join(l.root, "blobs", d.Algorithm().String(), hex[:2], hex, "data")
}

func (l layout) repo(name string) string {
	return path.Join(l.root, "repositories", name)
}

func (l layout) repositories() string { return l.root + "/repositories/" }

// layerLink: <repo>/_layers/sha256/<hex>/link, for configs and layers.
func (l layout) layerLink(name string, d digest.Digest) string {
	return path.Join(l.repo(name), "_layers", d.Algorithm().String(), d.Encoded(), "link")
}

// revisionLink: <repo>/_manifests/revisions/sha256/<hex>/link, for manifests.
func (l layout) revisionLink(name string, d digest.Digest) string {
	return path.Join(l.repo(name), "_manifests", "revisions", d.Algorithm().String(), d.Encoded(), "link")
}

func (l layout) tags(name string) string {
	return path.Join(l.repo(name), "_manifests", "tags") + "/"
}

func (l layout) tag(name, tag string) string {
	return path.Join(l.repo(name), "_manifests", "tags", tag) + "/"
}

// tagCurrent: <repo>/_manifests/tags/<tag>/current/link, what the tag points at.
func (l layout) tagCurrent(name, tag string) string {
	return path.Join(l.repo(name), "_manifests", "tags", tag, "current", "link")
}

// tagIndex: <repo>/_manifests/tags/<tag>/index/sha256/<hex>/link, the tag's
// history, which Distribution writes alongside current.
func (l layout) tagIndex(name, tag string, d digest.Digest) string {
	return path.Join(l.repo(name), "_manifests", "tags", tag, "index", d.Algorithm().String(), d.Encoded(), "link")
}

// linkBody is a link object's content: the digest alone, no newline (71
// bytes for sha256), as Distribution writes it.
func linkBody(d digest.Digest) []byte { return []byte(d.String()) }

// grammarDomain stands before a repository name so that reference's grammar
// reads all of the name as the path (lowercase components joined by '.',
// '_', '__' or runs of '-', separated by '/'), never its first component as
// a registry host.
const grammarDomain = "s3snap.invalid"

// anyRepository carries a tag through reference's tag grammar.
var anyRepository, _ = reference.WithName(grammarDomain + "/x")

// ValidateRepository reports whether name is a valid repository name: the
// path of a reference in Distribution's grammar (github.com/distribution/reference),
// at most 255 bytes.
func ValidateRepository(name string) error {
	named, err := reference.WithName(grammarDomain + "/" + name)
	if err != nil || reference.Path(named) != name {
		return fmt.Errorf("repository name %q: %w", name, ErrInvalidName)
	}
	// "_layers" etc. cannot appear (underscore can't lead a component), so a
	// nested name never collides with a repository's own bookkeeping.
	return nil
}

// ValidateTag reports whether tag is a valid tag in Distribution's grammar.
func ValidateTag(tag string) error {
	if _, err := reference.WithTag(anyRepository, tag); err != nil {
		return fmt.Errorf("tag %q: %w", tag, ErrInvalidName)
	}
	return nil
}

func validateDigest(d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("digest %q: %w: %v", d, ErrInvalidName, err)
	}
	if d.Algorithm() != digest.SHA256 {
		return fmt.Errorf("digest %s: only sha256 is supported: %w", d, ErrInvalidName)
	}
	return nil
}
