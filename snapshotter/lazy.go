package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/internal/atomicfile"
	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/lazy/fused"
)

// Lazy mode: a layer whose lazy index is in the bucket is not unpacked.
// Its snapshot is committed empty and its upper directory then mounted
// with FUSE, presenting the layer as overlayfs expects a lower directory;
// file data is fetched by chunk on first read and the rest prefetched in
// the background into a verified chunk cache under the root. The mounts
// are served by the lazy FUSE server (package lazy/fused), a process of
// its own that outlives the agent, through a Mounter: this process never
// mounts or serves a lazy mount, so no restart or kill of it reaches a
// container's reads, nor leaves it waiting on a mount it served itself.
// Mounts are recorded under <root>/lazy/mounts so the agent re-adopts
// (or remounts) them when it starts again; committing before mounting
// keeps the overlay snapshotter's disk-usage walk off the FUSE tree.

// Mounter serves the lazy mounts (fused.Client, talking to the server).
// Mount is idempotent: the same layer through the same TOC already at
// m.Dir is kept; on error nothing is mounted there. Unmount of a
// directory with no mount is no error; a busy mount is detached, served
// until its last user goes. List reports every mount the server holds;
// an error wrapping fused.ErrNotRunning means there is no server, so no
// mount is served.
type Mounter interface {
	Mount(ctx context.Context, m fused.Mount) error
	Unmount(ctx context.Context, dir string) error
	List(ctx context.Context) ([]fused.State, error)
}

// WithLazyMounter sets what serves lazy mounts; without one, lazy mode
// (and the remount of earlier lazy mounts) fails to start.
func WithLazyMounter(m Mounter) Option { return func(o *options) { o.lazy.mounter = m } }

// labelLazyLayer marks a committed snapshot served by a lazy mount.
const labelLazyLayer = "s3snap.io/lazy-layer"

type lazyOptions struct {
	enabled bool
	mounter Mounter
	// verifyBeforeStart: lazy_verify.go.
	verifyBeforeStart bool
}

// WithLazy turns lazy mode on or off (default off).
func WithLazy(enabled bool) Option { return func(o *options) { o.lazy.enabled = enabled } }

// lazyRecord is the state file of one lazy mount.
type lazyRecord struct {
	Name  string        `json:"name"`  // the committed snapshot (a chain ID)
	Layer digest.Digest `json:"layer"` // the layer it presents
	Host  string        `json:"host"`  // the registry host, to find its stores
	Store string        `json:"store"` // the store the index came from
	Dir   string        `json:"dir"`   // the snapshot's upper directory: the mount point
	// Dirs are the attributes of the directories the layer implies but
	// does not hold, taken from the parent chain when it was provided.
	Dirs map[string]lazy.Entry `json:"dirs,omitempty"`
	// TOC is the digest of the encoded TOC that was checked when the layer
	// was provided: a remount uses exactly that one, never one the bucket
	// holds by then.
	TOC digest.Digest `json:"toc,omitempty"`
	// DiffID is the layer's diff ID in the image (the TOC's, checked
	// against the chain ID): the server verifies the layer against it.
	DiffID digest.Digest `json:"diff_id,omitempty"`
}

// lazyProvider is the layerProvider that mounts layers lazily, and the
// state of the lazy mounts: they outlive the Prepare that made them, are
// remounted when the agent starts (lazy_restore.go), and a lazy layer that
// is not mounted is never shown (checkMounted). It exists when lazy mode
// is on or an earlier run left lazy mounts; it provides layers only when
// lazy mode is on.
type lazyProvider struct {
	ctx    context.Context       // the snapshotter's lifetime
	sn     snapshots.Snapshotter // the overlay snapshotter
	stores StoreFunc
	dir    string // <root>/lazy
	fs     Mounter
	// verifyBeforeStart: checkIndex (lazy_verify.go).
	verifyBeforeStart bool
	ahead             aheadTOCs // fetched ahead of their Prepare (lazy_ahead.go)

	mu      sync.Mutex
	mounts  map[string]lazyRecord    // mounted, by snapshot name
	pending map[string]chan struct{} // chain IDs being provided
	// unavailable are committed lazy snapshots that are not mounted (yet):
	// being mounted, or a remount failed and is being retried. Their
	// directories must never be shown, so no mount of a chain holding one
	// is handed out meanwhile.
	unavailable map[string]unmounted
	retrying    bool // a retry loop is running
	closed      bool // close has begun: nothing more is mounted

	// The chunk cache of verify_before_start (verifyCache), opened once.
	cacheOnce sync.Once
	cache     *lazy.Cache
	cacheErr  error

	tocs tocKeeper // local TOC copies (lazy_toc.go)
}

// hasLazyMounts reports whether an earlier run left lazy mounts to restore:
// they are remounted even with lazy mode now off, or their snapshots would
// be empty directories.
func hasLazyMounts(root string) bool {
	entries, err := os.ReadDir(filepath.Join(root, "lazy", "mounts"))
	return err == nil && len(entries) > 0
}

var _ layerProvider = (*lazyProvider)(nil)

func newLazyProvider(ctx context.Context, sn snapshots.Snapshotter, stores StoreFunc, root string, o lazyOptions) (*lazyProvider, error) {
	dir := filepath.Join(root, "lazy")
	for _, d := range []string{"mounts", "toc"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("lazy state: %w", err)
		}
	}
	if o.mounter == nil {
		return nil, errors.New("lazy mounts need a lazy FUSE server (WithLazyMounter)")
	}
	l := &lazyProvider{
		ctx: ctx, sn: sn, stores: stores, dir: dir, fs: o.mounter, verifyBeforeStart: o.verifyBeforeStart,
		mounts: map[string]lazyRecord{}, pending: map[string]chan struct{}{},
		unavailable: map[string]unmounted{},
	}
	l.sweepTOCs()
	return l, nil
}

// claim waits until no other Prepare is providing chainID, then marks it
// as ours until release is called.
func (l *lazyProvider) claim(ctx context.Context, chainID string) (release func(), err error) {
	for {
		l.mu.Lock()
		ch, busy := l.pending[chainID]
		if !busy {
			ch = make(chan struct{})
			l.pending[chainID] = ch
			l.mu.Unlock()
			return func() {
				l.mu.Lock()
				delete(l.pending, chainID)
				l.mu.Unlock()
				close(ch)
			}, nil
		}
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// provide provides r with a lazy mount if the bucket has a sound index
// for the layer. Every failure passes the layer on (errPassOn), to be
// unpacked as usual; a bad index is counted as a fallback "bad_index".
func (l *lazyProvider) provide(ctx context.Context, r request, parent string, labels map[string]string) error {
	err := l.provideLazy(ctx, r, parent, labels)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, lazy.ErrNoIndex):
		log.G(ctx).WithField("layer", r.layer).Debug("no lazy index; unpacking the layer")
	case errors.Is(err, lazy.ErrInvalidIndex), errors.Is(err, lazy.ErrUnsafePath), errors.Is(err, ErrChainMismatch):
		lazyFallbacks.Inc()
		fallbacks.WithLabelValues("bad_index").Inc()
		log.G(ctx).WithError(err).WithField("layer", r.layer).WithField("image", r.host+"/"+r.repo).Warn("bad lazy index; unpacking the layer")
	default:
		lazyFallbacks.Inc()
		log.G(ctx).WithError(err).WithField("layer", r.layer).Warn("lazy mount failed; unpacking the layer")
	}
	return fmt.Errorf("lazy: %w: %w", errPassOn, err)
}

// provideLazy makes r.chainID a committed snapshot backed by a lazy mount
// of the layer's index. An error wrapping lazy.ErrNoIndex means there is
// none; any error means nothing was left behind. Everything read from the
// bucket is checked before anything changes on disk: the TOC is validated
// as it is decoded, its diff ID must make the chain ID containerd asked
// for, and the file tree is built once before mounting.
func (l *lazyProvider) provideLazy(ctx context.Context, r request, parent string, labels map[string]string) (retErr error) {
	start := time.Now()
	release, err := l.claim(ctx, r.chainID)
	if err != nil {
		return err
	}
	defer release()
	if _, err := l.sn.Stat(ctx, r.chainID); err == nil {
		return nil // committed meanwhile (and mounted, if lazy: claim waited)
	}
	stores := l.stores(r.host)
	if len(stores) == 0 {
		return fmt.Errorf("registry %s: %w", r.host, errNotMirrored)
	}
	l.ahead.warm(l.ctx, r.host, stores, r.layers) // the image's other layers, in parallel
	toc, raw, st, err := l.ahead.get(ctx, r.host, stores, r.layer)
	if err != nil {
		return err
	}
	if err := checkChain(parent, toc.DiffID, r.chainID); err != nil {
		return fmt.Errorf("lazy index of %s: %w", r.layer, err)
	}
	if err := l.checkIndex(ctx, r, toc, raw, st); err != nil {
		return err
	}
	fetched := time.Since(start)
	dirs, err := implicitDirAttrs(ctx, l.sn, parent, toc)
	if err != nil {
		return err
	}
	if _, err := lazy.Tree(toc, lazy.WithImplicitDirs(dirs)); err != nil {
		return err
	}
	tocDigest := digest.FromBytes(raw)
	defer l.holdTOC(tocDigest)()
	if err := atomicfile.Write(l.tocPath(tocDigest), raw, 0o600); err != nil {
		return fmt.Errorf("keep toc of %s: %w", r.layer, err)
	}

	key := stagePrefix + "lazy-" + r.layer.Encoded() + "-" + uniquePart()
	mounts, err := l.sn.Prepare(ctx, key, "", snapshots.WithLabels(map[string]string{labelStagedLayer: r.layer.String()}))
	if err != nil {
		return fmt.Errorf("prepare lazy snapshot for %s: %w", r.layer, err)
	}
	dir, err := upperDir(mounts)
	if err != nil {
		removeSnapshot(ctx, l.sn, key)
		return err
	}
	rec := lazyRecord{Name: r.chainID, Layer: r.layer, Host: r.host, Store: st.URL(), Dir: dir, Dirs: dirs, TOC: tocDigest, DiffID: toc.DiffID}
	// Recorded before the commit: a crash after it still finds the mount
	// to restore; one before it leaves a record restore drops. Until it is
	// mounted, no mount of a chain holding it is handed out.
	if err := l.writeRecord(rec); err != nil {
		removeSnapshot(ctx, l.sn, key)
		return err
	}
	l.setUnavailable(rec, errors.New("being mounted"))
	extra := map[string]string{labelLazyLayer: r.layer.String()}
	if err := commitLayer(ctx, l.sn, key, parent, toc.DiffID, r.chainID, labels, extra); err != nil {
		l.removeRecord(r.chainID)
		l.setAvailable(r.chainID)
		if errdefs.IsAlreadyExists(err) {
			return nil
		}
		return fmt.Errorf("commit lazy layer %s as %s: %w", r.layer, r.chainID, err)
	}
	committed := time.Since(start)
	if err := l.mount(ctx, rec); err != nil {
		// A request that failed on the way (a timeout, the server dying)
		// may still have mounted: never remove a snapshot under a mount.
		if uerr := l.fs.Unmount(context.WithoutCancel(ctx), rec.Dir); uerr != nil {
			log.G(ctx).WithError(uerr).WithField("dir", rec.Dir).Warn("lazy: unmount after a failed mount")
		}
		removeSnapshot(ctx, l.sn, r.chainID)
		l.removeRecord(r.chainID)
		l.setAvailable(r.chainID)
		return err
	}
	lazyLayers.Inc()
	log.G(ctx).WithFields(log.Fields{
		"layer": r.layer, "chainID": r.chainID, "store": st.URL(),
		"toc": fetched, "committed": committed, "took": time.Since(start),
	}).Info("layer mounted lazily from s3")
	return nil
}

// mount has the server mount rec's layer (and prefetch it) from the
// local TOC copy rec.TOC names; once mounted, the layer is available.
func (l *lazyProvider) mount(ctx context.Context, rec lazyRecord) error {
	l.mu.Lock()
	_, mounted := l.mounts[rec.Name]
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return fmt.Errorf("mount lazy layer %s: the snapshotter is closing", rec.Layer)
	}
	if mounted {
		return fmt.Errorf("mount lazy layer %s: %s is mounted already", rec.Layer, rec.Name)
	}
	if err := l.fs.Mount(context.WithoutCancel(ctx), rec.request()); err != nil {
		return fmt.Errorf("mount lazy layer %s: %w", rec.Layer, err)
	}
	l.adopt(rec)
	return nil
}

// adopt marks rec mounted and available.
func (l *lazyProvider) adopt(rec lazyRecord) {
	l.mu.Lock()
	l.mounts[rec.Name] = rec
	delete(l.unavailable, rec.Name)
	l.mu.Unlock()
}

// request is what the server is asked to mount for rec.
func (rec lazyRecord) request() fused.Mount {
	// One verified here before start is not verified again.
	_, verified := verifiedIndexes.Load(rec.TOC)
	return fused.Mount{
		Name: rec.Name, Dir: rec.Dir, Layer: rec.Layer, TOC: rec.TOC, Host: rec.Host, Store: rec.Store, Dirs: rec.Dirs,
		DiffID: rec.DiffID, Verified: verified,
	}
}

// remove removes a snapshot, unmounting it first if it is lazy. Nothing
// else provides or mounts key meanwhile: it holds key's claim.
func (l *lazyProvider) remove(ctx context.Context, key string) error {
	// Not while the layer is being provided or mounted again.
	release, err := l.claim(ctx, key)
	if err != nil {
		return err
	}
	defer release()
	l.mu.Lock()
	rec, mounted := l.mounts[key]
	_, down := l.unavailable[key]
	l.mu.Unlock()
	if !mounted {
		if err := l.sn.Remove(ctx, key); err != nil {
			return err
		}
		if down { // never shown, and now gone: stop retrying it
			l.setAvailable(key)
			l.removeRecord(key)
		}
		return nil
	}
	// A snapshot with children cannot go: let the overlay snapshotter say
	// so before the mount is touched.
	hasChildren := false
	if err := l.sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		hasChildren = hasChildren || info.Parent == key
		return nil
	}); err != nil {
		return err
	}
	if hasChildren {
		return l.sn.Remove(ctx, key)
	}
	// A layer the server found bad is removed to be pulled again ("remove
	// the image and pull it again"): learn it now, so that pull unpacks.
	if states, err := l.fs.List(ctx); err == nil {
		noteBad(states)
	}
	if err := l.fs.Unmount(context.WithoutCancel(ctx), rec.Dir); err != nil {
		return fmt.Errorf("unmount lazy layer %s: %w", rec.Layer, err)
	}
	l.mu.Lock()
	delete(l.mounts, key)
	l.mu.Unlock()
	if err := l.sn.Remove(ctx, key); err != nil {
		// Still committed, now unmounted: never shown so, mounted again.
		l.hide(ctx, rec, err)
		l.startRetry()
		return err
	}
	l.removeRecord(key)
	return nil
}

// usage is a lazy snapshot's usage: the bytes of its layer on local
// disk. ok is false when key is not a mounted lazy layer.
func (l *lazyProvider) usage(ctx context.Context, key string) (_ snapshots.Usage, ok bool) {
	l.mu.Lock()
	rec, mounted := l.mounts[key]
	l.mu.Unlock()
	if !mounted {
		return snapshots.Usage{}, false
	}
	states, err := l.fs.List(ctx)
	if err != nil {
		log.G(ctx).WithError(err).Debug("lazy: usage")
	}
	for _, st := range states {
		if st.Dir == rec.Dir {
			return snapshots.Usage{Size: st.CachedBytes, Inodes: st.Inodes}, true
		}
	}
	// Never the overlay snapshotter's walk: it would read the mount.
	return snapshots.Usage{}, true
}

// close stops mounting. The mounts stay: they are the server's, and
// outlive this process.
func (l *lazyProvider) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
}
