package testenv

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// PrepareLayers Prepares each layer of im as containerd's unpacker does, with
// remote-snapshot labels, and returns the top chain ID and how many layers
// came back ErrAlreadyExists (served from S3). ref is host/repo.
func PrepareLayers(t testing.TB, sn snapshots.Snapshotter, ref string, im *Image) (top string, served int) {
	t.Helper()
	ctx := context.Background()
	var cfg ocispec.Image
	if err := json.Unmarshal(im.Config, &cfg); err != nil {
		t.Fatal(err)
	}
	chain := identity.ChainIDs(append([]digest.Digest(nil), cfg.RootFS.DiffIDs...))
	var m ocispec.Manifest
	if err := json.Unmarshal(im.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	parent := ""
	for i, l := range m.Layers {
		var rest string
		for j, ll := range m.Layers[i:] {
			if j > 0 {
				rest += ","
			}
			rest += ll.Digest.String()
		}
		labels := map[string]string{
			snapshots.LabelSnapshotRef:                chain[i].String(),
			snapshots.LabelSnapshotDiffID:             cfg.RootFS.DiffIDs[i].String(),
			snapshotters.TargetRefLabel:               ref + ":v1",
			snapshotters.TargetLayerDigestLabel:       l.Digest.String(),
			snapshotters.TargetImageLayersLabel:       rest,
			snapshotters.TargetManifestDigestLabel:    im.Digest.String(),
			"containerd.io/snapshot.unpack-test-mark": "1",
		}
		key := "extract-" + chain[i].Encoded()
		_, err := sn.Prepare(ctx, key, parent, snapshots.WithLabels(labels))
		switch {
		case errdefs.IsAlreadyExists(err):
			served++
		case err == nil:
			// Fallback: containerd would apply the layer itself. Do that
			// here with the same tar so the chain continues.
			applyLocally(t, sn, key, im.Layers[i])
			if err := sn.Commit(ctx, chain[i].String(), key, snapshots.WithLabels(labels)); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("Prepare layer %d: %v", i, err)
		}
		if _, err := sn.Stat(ctx, chain[i].String()); err != nil {
			t.Fatalf("layer %d: chain %s not committed: %v", i, chain[i], err)
		}
		parent = chain[i].String()
	}
	return parent, served
}

func applyLocally(t testing.TB, sn snapshots.Snapshotter, key string, gz []byte) {
	t.Helper()
	mounts, err := sn.Mounts(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	err = mount.WithTempMount(context.Background(), mounts, func(root string) error {
		var r io.Reader = bytes.NewReader(gz)
		if bytes.HasPrefix(gz, []byte{0x1f, 0x8b}) {
			zr, err := gzip.NewReader(r)
			if err != nil {
				return err
			}
			r = zr
		}
		tr := tar.NewReader(r)
		for {
			h, err := tr.Next()
			if err != nil {
				return nil
			}
			if h.Typeflag == tar.TypeReg {
				p := filepath.Join(root, filepath.Clean("/"+h.Name))
				_ = os.MkdirAll(filepath.Dir(p), 0o755)
				var buf bytes.Buffer
				_, _ = buf.ReadFrom(tr)
				if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
					return err
				}
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// ReadView mounts a read-only view of chain and returns the named files'
// contents ("" for a missing file).
func ReadView(t testing.TB, sn snapshots.Snapshotter, chain string, names ...string) map[string]string {
	t.Helper()
	ctx := context.Background()
	key := "view-" + time.Now().Format("150405.000000")
	mounts, err := sn.View(ctx, key, chain)
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Remove(ctx, key)
	out := map[string]string{}
	err = mount.WithReadonlyTempMount(ctx, mounts, func(root string) error {
		for _, n := range names {
			b, err := os.ReadFile(filepath.Join(root, n))
			if err == nil {
				out[n] = string(b)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
