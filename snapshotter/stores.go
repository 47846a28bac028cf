package snapshotter

import (
	"context"
	"errors"
	"fmt"

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
