package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/s3snap/s3snap/store"
)

// eager is the layerProvider that unpacks layers: the layer's blob is
// fetched from the first store that has it (stores.go), verified and
// unpacked into a parentless staging snapshot (unpack.go), its implicit
// directories given the parent's attributes (parents.go), and committed.
// The first layer's Prepare starts every missing layer of the image
// unpacking in the background (jobs.go), so later Prepares find theirs
// staged already.
type eager struct {
	sn     snapshots.Snapshotter // the overlay snapshotter
	stores StoreFunc
	jobs   *jobs
}

var _ layerProvider = (*eager)(nil)

func (e *eager) provide(ctx context.Context, r request, parent string, labels map[string]string) error {
	if _, err := e.sn.Stat(ctx, r.chainID); err == nil {
		return nil // already committed, by us or an earlier pull
	}
	stores := e.stores(r.host)
	if len(stores) == 0 {
		return fmt.Errorf("registry %s: %w", r.host, errNotMirrored)
	}
	start := time.Now()
	// A layer an earlier Prepare of the image started (its prefetch) needs
	// no lookup, and the prefetch is done.
	st := e.jobs.storeOf(r.layer)
	if st == nil {
		stores = manifestFirst(ctx, stores, r)
		var err error
		if st, err = firstWith(ctx, stores, r.layer); err != nil {
			return err
		}
		// This layer first: containerd waits for it before asking for
		// the next one.
		e.jobs.start(st, r.layer)
		if len(r.layers) > 1 {
			e.prefetchAsync(ctx, stores, r)
		}
	}
	sl, err := e.fetchLayer(ctx, stores, st, r.layer)
	if err != nil {
		return err
	}
	err = e.admit(ctx, sl, parent, r.chainID)
	if err != nil && sl.source == "index" && errors.Is(err, ErrChainMismatch) {
		// The index rebuilt a tar of its own diff ID, but not the one
		// the image names: it is another layer's. The blob decides.
		removeSnapshot(ctx, e.sn, sl.key)
		log.G(ctx).WithError(err).WithField("layer", r.layer).Warn("layer unpacked from its lazy index is not the image's; unpacking the layer blob")
		indexUnpackFailures.Inc()
		if sl, err = unpackBlob(ctx, e.sn, st, r.layer); err != nil {
			return err
		}
		err = e.admit(ctx, sl, parent, r.chainID)
	}
	if err != nil {
		removeSnapshot(ctx, e.sn, sl.key)
		return fmt.Errorf("layer %s: %w", r.layer, err)
	}
	err = commitLayer(ctx, e.sn, sl.key, parent, sl.diffID, r.chainID, labels, nil)
	if errdefs.IsNotFound(err) {
		// The staging snapshot is gone: containerd's garbage collector
		// removes the backend's snapshots its metadata does not name, and
		// may run while a staged layer waits for its Prepare. Once more.
		log.G(ctx).WithError(err).WithField("layer", r.layer).Warn("staged layer removed before its commit; unpacking it again")
		if sl, err = unpackLayer(ctx, e.sn, st, r.layer); err != nil {
			return err
		}
		if err = e.admit(ctx, sl, parent, r.chainID); err != nil {
			removeSnapshot(ctx, e.sn, sl.key)
			return fmt.Errorf("layer %s: %w", r.layer, err)
		}
		err = commitLayer(ctx, e.sn, sl.key, parent, sl.diffID, r.chainID, labels, nil)
	}
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			return nil // a concurrent pull committed it first
		}
		return fmt.Errorf("commit layer %s as %s: %w", r.layer, r.chainID, err)
	}
	layersFetched.WithLabelValues(sl.store).Inc()
	layersUnpacked.WithLabelValues(sl.source).Inc()
	bytesFetched.WithLabelValues(sl.store).Add(float64(sl.bytes))
	log.G(ctx).WithField("layer", r.layer).WithField("chainID", r.chainID).WithField("store", sl.store).WithField("from", sl.source).WithField("waited", time.Since(start)).Info("layer provided from s3")
	return nil
}

// admit decides whether staged layer sl may become chainID on top of
// parent, and gives its implicit directories the parent's attributes.
func (e *eager) admit(ctx context.Context, sl *staged, parent, chainID string) error {
	if err := checkChain(parent, sl.diffID, chainID); err != nil {
		return err
	}
	if len(sl.dirs) == 0 {
		return nil
	}
	lowers, err := parentLowers(ctx, e.sn, parent)
	if err != nil {
		return fmt.Errorf("parent %s: %w", parent, err)
	}
	return inheritDirs(sl.dir, sl.dirs, lowers)
}

// fetchLayer unpacks layer d from st, the first of stores that has it; if
// that fails (S3 down, a damaged object) the next store that has it is
// tried. The error is the failures, never "not in the bucket".
func (e *eager) fetchLayer(ctx context.Context, stores []*store.Store, st *store.Store, d digest.Digest) (*staged, error) {
	var errs []error
	for {
		sl, err := e.jobs.claim(ctx, st, d)
		if errors.Is(err, errClaimed) {
			sl, err = unpackLayer(ctx, e.sn, st, d)
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

// prefetchAsync starts prefetch in the background: its lookups (the
// manifest, the config, each layer's store) are S3 round trips no Prepare
// should wait for.
func (e *eager) prefetchAsync(ctx context.Context, stores []*store.Store, r request) {
	// The request's context ends with its Prepare; the snapshotter's
	// ends with it, and the lookups are bounded.
	pctx, cancel := context.WithTimeout(log.WithLogger(e.jobs.ctx, log.G(ctx)), prefetchTimeout)
	go func() {
		defer cancel()
		e.prefetch(pctx, stores, r)
	}()
}

// prefetchTimeout bounds a prefetch's lookups (not the unpacks it starts).
const prefetchTimeout = time.Minute

// prefetch starts unpacking every layer of the image that is not yet a
// snapshot, each from the first of stores that has it. It reads the
// manifest and config from the first store that can give them to learn the
// layers' chain IDs; without them it prefetches the listed layers as is.
func (e *eager) prefetch(ctx context.Context, stores []*store.Store, r request) {
	todo := r.layers
	if r.manifest != "" {
		for _, st := range stores {
			layers, err := e.missingLayers(ctx, st, r)
			if err == nil {
				todo = layers
				break
			}
			log.G(ctx).WithError(err).WithField("store", st.URL()).Debug("prefetch: cannot read image from store")
		}
	}
	for _, d := range todo {
		if d == r.layer {
			continue // its own Prepare starts it
		}
		if st, err := firstWith(ctx, stores, d); err == nil {
			e.jobs.start(st, d)
		}
	}
}

// missingLayers returns the image's layers whose snapshots don't exist yet.
func (e *eager) missingLayers(ctx context.Context, st *store.Store, r request) ([]digest.Digest, error) {
	m, err := st.GetManifest(ctx, r.repo, r.manifest)
	if err != nil {
		return nil, err
	}
	if m.Image == nil {
		return nil, fmt.Errorf("manifest %s is an index", r.manifest)
	}
	cfg, err := st.ImageConfig(ctx, m.Image.Config.Digest)
	if err != nil {
		return nil, err
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Image.Layers) {
		return nil, fmt.Errorf("config %s has %d diff ids for %d layers", m.Image.Config.Digest, len(cfg.RootFS.DiffIDs), len(m.Image.Layers))
	}
	chain := identity.ChainIDs(append([]digest.Digest(nil), cfg.RootFS.DiffIDs...))
	var out []digest.Digest
	for i, l := range m.Image.Layers {
		if _, err := e.sn.Stat(ctx, chain[i].String()); err != nil {
			out = append(out, l.Digest)
		}
	}
	return out, nil
}
