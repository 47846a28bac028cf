// Package snapshotter is s3snap's containerd snapshotter: containerd's own
// overlayfs snapshotter, plus this: when containerd prepares the snapshot
// of an image layer that the bucket holds, the layer is provided from S3
// and committed as an ordinary overlay snapshot, and Prepare answers
// ErrAlreadyExists, so containerd downloads nothing. Anything that goes
// wrong falls back to containerd's normal pull: Prepare returns ordinary
// mounts.
//
// Prepare is one flow (this file): parse containerd's labels (labels.go),
// ask the layer providers in turn, each behind the layerProvider interface
// (provider.go), and on failure record why and fall back. There are two
// providers. The eager one (eager.go) fetches the layer with parallel
// ranged GETs, verifies and unpacks it; the first layer's Prepare starts
// every missing layer of the image unpacking at once (jobs.go, stores.go,
// unpack.go). The lazy one (lazy.go, lazy_restore.go, lazy_watch.go),
// when lazy mode is on, commits the layer empty and has the lazy FUSE
// server (package lazy/fused, a process of its own) mount its index
// there, fetching file data on first read. Either commits through
// commitLayer, only under the chain ID the layer makes (chain.go), with
// its implicit directories as containerd's applier makes them
// (parents.go).
package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/s3snap/s3snap/store"
)

// StoreFunc returns the stores that hold images of registry host, in the
// order to look in them (the node's own region's copy first); none means
// the host is not mirrored. A layer is read from the first store that has
// it, preferring the one holding the image's manifest; a store that lacks
// it, or fails (logged), passes the layer on to the next, and after the
// last to containerd's own pull.
type StoreFunc func(host string) []*store.Store

// Snapshotter is a snapshots.Snapshotter that fills layers from S3. All
// state is the overlay snapshotter's, so committed layers survive restarts
// of the agent and of containerd.
type Snapshotter struct {
	snapshots.Snapshotter                 // the overlay snapshotter
	providers             []layerProvider // asked in turn
	cancel                context.CancelFunc
	// lazy is nil unless lazy mode is on or an earlier run left lazy
	// mounts (then they are remounted, but no layer is provided lazily).
	lazy *lazyProvider
}

type options struct {
	unpackJobs int
	stagedTTL  time.Duration
	lazy       lazyOptions
}

// Option configures a Snapshotter.
type Option func(*options)

// WithUnpackJobs bounds how many layers are fetched and unpacked at once
// (default 2: unpacking is CPU-bound, decompression and file creation).
func WithUnpackJobs(n int) Option { return func(o *options) { o.unpackJobs = n } }

// WithStagedTTL sets how long a prefetched layer waits for containerd to
// ask for it before it is removed (default 10 minutes).
func WithStagedTTL(d time.Duration) Option { return func(o *options) { o.stagedTTL = d } }

// New opens (or creates) the snapshotter's state under root, removing
// staging snapshots a previous run left behind.
func New(ctx context.Context, root string, stores StoreFunc, opts ...Option) (*Snapshotter, error) {
	o := options{unpackJobs: 2, stagedTTL: 10 * time.Minute}
	for _, opt := range opts {
		opt(&o)
	}
	ov, err := overlay.NewSnapshotter(root)
	if err != nil {
		return nil, fmt.Errorf("open overlay snapshotter in %s: %w", root, err)
	}
	lifetime, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Snapshotter{Snapshotter: ov, cancel: cancel}
	if err := s.removeStaged(ctx); err != nil {
		cancel()
		ov.Close()
		return nil, err
	}
	if o.lazy.enabled || hasLazyMounts(root) {
		if s.lazy, err = newLazyProvider(lifetime, ov, stores, root, o.lazy); err != nil {
			cancel()
			ov.Close()
			return nil, err
		}
		s.lazy.restoreLazy(ctx)
		go s.lazy.watch(lifetime, lazyWatchEvery)
		if o.lazy.enabled {
			s.providers = append(s.providers, s.lazy)
		}
	}
	s.providers = append(s.providers, &eager{sn: ov, stores: stores, jobs: newJobs(lifetime, ov, o.unpackJobs, o.stagedTTL)})
	return s, nil
}

// Close stops background unpacks and closes the overlay snapshotter.
func (s *Snapshotter) Close() error {
	s.cancel()
	if s.lazy != nil {
		s.lazy.close()
	}
	return s.Snapshotter.Close()
}

// Cleanup frees the disk of removed or abandoned snapshots (containerd's
// garbage collector calls it). Declared here because the embedded
// interface hides the overlay snapshotter's own, and without it such
// directories (a snapshot whose removal failed, say one busy after a FUSE
// unmount) would never be reclaimed.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	c, ok := s.Snapshotter.(snapshots.Cleaner)
	if !ok {
		return nil
	}
	return c.Cleanup(ctx)
}

var _ snapshots.Cleaner = (*Snapshotter)(nil)

// Prepare creates an active snapshot, or, for a layer the bucket holds,
// unpacks and commits it and returns ErrAlreadyExists.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var base snapshots.Info
	for _, opt := range opts {
		if err := opt(&base); err != nil {
			return nil, err
		}
	}
	if err := s.lazy.checkMounted(ctx, parent); err != nil {
		return nil, err
	}
	r, err := parseRequest(base.Labels)
	if err == nil {
		err = s.provide(ctx, r, parent, base.Labels)
		if err == nil {
			return nil, fmt.Errorf("target snapshot %q: %w", r.chainID, errdefs.ErrAlreadyExists)
		}
	}
	s.fallback(ctx, r, err)
	return s.Snapshotter.Prepare(ctx, key, parent, opts...)
}

// provide makes chain ID r.chainID exist as a committed snapshot from the
// bucket, asking each provider in turn until one does not pass it on. An
// error means containerd should pull the layer itself.
func (s *Snapshotter) provide(ctx context.Context, r request, parent string, labels map[string]string) error {
	s.lazy.retake(ctx, r.chainID)
	var err error
	for _, p := range s.providers {
		if err = p.provide(ctx, r, parent, labels); !errors.Is(err, errPassOn) {
			return err
		}
	}
	return err
}

// View checks the parent chain is whole before the overlay snapshotter
// makes the view.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	if err := s.lazy.checkMounted(ctx, parent); err != nil {
		return nil, err
	}
	return s.Snapshotter.View(ctx, key, parent, opts...)
}

// Mounts checks the snapshot's chain is whole before returning its mounts.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	if err := s.lazy.checkMounted(ctx, key); err != nil {
		return nil, err
	}
	return s.Snapshotter.Mounts(ctx, key)
}

// Remove removes a snapshot, unmounting it first if it is lazy.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	if s.lazy == nil {
		return s.Snapshotter.Remove(ctx, key)
	}
	return s.lazy.remove(ctx, key)
}

// Usage of a lazy snapshot is the bytes of its layer on local disk.
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	if s.lazy != nil {
		if u, ok := s.lazy.usage(ctx, key); ok {
			return u, nil
		}
	}
	return s.Snapshotter.Usage(ctx, key)
}

var (
	errNotMirrored = errors.New("not mapped to a bucket")
	errNotInBucket = errors.New("not in the bucket")
)

// fallback records why a Prepare goes to containerd's own pull.
func (s *Snapshotter) fallback(ctx context.Context, r request, err error) {
	var nl errNoLabels
	switch {
	case errors.As(err, &nl):
		// An ordinary Prepare (a container's rw layer, a view): nothing to do.
		return
	case errors.Is(err, errNotMirrored):
		fallbacks.WithLabelValues("not_mirrored").Inc()
	case errors.Is(err, errNotInBucket):
		fallbacks.WithLabelValues("not_in_bucket").Inc()
	case errors.Is(err, ErrChainMismatch), errors.Is(err, store.ErrDigestMismatch), errors.Is(err, store.ErrSizeMismatch):
		fallbacks.WithLabelValues("corrupt").Inc()
	case errors.Is(err, store.ErrUnavailable):
		fallbacks.WithLabelValues("unavailable").Inc()
	default:
		fallbacks.WithLabelValues("error").Inc()
	}
	log.G(ctx).WithError(err).WithField("layer", r.layer).WithField("image", r.host+"/"+r.repo).Warn("falling back to containerd's pull")
}

// removeStaged removes staging snapshots and the views made to find a
// parent's directories that a previous run left behind.
func (s *Snapshotter) removeStaged(ctx context.Context) error {
	var keys []string
	err := s.Snapshotter.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindActive && strings.HasPrefix(info.Name, stagePrefix) ||
			info.Kind == snapshots.KindView && strings.HasPrefix(info.Name, lowersPrefix) {
			keys = append(keys, info.Name)
		}
		return nil
	})
	if err != nil && !errdefs.IsNotFound(err) { // a new store has no snapshots bucket yet
		return fmt.Errorf("walk snapshots: %w", err)
	}
	for _, k := range keys {
		removeSnapshot(ctx, s.Snapshotter, k)
	}
	return nil
}
