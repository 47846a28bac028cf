package bench

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"slices"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/store"
)

// BenchmarkPullRealistic is the node agent's headline figure: a cold pull
// of the realistic image (mkimage.sh: 6 gzip layers, ~300 MB, ~900 MB
// unpacked, ~29k real files) by containerd 2.4 with its own overlayfs
// snapshotter from a registry, against the same pull through s3snap (the
// mirror answers the manifest, the snapshotter fetches every layer from
// S3), interleaved, fresh state and dropped caches for every run.
//
//	go test ./integration/bench -run '^$' -bench PullRealistic -benchtime 1x
//
// S3SNAP_BENCH_RUNS sets the runs per side (default 3).
func BenchmarkPullRealistic(b *testing.B) {
	e := testenv.S3(b)
	bucket := e.NewBucket(b)
	st := store.New(e.Client(b), bucket, store.WithPrefix("ecr"))
	im := testenv.RealisticImage(b, ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH})
	reg := testenv.StartFSRegistry(b)
	ref := reg.Addr + "/bench/realistic:v1"
	testenv.PushToRegistry(b, reg.Addr, "bench/realistic", "v1", im)
	testenv.PutImage(b, st, "bench/realistic", im)
	if err := st.Tag(context.Background(), "bench/realistic", "v1", im.Digest); err != nil {
		b.Fatal(err)
	}
	runs := envInt("S3SNAP_BENCH_RUNS", 3)
	var base, agent []time.Duration
	for i := 0; i < runs; i++ {
		b.Run(fmt.Sprintf("containerd/%d", i), func(b *testing.B) {
			c := testenv.StartContainerd(b, testenv.ContainerdOptions{})
			base = append(base, timedPull(b, c, ref, "--plain-http"))
		})
		b.Run(fmt.Sprintf("s3snap/%d", i), func(b *testing.B) {
			a := testenv.StartAgent(b, testenv.AgentOptions{S3: e, Registries: map[string]string{reg.Addr: "s3://" + bucket + "/ecr"}})
			c := testenv.StartContainerd(b, testenv.ContainerdOptions{Extra: a.ContainerdConfig(reg.Addr)})
			agent = append(agent, timedPull(b, c, ref, "--hosts-dir", a.HostsDir, "--snapshotter", "s3snap"))
			if n := a.Metric(b, "s3snap_snapshotter_layers_provided_total"); int(n) != len(im.Layers) {
				b.Fatalf("only %v of %d layers came from S3", n, len(im.Layers))
			}
		})
	}
	mb, ma := median(base), median(agent)
	_, igzip := exec.LookPath("igzip")
	fmt.Printf("cold pull, realistic image (%d layers, %d MB gzip), %d runs each, igzip on PATH: %v\n",
		len(im.Layers), totalSize(im)>>20, runs, igzip == nil)
	fmt.Printf("  containerd overlayfs from the registry: median %.2fs %v\n", mb.Seconds(), base)
	fmt.Printf("  s3snap agent from S3:                    median %.2fs %v\n", ma.Seconds(), agent)
	fmt.Printf("  speed-up: %.2fx\n", mb.Seconds()/ma.Seconds())
	b.ReportMetric(mb.Seconds()/ma.Seconds(), "x-faster")
}

// timedPull drops caches and times one ctr images pull (fetch + unpack).
func timedPull(b *testing.B, c *testenv.Containerd, ref string, args ...string) time.Duration {
	b.Helper()
	dropCaches(b)
	start := time.Now()
	c.Ctr(b, append(append([]string{"images", "pull"}, args...), ref)...)
	return time.Since(start)
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func totalSize(im *testenv.Image) int {
	n := 0
	for _, l := range im.Layers {
		n += len(l)
	}
	return n
}
