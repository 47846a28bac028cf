package bench

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/snapshotter"
	"github.com/s3snap/s3snap/store"
)

// BenchmarkSnapshotterRealistic times the snapshotter alone providing the
// realistic image (mkimage.sh) from S3 into a fresh overlay root: fetch,
// verify, decompress, unpack, commit. Page cache dropped before each run.
// "blob" unpacks the gzip layer blobs, "index" the layers' lazy indexes;
// -cpuprofile shows where an eager pull's time goes without containerd.
//
//	go test ./integration/bench -run '^$' -bench SnapshotterRealistic/index -benchtime 3x -cpuprofile cpu.out
func BenchmarkSnapshotterRealistic(b *testing.B) {
	if os.Geteuid() != 0 {
		testenv.Unavailable(b, "needs root")
	}
	e := testenv.S3(b)
	bucket := e.NewBucket(b)
	im := testenv.RealisticImage(b, ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH})
	for _, source := range []string{"blob", "index"} {
		st := store.New(e.Client(b), bucket, store.WithPrefix(source))
		testenv.PutImage(b, st, "bench/realistic", im)
		if source == "index" {
			if _, err := lazy.IndexImage(context.Background(), st, "bench/realistic", im.Digest, nil); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(source, func(b *testing.B) { benchSnapshotter(b, st, im) })
	}
}

func benchSnapshotter(b *testing.B, st *store.Store, im *testenv.Image) {
	const host = "bench.example.com"
	var times, cpu []time.Duration
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
		b.StopTimer()
		dropCaches(b)
		b.StartTimer()
		if os.Getenv("S3SNAP_BENCH_DEBUG") != "" {
			_ = log.SetLevel("debug")
		}
		start, cpu0 := time.Now(), cpuTime()
		_, served := testenv.PrepareLayers(b, sn, host+"/bench/realistic", im)
		times, cpu = append(times, time.Since(start)), append(cpu, cpuTime()-cpu0)
		if served != len(im.Layers) {
			b.Fatalf("%d of %d layers served from S3", served, len(im.Layers))
		}
		b.StopTimer()
		sn.Close()
		testenv.RemoveAll(root)
		b.StartTimer()
	}
	b.ReportMetric(median(times).Seconds(), "s/pull(median)")
	b.ReportMetric(median(cpu).Seconds(), "cpu-s/pull(median)")
	b.Logf("snapshotter, realistic image (%d layers): runs %v, CPU time of this process %v", len(im.Layers), round(times), round(cpu))
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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
