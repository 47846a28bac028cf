package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/store"
)

// ErrReferenced means a manifest is a child of an index that a tag of the
// same repository names: removing it would leave that tag resolving to an
// index with a missing platform (ECR refuses the same delete with
// ImageReferencedByManifestList).
var ErrReferenced = errors.New("manifest referenced by a tagged index")

// CheckUnreferenced fails with an error wrapping ErrReferenced, naming the
// tags, if a tagged index of repo (nested indexes included) lists manifest
// d. It reads each tag's manifest once.
func CheckUnreferenced(ctx context.Context, st *store.Store, repo string, d digest.Digest) error {
	tags, err := st.ListTags(ctx, repo)
	if err != nil {
		return err
	}
	var by []string
	for _, tag := range tags {
		top, err := st.Resolve(ctx, repo, tag)
		if err != nil {
			if errors.Is(err, store.ErrNotFound) {
				continue // removed meanwhile
			}
			return err
		}
		if top == d {
			continue // the manifest's own tag: removing it is the point
		}
		found, err := indexLists(ctx, st, repo, top, d, 0)
		if err != nil {
			return fmt.Errorf("tag %s:%s: %w", repo, tag, err)
		}
		if found {
			by = append(by, tag)
		}
	}
	if len(by) > 0 {
		sort.Strings(by)
		return fmt.Errorf("%s@%s is a platform of the index tagged %v: %w", repo, d, by, ErrReferenced)
	}
	return nil
}

// indexLists reports whether manifest m of repo is an index that lists d,
// itself or through nested indexes.
func indexLists(ctx context.Context, st *store.Store, repo string, m, d digest.Digest, depth int) (bool, error) {
	if depth > maxIndexDepth {
		return false, nil
	}
	man, err := st.GetManifest(ctx, repo, m)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return false, nil
		}
		return false, err
	}
	if !man.IsIndex() {
		return false, nil
	}
	for _, c := range man.Index.Manifests {
		if c.Digest == d {
			return true, nil
		}
		if found, err := indexLists(ctx, st, repo, c.Digest, d, depth+1); err != nil || found {
			return found, err
		}
	}
	return false, nil
}
