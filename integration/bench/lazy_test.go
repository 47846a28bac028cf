package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
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
// After the first command, each run reads the image's ~100 MB binary
// (/usr/bin/node) once, cold (page cache dropped), straight from the
// snapshot's directory (for lazy: through its FUSE mount), giving the
// third time (pull + first command + that read) and the cold sequential
// read rate. For lazy it also reports the bytes fetched from S3 before
// the first command and during the read (background prefetch may have
// fetched part of the file before).
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
		name            string
		pull, run, read []time.Duration
		rate            []float64 // MB/s of the cold read
		before, during  []float64 // lazy: MB fetched before the first command, during the read
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
				var a *testenv.Agent
				root := ""
				switch k {
				case 0:
					c = testenv.StartContainerd(b, testenv.ContainerdOptions{})
					args = []string{"--plain-http"}
				default:
					extra := ""
					if k == 2 {
						extra = "[lazy]\nenabled = true\n"
					}
					a = testenv.StartAgent(b, testenv.AgentOptions{S3: e, Registries: map[string]string{reg.Addr: "s3://" + bucket + "/ecr"}, Extra: extra})
					c = testenv.StartContainerd(b, testenv.ContainerdOptions{Extra: a.ContainerdConfig(reg.Addr)})
					args = []string{"--hosts-dir", a.HostsDir, "--snapshotter", "s3snap"}
					root = a.Root
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
				if k == 0 {
					root = filepath.Join(c.Dir, "root")
				}
				pull := timedPull(b, c, ref, args...)
				fetched := func() float64 {
					if k != 2 {
						return 0
					}
					return a.Metric(b, "s3snap_lazy_fetched_bytes_total") / 1e6
				}
				before := fetched()
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
				path := findInSnapshots(b, root, bigFile)
				atRead := fetched()
				dropCaches(b)
				size, read := timedRead(b, path)
				v.pull, v.run, v.read = append(v.pull, pull), append(v.run, pull+run), append(v.read, pull+run+read)
				v.rate = append(v.rate, float64(size)/1e6/read.Seconds())
				v.before, v.during = append(v.before, before), append(v.during, fetched()-atRead)
			})
		}
	}
	base := vs[0]
	if len(base.pull) == 0 {
		base = &variant{pull: []time.Duration{1}, run: []time.Duration{1}, read: []time.Duration{1}}
	}
	fmt.Printf("cold pull of the realistic image (%d layers, %d MB gzip), %d runs each, interleaved; 2 shared cores: noisy\n",
		len(im.Layers), totalSize(im)>>20, runs)
	fmt.Printf("  index build (s3snap index, once, migration time): %.1fs; index data %d MB for %d MB of file content\n",
		indexTook.Seconds(), dataSize>>20, streamSize>>20)
	ratio := func(base, v []time.Duration) float64 { return median(base).Seconds() / median(v).Seconds() }
	for _, v := range vs {
		if len(v.pull) == 0 {
			continue
		}
		fmt.Printf("  %s\n    pull median %.2fs (%.2fx)   +first run %.2fs (%.2fx)   +read of %s %.2fs (%.2fx)   cold read %.0f MB/s\n",
			v.name, median(v.pull).Seconds(), ratio(base.pull, v.pull), median(v.run).Seconds(), ratio(base.run, v.run),
			bigFile, median(v.read).Seconds(), ratio(base.read, v.read), medianF(v.rate))
		fmt.Printf("    pull %v\n    +run %v\n    +read %v\n    MB/s %.0f\n", v.pull, v.run, v.read, v.rate)
		if v == vs[2] {
			fmt.Printf("    MB fetched before the first command %.0f, during the read %.0f\n", v.before, v.during)
		}
	}
	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Printf("  load average: %s", load)
	}
	lazyV := vs[2]
	if len(lazyV.pull) > 0 {
		b.ReportMetric(ratio(base.pull, lazyV.pull), "x-faster-pull")
		b.ReportMetric(ratio(base.run, lazyV.run), "x-faster-pull+run")
		b.ReportMetric(ratio(base.read, lazyV.read), "x-faster-pull+run+read")
		b.ReportMetric(medianF(lazyV.rate), "MB/s-cold-read")
	}
}

// bigFile is the realistic image's ~100 MB binary (mkimage.sh's usr-bin
// layer).
const bigFile = "usr/bin/node"

// findInSnapshots finds rel in the one snapshot (of an overlay
// snapshotter under root) whose directory holds it.
func findInSnapshots(b *testing.B, root, rel string) string {
	b.Helper()
	for _, pattern := range []string{"snapshots/*/fs", "*/snapshots/*/fs"} {
		found, _ := filepath.Glob(filepath.Join(root, pattern, rel))
		if len(found) > 0 {
			return found[0]
		}
	}
	b.Fatalf("%s: in no snapshot under %s", rel, root)
	return ""
}

// timedRead reads path sequentially, 1 MiB at a time, as cp or a loader
// would.
func timedRead(b *testing.B, path string) (int64, time.Duration) {
	b.Helper()
	start := time.Now()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, make([]byte, 1<<20))
	if err != nil {
		b.Fatalf("read %s: %v", path, err)
	}
	return n, time.Since(start)
}

func medianF(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}
