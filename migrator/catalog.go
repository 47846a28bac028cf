package migrator

import (
	"context"
	"fmt"
	"hash/fnv"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Item is one image to migrate: a tag, or an untagged manifest (Tag empty),
// of a source repository.
type Item struct {
	Repository string
	Tag        string
	// Digest is the manifest the source says the item is, when its listing
	// tells (ECR's does); otherwise it is found when the item is opened.
	Digest    digest.Digest
	MediaType string
	// Size is the image's size as the source reports it (0: unknown).
	Size     int64
	PushedAt time.Time
}

// Key names the item: repo:tag, or repo@digest when untagged.
func (it Item) Key() string {
	if it.Tag != "" {
		return it.Repository + ":" + it.Tag
	}
	return it.Repository + "@" + it.Digest.String()
}

// Catalog is a source of many images: a whole registry or one repository of
// one, or a bucket.
type Catalog interface {
	// String names the source for reports.
	String() string
	// List returns the images the source holds that f selects, in any
	// order.
	List(ctx context.Context, f Filter) ([]Item, error)
	// Open returns one listed item as a copy Source.
	Open(ctx context.Context, it Item) (Source, error)
}

// ReferrerLister is a Catalog that can find what refers to a manifest:
// cosign signature, attestation and SBOM tags (sha256-<hex>.sig/.att/.sbom)
// and OCI referrers.
type ReferrerLister interface {
	Referrers(ctx context.Context, repo string, d digest.Digest) ([]Item, error)
}

// Filter selects items. Zero values select everything.
type Filter struct {
	// Repository and Tag, if set, must match the repository name and tag
	// (regular expressions, unanchored: anchor them with ^...$).
	Repository *regexp.Regexp
	Tag        *regexp.Regexp
	// PushedAfter, if set, drops images pushed at or before it (where the
	// source reports push times: ECR).
	PushedAfter time.Time
	// SkipUntagged drops untagged manifests. A Tag filter drops them too.
	SkipUntagged bool
}

// MatchRepository reports whether repo passes the filter.
func (f Filter) MatchRepository(repo string) bool {
	return f.Repository == nil || f.Repository.MatchString(repo)
}

// Match reports whether it passes the filter.
func (f Filter) Match(it Item) bool {
	if !f.MatchRepository(it.Repository) {
		return false
	}
	if it.Tag == "" && (f.SkipUntagged || f.Tag != nil) {
		return false
	}
	if it.Tag != "" && f.Tag != nil && !f.Tag.MatchString(it.Tag) {
		return false
	}
	if !f.PushedAfter.IsZero() && !it.PushedAt.IsZero() && !it.PushedAt.After(f.PushedAfter) {
		return false
	}
	return true
}

// Shard is one of N deterministic parts of a migration: an item belongs to
// shard i when the FNV-1a hash of its key is i mod N. Every shard lists the
// same source and keeps its own part, so shards need no coordination.
type Shard struct{ Index, Count int }

// ParseShard parses "i/N" (0 <= i < N).
func ParseShard(s string) (Shard, error) {
	var sh Shard
	if _, err := fmt.Sscanf(s, "%d/%d", &sh.Index, &sh.Count); err != nil || sh.Count < 1 || sh.Index < 0 || sh.Index >= sh.Count || fmt.Sprintf("%d/%d", sh.Index, sh.Count) != s {
		return Shard{}, fmt.Errorf("shard %q: want i/N with 0 <= i < N", s)
	}
	return sh, nil
}

// Has reports whether it belongs to the shard (the zero Shard holds all).
func (sh Shard) Has(it Item) bool {
	if sh.Count <= 1 {
		return true
	}
	h := fnv.New32a()
	h.Write([]byte(it.Key()))
	return int(h.Sum32()%uint32(sh.Count)) == sh.Index
}

// sortItems orders tags before untagged manifests, then by key, so runs are
// reproducible.
func sortItems(items []Item) {
	sort.SliceStable(items, func(i, j int) bool {
		a, b := items[i], items[j]
		if (a.Tag == "") != (b.Tag == "") {
			return a.Tag != ""
		}
		return a.Key() < b.Key()
	})
}

// Short names for the types every file here uses.
type (
	// Digest is a content digest.
	Digest = digest.Digest
	// Descriptor describes a manifest or blob.
	Descriptor = ocispec.Descriptor
)

// isReferrerTag reports whether tag is a cosign or fallback referrers tag
// (sha256-<hex>[.sig|.att|.sbom]): found as referrers, not listed as images.
func isReferrerTag(tag string) bool {
	return strings.HasPrefix(tag, "sha256-")
}
