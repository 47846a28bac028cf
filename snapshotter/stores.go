package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/store"
)

// manifestFirst moves the first store holding the image's manifest to the
// front: an image's blobs are read from the store its manifest came from
// when that store has them (a replica may lag behind), else from the next.
// Without a manifest digest, or with one store, the order is kept.
func manifestFirst(ctx context.Context, stores []*store.Store, r request) []*store.Store {
	if r.manifest == "" || len(stores) < 2 {
		return stores
	}
	for i, st := range stores {
		has, err := st.HasBlob(ctx, r.manifest)
		if err != nil {
			log.G(ctx).WithError(err).WithField("store", st.URL()).WithField("manifest", r.manifest).Warn("look up manifest in store; trying the next")
			continue
		}
		if !has {
			continue
		}
		if i == 0 {
			return stores
		}
		out := make([]*store.Store, 0, len(stores))
		out = append(out, st)
		out = append(out, stores[:i]...)
		return append(out, stores[i+1:]...)
	}
	return stores
}

// firstWith returns the first store that has blob d. A store that cannot
// be asked is logged and skipped; errNotInBucket means none had it.
func firstWith(ctx context.Context, stores []*store.Store, d digest.Digest) (*store.Store, error) {
	var errs []error
	for _, st := range stores {
		has, err := st.HasBlob(ctx, d)
		if err != nil {
			log.G(ctx).WithError(err).WithField("store", st.URL()).WithField("blob", d).Warn("look up blob in store; trying the next")
			errs = append(errs, fmt.Errorf("look up %s in %s: %w", d, st.URL(), err))
			continue
		}
		if has {
			return st, nil
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return nil, fmt.Errorf("layer %s: %w", d, errNotInBucket)
}

// fetchLayer unpacks layer d from st, the first of stores that has it; if
// that fails (S3 down, a damaged object) the next store that has it is
// tried. The error is the failures, never "not in the bucket".
func (s *Snapshotter) fetchLayer(ctx context.Context, stores []*store.Store, st *store.Store, d digest.Digest) (*staged, error) {
	var errs []error
	for {
		sl, err := s.jobs.claim(ctx, st, d)
		if errors.Is(err, errClaimed) {
			sl, err = unpackLayer(ctx, s.Snapshotter, st, d)
		}
		if err == nil {
			return sl, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			return nil, errors.Join(errs...)
		}
		rest := stores[slices.Index(stores, st)+1:]
		if len(rest) == 0 {
			return nil, errors.Join(errs...)
		}
		log.G(ctx).WithError(err).WithField("store", st.URL()).WithField("layer", d).Warn("fetch layer from store failed; trying the next")
		if st, err = firstWith(ctx, rest, d); err != nil {
			if !errors.Is(err, errNotInBucket) {
				errs = append(errs, err)
			}
			return nil, errors.Join(errs...)
		}
	}
}
