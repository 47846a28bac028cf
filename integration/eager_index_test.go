package integration

import (
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/integration/testenv"
)

// TestAgentEagerFromIndex: with lazy mode off, a layer that has a v2 lazy
// index is unpacked from it (no gzip), on containerd 2.4 and 1.7; an index
// that is not its layer's is caught by the rebuilt tar's digest, whether
// it lies about its diff ID or is honestly another layer's, and the
// layer's blob is unpacked instead: the container reads the image's own
// files either way.
func TestAgentEagerFromIndex(t *testing.T) {
	for _, version := range testenv.ContainerdVersions() {
		t.Run(version, func(t *testing.T) {
			p := newPullEnvWith(t, version, false, "")
			good, other, files := swapImages(t, p.e, p.bucket, p.reg)
			ref := p.reg.Addr + "/team/app:v1"
			p.pull(t, ref)
			if n := p.agent.Metric(t, "s3snap_snapshotter_layers_unpacked_total", "source=index"); int(n) != len(good.Layers) {
				t.Fatalf("%v layers unpacked from their index, want %d\n%s", n, len(good.Layers), agentLog(t, p.agent))
			}
			p.run(t, ref, "from-index", files)

			layer, diffID := digest.FromBytes(good.Layers[1]), diffIDsOf(t, good)[1]
			otherLayer, otherDiffID := digest.FromBytes(other.Layers[1]), diffIDsOf(t, other)[1]
			for i, lie := range []struct {
				name   string
				diffID digest.Digest // what the forged TOC says the layer is
			}{
				{"the image's diff id, another layer's data", diffID},
				{"another layer's diff id and data", otherDiffID},
			} {
				p.rmi(t, ref)
				forgeIndex(t, p.e, p.bucket, p.st, layer, lie.diffID, otherLayer)
				before := p.agent.Metric(t, "s3snap_snapshotter_index_unpack_failures_total")
				p.pull(t, ref)
				if n := p.agent.Metric(t, "s3snap_snapshotter_index_unpack_failures_total"); n != before+1 {
					t.Errorf("%s: %v index unpack failures, want %v", lie.name, n, before+1)
				}
				if n := p.agent.Metric(t, "s3snap_snapshotter_layers_unpacked_total", "source=blob"); int(n) != i+1 {
					t.Errorf("%s: %v layers unpacked from their blob, want %d", lie.name, n, i+1)
				}
				p.run(t, ref, "forged", files)
			}
		})
	}
}
