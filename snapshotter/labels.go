package snapshotter

import (
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// request is what containerd's labels on a layer's Prepare tell us.
type request struct {
	chainID  string        // the snapshot to create (containerd.io/snapshot.ref)
	layer    digest.Digest // compressed layer digest
	host     string        // registry host of the image reference
	repo     string        // repository path within that host
	manifest digest.Digest // image manifest digest, "" if not given
	layers   []digest.Digest
}

// errNoLabels marks a Prepare that is not a layer unpack s3snap can serve.
type errNoLabels struct{ missing string }

func (e errNoLabels) Error() string { return "no " + e.missing + " label" }

// parseRequest reads the labels containerd's unpacker (with remote
// snapshot annotations enabled) sets on a layer's Prepare.
func parseRequest(labels map[string]string) (request, error) {
	var r request
	var ok bool
	if r.chainID, ok = labels[snapshots.LabelSnapshotRef]; !ok || r.chainID == "" {
		return r, errNoLabels{snapshots.LabelSnapshotRef}
	}
	l, ok := labels[snapshotters.TargetLayerDigestLabel]
	if !ok {
		return r, errNoLabels{snapshotters.TargetLayerDigestLabel}
	}
	ref, ok := labels[snapshotters.TargetRefLabel]
	if !ok {
		return r, errNoLabels{snapshotters.TargetRefLabel}
	}
	var err error
	if r.layer, err = digest.Parse(l); err != nil {
		return r, fmt.Errorf("layer digest label %q: %w", l, err)
	}
	if d := labels[snapshotters.TargetManifestDigestLabel]; d != "" {
		if r.manifest, err = digest.Parse(d); err != nil {
			return r, fmt.Errorf("manifest digest label %q: %w", d, err)
		}
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return r, fmt.Errorf("image ref label %q: %w", ref, err)
	}
	r.host, r.repo = reference.Domain(named), reference.Path(named)
	for _, s := range strings.Split(labels[snapshotters.TargetImageLayersLabel], ",") {
		if d, err := digest.Parse(s); err == nil {
			r.layers = append(r.layers, d)
		}
	}
	return r, nil
}
