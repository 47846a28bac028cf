package bench

import (
	"context"
	"os"
	"runtime"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/snapshotter"
	"github.com/s3snap/s3snap/store"
)

// BenchmarkSnapshotterRealistic times the snapshotter alone providing the
// realistic image (mkimage.sh) from S3 into a fresh overlay root: fetch,
// verify, decompress, unpack, commit. Page cache dropped before each run.
func BenchmarkSnapshotterRealistic(b *testing.B) {
	if os.Geteuid() != 0 {
		testenv.Unavailable(b, "needs root")
	}
	e := testenv.S3(b)
	bucket := e.NewBucket(b)
	st := store.New(e.Client(b), bucket)
	im := testenv.RealisticImage(b, ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH})
	testenv.PutImage(b, st, "bench/realistic", im)
	const host = "bench.example.com"
	var times []time.Duration
	for i := 0; b.Loop(); i++ {
		root := b.TempDir()
		sn, err := snapshotter.New(context.Background(), root, func(h string) []*store.Store {
			if h != host {
				return nil
			}
			return []*store.Store{st}
		},
			snapshotter.WithUnpackJobs(envInt("S3SNAP_BENCH_UNPACK_JOBS", 2)))
		if err != nil {
			b.Fatal(err)
		}
		dropCaches(b)
		start := time.Now()
		if os.Getenv("S3SNAP_BENCH_DEBUG") != "" {
			_ = log.SetLevel("debug")
		}
		_, served := testenv.PrepareLayers(b, sn, host+"/bench/realistic", im)
		times = append(times, time.Since(start))
		if served != len(im.Layers) {
			b.Fatalf("%d of %d layers served from S3", served, len(im.Layers))
		}
		sn.Close()
		testenv.RemoveAll(root)
	}
	slices.Sort(times)
	b.ReportMetric(times[len(times)/2].Seconds(), "s/pull(median)")
	b.Logf("snapshotter, realistic image (%d layers): runs %v", len(im.Layers), times)
}

// dropCaches writes back dirty pages (so one run's writeback doesn't slow
// the next) and drops the page cache, so every run starts cold.
func dropCaches(b *testing.B) {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200); err != nil {
		b.Logf("cannot drop caches: %v", err)
	}
}

func envInt(key string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(key)); err == nil && v > 0 {
		return v
	}
	return def
}
