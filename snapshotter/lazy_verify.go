package snapshotter

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/lazy/fused"
	"github.com/s3snap/s3snap/store"
)

// Verification of lazy layers. A TOC's diff ID is checked against the
// chain ID containerd asked for (so against the image config, bound to
// the manifest digest), but its content is only the bucket's word until
// the layer's tar, rebuilt from the index (format v2), hashes to that
// diff ID. That check runs in the lazy FUSE server once its prefetch has
// the whole layer: a mismatch marks the layer bad, so its reads fail with
// EIO, and the server's List reports it (noteBad), so this agent never
// mounts that index again. With [lazy] verify_before_start it runs here,
// before the snapshot is committed (checkIndex), on a layer fetched
// whole in this process (no FUSE): a mismatch then means the layer is
// unpacked instead.

// WithLazyVerifyBeforeStart fetches and verifies a lazy layer whole before
// its snapshot is committed (default off: after, in the background).
func WithLazyVerifyBeforeStart(b bool) Option {
	return func(o *options) { o.lazy.verifyBeforeStart = b }
}

// badIndexes are the digests of encoded TOCs that failed verification;
// verifiedIndexes those that passed (in this process: not checked twice).
var badIndexes, verifiedIndexes sync.Map

// What checkIndex fetches at once: the ranged reads in flight and the
// compressed bytes of one (the server's prefetch defaults).
const (
	verifyRunJobs  = 2
	verifyRunBytes = 16 << 20
)

// checkIndex decides whether toc (raw: its encoded bytes, from st), whose
// diff ID was checked against the chain ID, may serve r. An error wrapping
// lazy.ErrInvalidIndex means it may not (the layer is unpacked).
func (l *lazyProvider) checkIndex(ctx context.Context, r request, toc *lazy.TOC, raw []byte, st *store.Store) error {
	if _, bad := badIndexes.Load(digest.FromBytes(raw)); bad {
		return fmt.Errorf("layer %s: its index failed verification: %w", r.layer, lazy.ErrMismatch)
	}
	if !toc.Verifiable() {
		log.G(ctx).WithField("layer", r.layer).WithField("image", r.host+"/"+r.repo).
			Warn("lazy index format v1: the layer's content cannot be verified; s3snap index rewrites it as v2")
		if l.verifyBeforeStart {
			return fmt.Errorf("layer %s: verify_before_start: %w", r.layer, lazy.ErrUnverifiable)
		}
		return nil
	}
	if !l.verifyBeforeStart {
		return nil
	}
	cache, err := l.verifyCache()
	if err != nil {
		return err
	}
	layer := lazy.NewLayer(toc, cache, lazy.OpenData(ctx, st, toc))
	if err := layer.Prefetch(ctx, verifyRunJobs, verifyRunBytes); err != nil {
		return fmt.Errorf("fetch layer %s to verify it: %w", r.layer, err)
	}
	if err := layer.Verify(ctx, toc.DiffID); err != nil {
		if layer.Bad() != nil {
			badIndexes.Store(digest.FromBytes(raw), true)
			log.G(ctx).WithError(err).WithField("layer", r.layer).WithField("image", r.host+"/"+r.repo).
				Error("lazy index does not rebuild the image's layer: not used")
		}
		return err
	}
	verifiedIndexes.Store(digest.FromBytes(raw), true)
	log.G(ctx).WithField("layer", r.layer).Debug("lazy layer verified before start")
	return nil
}

// noteBad remembers the TOCs of mounts the server found bad: no new
// pull mounts them again (checkIndex), its layer is unpacked instead.
func noteBad(states []fused.State) {
	for _, st := range states {
		if st.Bad != "" {
			badIndexes.Store(st.TOC, true)
		}
	}
}

// verifyCache is the chunk cache checkIndex fetches into: the server's
// directory (chunks are content-addressed and checked on read, so the
// two processes share it, and the server then finds the layer cached).
func (l *lazyProvider) verifyCache() (*lazy.Cache, error) {
	l.cacheOnce.Do(func() { l.cache, l.cacheErr = lazy.NewCache(filepath.Join(l.dir, "chunks")) })
	return l.cache, l.cacheErr
}
