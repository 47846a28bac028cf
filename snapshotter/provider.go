package snapshotter

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
)

// layerProvider is one way of giving containerd a layer from the bucket:
// the eager provider (eager.go) unpacks it, the lazy one (lazy.go) mounts
// its index. Prepare asks them in turn (lazy first, when it is on).
//
// provide makes r.chainID a committed snapshot on top of parent, the
// parent's key as containerd gave it; labels are the Prepare's, to be
// kept on the commit. It commits only through commitLayer, so never under
// a chain ID the layer does not make. nil means the snapshot exists now
// (provided, or committed already by someone else). An error means it
// does not, and nothing the provider made is left behind: one wrapping
// errPassOn sends the layer to the next provider, any other to
// containerd's own pull.
type layerProvider interface {
	provide(ctx context.Context, r request, parent string, labels map[string]string) error
}

// errPassOn means a provider could not provide the layer and the next one
// is to try.
var errPassOn = errors.New("passed on to the next provider")

// stagePrefix names the active snapshots layers are unpacked (or lazily
// mounted) into before they are committed; they have no parent until
// Commit rebases them.
const stagePrefix = "s3snap-stage-"

// labelStagedLayer marks a staging snapshot with the layer it holds.
const labelStagedLayer = "s3snap.io/staged-layer"

// commitLayer commits the staging snapshot key, holding a layer whose
// uncompressed digest is diffID, as chainID on top of parent, with labels
// and extra labels. It is the one place a provided layer is committed,
// and it commits only when checkChain passes. On any error key is
// removed; an error for which errdefs.IsAlreadyExists holds means a
// concurrent pull committed chainID first.
func commitLayer(ctx context.Context, sn snapshots.Snapshotter, key, parent string, diffID digest.Digest, chainID string, labels, extra map[string]string) error {
	if err := checkChain(parent, diffID, chainID); err != nil {
		removeSnapshot(ctx, sn, key)
		return err
	}
	commitLabels := map[string]string{}
	for k, v := range extra {
		commitLabels[k] = v
	}
	for k, v := range labels {
		commitLabels[k] = v
	}
	commitOpts := []snapshots.Opt{snapshots.WithLabels(commitLabels)}
	if parent != "" {
		commitOpts = append(commitOpts, snapshots.WithParent(parent))
	}
	if err := sn.Commit(ctx, chainID, key, commitOpts...); err != nil {
		removeSnapshot(ctx, sn, key)
		return err
	}
	return nil
}

// removeSnapshot removes a snapshot of ours (a staging snapshot, a view),
// even when ctx is done; a failure is logged.
func removeSnapshot(ctx context.Context, sn snapshots.Snapshotter, key string) {
	if err := sn.Remove(context.WithoutCancel(ctx), key); err != nil {
		log.G(ctx).WithError(err).WithField("key", key).Warn("remove staging snapshot")
	}
}

// upperDir returns the directory an active snapshot's content goes in.
// A parentless overlay snapshot is a bind mount of its upper directory.
func upperDir(mounts []mount.Mount) (string, error) {
	if len(mounts) == 1 && mounts[0].Type == "bind" {
		return mounts[0].Source, nil
	}
	return "", fmt.Errorf("unexpected staging mounts %v: want one bind mount", mounts)
}

func uniquePart() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return strconv.FormatInt(time.Now().UnixNano()%1e9, 36) + "-" + base64.RawURLEncoding.EncodeToString(b[:])
}
