package migrator

import (
	"context"
	"fmt"
	"io"
	"sort"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/store"
)

// StoreCatalog is a bucket as a source: every repository (or repo alone)
// and its tags; with tag set, that one tag.
func StoreCatalog(s *store.Store, repo, tag string) Catalog {
	return &storeCatalog{s: s, repo: repo, tag: tag}
}

type storeCatalog struct {
	s    *store.Store
	repo string
	tag  string
}

func (c *storeCatalog) String() string {
	u := c.s.URL()
	if c.repo != "" {
		u += "/" + c.repo
	}
	if c.tag != "" {
		u += ":" + c.tag
	}
	return u
}

func (c *storeCatalog) List(ctx context.Context, f Filter) ([]Item, error) {
	if c.repo != "" && c.tag != "" {
		return []Item{{Repository: c.repo, Tag: c.tag}}, nil
	}
	repos := []string{c.repo}
	if c.repo == "" {
		var err error
		if repos, err = c.s.ListRepositories(ctx); err != nil {
			return nil, err
		}
	}
	var items []Item
	for _, repo := range repos {
		if !f.MatchRepository(repo) {
			continue
		}
		tags, err := c.s.ListTags(ctx, repo)
		if err != nil {
			return nil, err
		}
		sort.Strings(tags)
		for _, t := range tags {
			if it := (Item{Repository: repo, Tag: t}); f.Match(it) {
				items = append(items, it)
			}
		}
	}
	return items, nil
}

func (c *storeCatalog) Open(ctx context.Context, it Item) (Source, error) {
	d := it.Digest
	if it.Tag != "" {
		var err error
		if d, err = c.s.Resolve(ctx, it.Repository, it.Tag); err != nil {
			return nil, err
		}
	}
	return &storeSource{s: c.s, repo: it.Repository, root: d}, nil
}

// storeSource reads one image out of a store.
type storeSource struct {
	s    *store.Store
	repo string
	root digest.Digest
}

func (s *storeSource) Root(ctx context.Context) (ocispec.Descriptor, error) {
	m, err := s.s.GetManifest(ctx, s.repo, s.root)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return ocispec.Descriptor{MediaType: m.MediaType, Digest: m.Digest, Size: int64(len(m.Raw))}, nil
}

func (s *storeSource) Manifest(ctx context.Context, d digest.Digest) ([]byte, error) {
	m, err := s.s.GetManifest(ctx, s.repo, d)
	if err != nil {
		return nil, err
	}
	return m.Raw, nil
}

func (s *storeSource) Blob(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	rc, _, err := s.s.OpenBlob(ctx, desc.Digest)
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", desc.Digest, err)
	}
	return rc, nil
}
