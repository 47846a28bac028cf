package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/store"
)

// Verification of lazy layers. A TOC's diff ID is checked against the
// chain ID containerd asked for (so against the image config, bound to
// the manifest digest), but its content is only the bucket's word until
// the layer's tar, rebuilt from the index (format v2), hashes to that
// diff ID. That check runs once the background prefetch has the whole
// layer (verifyMounted): a mismatch marks the layer bad, so its reads fail
// with EIO, and its index is never used again by this agent. With
// [lazy] verify_before_start it runs before the snapshot is committed
// (checkIndex): a mismatch then means the layer is unpacked instead.

// WithLazyVerifyBeforeStart fetches and verifies a lazy layer whole before
// its snapshot is committed (default off: after, in the background).
func WithLazyVerifyBeforeStart(b bool) Option {
	return func(o *options) { o.lazy.verifyBeforeStart = b }
}

// badIndexes are the digests of encoded TOCs that failed verification;
// verifiedIndexes those that passed (in this process: not checked twice).
var badIndexes, verifiedIndexes sync.Map

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
		if l.opts.verifyBeforeStart {
			return fmt.Errorf("layer %s: verify_before_start: %w", r.layer, lazy.ErrUnverifiable)
		}
		return nil
	}
	if !l.opts.verifyBeforeStart {
		return nil
	}
	layer := lazy.NewLayer(toc, l.cache, lazy.OpenData(ctx, st, toc))
	if err := layer.Prefetch(ctx, l.opts.runJobs, l.opts.runBytes); err != nil {
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

// verifyMounted checks a mounted layer once its prefetch has it whole.
func (l *lazyProvider) verifyMounted(ctx context.Context, m *lazyMount) {
	if _, ok := verifiedIndexes.Load(m.rec.TOC); ok {
		return
	}
	toc := m.layer.TOC()
	err := m.layer.Verify(ctx, toc.DiffID)
	fields := log.Fields{"layer": m.rec.Layer, "snapshot": m.rec.Name, "registry": m.rec.Host}
	switch {
	case err == nil:
		verifiedIndexes.Store(m.rec.TOC, true)
		log.G(ctx).WithFields(fields).Debug("lazy layer verified")
	case errors.Is(err, lazy.ErrUnverifiable):
		log.G(ctx).WithFields(fields).Warn("lazy layer served from a v1 index, unverified; s3snap index rewrites it as v2")
	case m.layer.Bad() != nil:
		badIndexes.Store(m.rec.TOC, true)
		log.G(ctx).WithError(err).WithFields(fields).Error("lazy layer does not match the image: its reads now fail (EIO); remove the image and pull it again")
	case ctx.Err() == nil:
		log.G(ctx).WithError(err).WithFields(fields).Warn("lazy layer could not be verified")
	}
}
