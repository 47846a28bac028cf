// Package snapshotter is s3snap's containerd snapshotter: containerd's own
// overlayfs snapshotter, plus this: when containerd prepares the snapshot
// of an image layer that the bucket holds, the layer is fetched from S3
// with parallel ranged GETs, verified, unpacked and committed as an
// ordinary overlay snapshot, and Prepare answers ErrAlreadyExists, so
// containerd downloads nothing. Anything that goes wrong falls back to
// containerd's normal pull.
package snapshotter

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"

	"github.com/s3snap/s3snap/store"
)

// StoreFunc returns the store that mirrors registry host, if any.
type StoreFunc func(host string) (*store.Store, bool)

// Snapshotter is a snapshots.Snapshotter that fills layers from S3.
type Snapshotter struct {
	snapshots.Snapshotter // the overlay snapshotter, which owns all state
	root                  string
	stores                StoreFunc
}

type options struct {
	unpackJobs int
}

// Option configures a Snapshotter.
type Option func(*options)

// WithUnpackJobs bounds how many layers are fetched and unpacked at once.
func WithUnpackJobs(n int) Option { return func(o *options) { o.unpackJobs = n } }

// New opens (or creates) the snapshotter's state under root.
func New(ctx context.Context, root string, stores StoreFunc, opts ...Option) (*Snapshotter, error) {
	o := options{unpackJobs: 2}
	for _, opt := range opts {
		opt(&o)
	}
	ov, err := overlay.NewSnapshotter(root)
	if err != nil {
		return nil, fmt.Errorf("open overlay snapshotter in %s: %w", root, err)
	}
	return &Snapshotter{Snapshotter: ov, root: root, stores: stores}, nil
}
