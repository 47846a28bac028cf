package bench

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/store"
)

// BenchmarkPullLazy compares, on the realistic image, a cold pull and a
// cold pull plus the first run of a command from the image (the image's
// static `go version`: ~15 MB of one layer read) three ways, interleaved,
// with fresh state and dropped caches for each run:
//
//   - containerd 2.4 with its own overlayfs snapshotter, from a registry;
//   - the s3snap agent, eager: every layer fetched from S3 and unpacked;
//   - the s3snap agent, lazy: every layer FUSE-mounted over its index,
//     file data fetched on demand, the rest prefetched in the background.
//
// The index build (s3snap index: migration-time work) is timed separately.
//
//	go test ./integration/bench -run '^$' -bench PullLazy -benchtime 1x
//
// S3SNAP_BENCH_RUNS sets the runs per variant (default 3);
// S3SNAP_BENCH_VARIANTS=0,2 runs only some (0 containerd, 1 eager, 2 lazy);
// S3SNAP_BENCH_DEBUG prints the agent's log lines about layers.
func BenchmarkPullLazy(b *testing.B) {
	e := testenv.S3(b)
	bucket := e.NewBucket(b)
	st := store.New(e.Client(b), bucket, store.WithPrefix("ecr"))
	im := testenv.RealisticImage(b, ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH})
	reg := testenv.StartFSRegistry(b)
	ref := reg.Addr + "/bench/realistic:v1"
	testenv.PushToRegistry(b, reg.Addr, "bench/realistic", "v1", im)
	testenv.PutImage(b, st, "bench/realistic", im)
	ctx := context.Background()
	if err := st.Tag(ctx, "bench/realistic", "v1", im.Digest); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	results, err := lazy.IndexImage(ctx, st, "bench/realistic", im.Digest, nil)
	if err != nil {
		b.Fatalf("index: %v", err)
	}
	indexTook := time.Since(start)
	var dataSize, streamSize int64
	for _, r := range results {
		dataSize, streamSize = dataSize+r.DataSize, streamSize+r.Size
	}

	cmd := []string{"/usr/local/go/bin/go", "version"}
	runs := envInt("S3SNAP_BENCH_RUNS", 3)
	type variant struct {
		name      string
		pull, run []time.Duration
	}
	vs := []*variant{{name: "containerd overlayfs from the registry"}, {name: "s3snap agent, eager (unpack)"}, {name: "s3snap agent, lazy (FUSE)"}}
	only := os.Getenv("S3SNAP_BENCH_VARIANTS")
	for i := 0; i < runs; i++ {
		for k, v := range vs {
			if only != "" && !strings.Contains(only, strconv.Itoa(k)) {
				continue
			}
			b.Run(fmt.Sprintf("%d/%d", k, i), func(b *testing.B) {
				var c *testenv.Containerd
				var args []string
				switch k {
				case 0:
					c = testenv.StartContainerd(b, testenv.ContainerdOptions{})
					args = []string{"--plain-http"}
				default:
					extra := ""
					if k == 2 {
						extra = "[lazy]\nenabled = true\n"
					}
					a := testenv.StartAgent(b, testenv.AgentOptions{S3: e, Registries: map[string]string{reg.Addr: "s3://" + bucket + "/ecr"}, Extra: extra})
					c = testenv.StartContainerd(b, testenv.ContainerdOptions{Extra: a.ContainerdConfig(reg.Addr)})
					args = []string{"--hosts-dir", a.HostsDir, "--snapshotter", "s3snap"}
					defer func() {
						if os.Getenv("S3SNAP_BENCH_DEBUG") != "" {
							log, _ := os.ReadFile(a.Log)
							for _, line := range strings.Split(string(log), "\n") {
								if strings.Contains(line, "layer") && !strings.Contains(line, "level=debug") {
									fmt.Println(line)
								}
							}
						}
						metric := "s3snap_snapshotter_layers_provided_total"
						if k == 2 {
							metric = "s3snap_snapshotter_lazy_layers_total"
						}
						if n := a.Metric(b, metric); int(n) != len(im.Layers) {
							b.Errorf("%s: only %v of %d layers came from S3", v.name, n, len(im.Layers))
						}
					}()
				}
				if os.Getenv("S3SNAP_BENCH_DEBUG") != "" {
					fmt.Println("pull starts", time.Now().Format(time.RFC3339Nano))
				}
				pull := timedPull(b, c, ref, args...)
				runArgs := []string{"run", "--rm"}
				if k > 0 {
					runArgs = append(runArgs, "--snapshotter", "s3snap")
				}
				t0 := time.Now()
				out := c.Ctr(b, append(append(runArgs, ref, fmt.Sprintf("first-run-%d-%d", k, i)), cmd...)...)
				run := time.Since(t0)
				if !strings.Contains(out, "go version go1.") {
					b.Fatalf("%s: %v printed %q", v.name, cmd, out)
				}
				v.pull, v.run = append(v.pull, pull), append(v.run, pull+run)
			})
		}
	}
	base := vs[0]
	if len(base.pull) == 0 {
		base = &variant{pull: []time.Duration{1}, run: []time.Duration{1}}
	}
	fmt.Printf("cold pull of the realistic image (%d layers, %d MB gzip), %d runs each, interleaved; 2 shared cores: noisy\n",
		len(im.Layers), totalSize(im)>>20, runs)
	fmt.Printf("  index build (s3snap index, once, migration time): %.1fs; index data %d MB for %d MB of file content\n",
		indexTook.Seconds(), dataSize>>20, streamSize>>20)
	for _, v := range vs {
		fmt.Printf("  %-40s pull median %6.2fs (%.2fx)   pull+first run median %6.2fs (%.2fx)   %v / %v\n", v.name,
			median(v.pull).Seconds(), median(base.pull).Seconds()/median(v.pull).Seconds(),
			median(v.run).Seconds(), median(base.run).Seconds()/median(v.run).Seconds(), v.pull, v.run)
	}
	lazyV := vs[2]
	b.ReportMetric(median(base.pull).Seconds()/median(lazyV.pull).Seconds(), "x-faster-pull")
	b.ReportMetric(median(base.run).Seconds()/median(lazyV.run).Seconds(), "x-faster-pull+run")
}
