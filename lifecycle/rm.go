package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/store"
)

// Removal is what RemoveTag or RemoveManifest removed, or with dryRun
// would remove.
type Removal struct {
	Repo   string        `json:"repository"`
	Digest digest.Digest `json:"digest"`
	// Tags are the tags removed, sorted.
	Tags []string `json:"tags"`
	// Keys are the objects deleted (or that would be), in deletion order.
	Keys []string `json:"keys"`
}

// RemoveTag removes tag from repository repo: its current link first (the
// tag stops resolving), then its index links. The manifest it pointed at
// stays (other tags or digests may use it); gc sweeps it once unreferenced.
// A missing tag is an error wrapping store.ErrNotFound.
func RemoveTag(ctx context.Context, st *store.Store, repo, tag string, dryRun bool) (Removal, error) {
	if err := store.ValidateRepository(repo); err != nil {
		return Removal{}, err
	}
	d, err := st.Resolve(ctx, repo, tag)
	if err != nil {
		return Removal{}, err
	}
	r := Removal{Repo: repo, Digest: d, Tags: []string{tag}}
	current, index, err := tagKeys(ctx, st, repo, tag)
	if err != nil {
		return Removal{}, err
	}
	r.Keys = append([]string{current}, index...)
	if dryRun {
		return r, nil
	}
	if err := removeInOrder(ctx, st, []string{current}, index); err != nil {
		return r, fmt.Errorf("remove tag %s:%s: %w", repo, tag, err)
	}
	return r, nil
}

// RemoveManifest removes manifest d from repository repo: every tag of
// repo pointing at it (current and index links), the index links of other
// tags that once pointed at it, then its revision link, so neither a tag
// nor the digest resolves in repo any more. Blobs are left for gc. A
// manifest not in repo is an error wrapping store.ErrNotFound.
func RemoveManifest(ctx context.Context, st *store.Store, repo string, d digest.Digest, dryRun bool) (Removal, error) {
	if err := store.ValidateRepository(repo); err != nil {
		return Removal{}, err
	}
	if err := d.Validate(); err != nil || d.Algorithm() != digest.SHA256 {
		return Removal{}, fmt.Errorf("digest %q: %w", d, store.ErrInvalidName)
	}
	revision := st.RevisionLinkKey(repo, d)
	found := false
	if err := st.Walk(ctx, revision, func(o store.Object) error {
		found = found || o.Key == revision
		return nil
	}); err != nil {
		return Removal{}, err
	}
	if !found {
		return Removal{}, fmt.Errorf("manifest %s in %s: %w", d, repo, store.ErrNotFound)
	}
	r := Removal{Repo: repo, Digest: d, Tags: []string{}}

	// One listing of the tags folder: current links to read, index links
	// naming d to drop.
	base := st.TagsKey(repo)
	var currents, index []string
	indexSuffix := "/index/" + d.Algorithm().String() + "/" + d.Encoded() + "/link"
	tagIndex := map[string][]string{} // tag -> its index links (any digest)
	err := st.Walk(ctx, base, func(o store.Object) error {
		rest := strings.TrimPrefix(o.Key, base)
		tag, tail, ok := strings.Cut(rest, "/")
		if !ok {
			return nil
		}
		switch {
		case tail == "current/link":
			currents = append(currents, tag)
		case strings.HasPrefix(tail, "index/"):
			tagIndex[tag] = append(tagIndex[tag], o.Key)
			if strings.HasSuffix(o.Key, indexSuffix) {
				index = append(index, o.Key)
			}
		}
		return nil
	})
	if err != nil {
		return Removal{}, err
	}
	var current []string
	dropped := map[string]bool{}
	for _, tag := range currents {
		td, err := st.ReadLink(ctx, st.TagKey(repo, tag)+"current/link")
		if errors.Is(err, store.ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return Removal{}, fmt.Errorf("tag %s:%s: %w", repo, tag, err)
		}
		if td == d {
			r.Tags = append(r.Tags, tag)
			current = append(current, st.TagKey(repo, tag)+"current/link")
			dropped[tag] = true
		}
	}
	// A removed tag loses its whole history; another tag only d's entry.
	var links []string
	for tag, keys := range tagIndex {
		if dropped[tag] {
			links = append(links, keys...)
		}
	}
	for _, k := range index {
		tag, _, _ := strings.Cut(strings.TrimPrefix(k, base), "/")
		if !dropped[tag] {
			links = append(links, k)
		}
	}
	sort.Strings(r.Tags)
	sort.Strings(current)
	sort.Strings(links)
	r.Keys = append(append(append(r.Keys, current...), links...), revision)
	if dryRun {
		return r, nil
	}
	if err := removeInOrder(ctx, st, current, links, []string{revision}); err != nil {
		return r, fmt.Errorf("remove manifest %s from %s: %w", d, repo, err)
	}
	return r, nil
}

// tagKeys lists tag's objects: its current link and the rest (index links).
func tagKeys(ctx context.Context, st *store.Store, repo, tag string) (current string, rest []string, err error) {
	dir := st.TagKey(repo, tag)
	current = dir + "current/link"
	err = st.Walk(ctx, dir, func(o store.Object) error {
		if o.Key != current {
			rest = append(rest, o.Key)
		}
		return nil
	})
	return current, rest, err
}

// removeInOrder deletes each group of keys before the next: what makes a
// thing resolvable goes first, so a failure part way leaves it unresolvable
// rather than half there.
func removeInOrder(ctx context.Context, st *store.Store, groups ...[]string) error {
	for _, g := range groups {
		if err := st.Delete(ctx, g); err != nil {
			return err
		}
	}
	return nil
}
