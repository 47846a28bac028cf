package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
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

// tunedContainerd is containerd 2.x's own parallel unpack (stock since
// 2.2, off by default): the fairest stock pull to compare with.
const tunedContainerd = `
[plugins."io.containerd.transfer.v1.local"]
  max_concurrent_unpacks = 2
`

// pullSide is one way of pulling the image, timed cold. The agent's
// sides are compared with each baseline side.
type pullSide struct {
	name     string
	baseline bool
	pull     func(b *testing.B) time.Duration
}

// BenchmarkPullRealistic is the node agent's headline figure: a cold pull
// of the realistic image (mkimage.sh: 6 gzip layers, ~300 MB, ~900 MB
// unpacked, ~29k real files) by containerd 2.4 with its own overlayfs
// snapshotter from a registry, by the same with its parallel unpack, and
// through s3snap (the mirror answers the manifest, the snapshotter
// fetches every layer from S3, eagerly): from the gzip layer blobs, and
// from the layers' lazy indexes (zstd chunks, decoded in parallel). The sides run interleaved, each
// round in a fresh state with dropped caches; the ratios are paired (one
// round's containerd against the same round's agent), then the median.
// The sub-benchmark "shaped" runs it again with every connection to the
// registry (for containerd) and to S3 (for the agent) through a shaper
// that imitates a real network: S3SNAP_BENCH_MBPS per connection (default
// 90) and S3SNAP_BENCH_TTFB_MS before each response's first byte (20).
//
//	go test ./integration/bench -run '^$' -bench PullRealistic -benchtime 1x
//
// S3SNAP_BENCH_RUNS sets the rounds (default 5). S3SNAP_BENCH_PROFILE=dir
// writes a CPU profile of the agent during each of its pulls there (taken
// through its [debug] socket; the rounds take longer), and its log.
//
// The curve by CPUs: run it under taskset with S3SNAP_BENCH_SERVER_CPUS
// naming the CPUs left for the servers (the registry and the S3 server
// are moved there, as a real node's are elsewhere), e.g. one CPU for the
// node on two:
//
//	S3SNAP_BENCH_SERVER_CPUS=1 taskset -c 0 go test ./integration/bench -run '^$' -bench PullRealistic/loopback -benchtime 1x
func BenchmarkPullRealistic(b *testing.B) {
	e := testenv.S3(b)
	bucket := e.NewBucket(b)
	st := store.New(e.Client(b), bucket, store.WithPrefix("ecr"))
	im := testenv.RealisticImage(b, ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH})
	reg := testenv.StartFSRegistry(b)
	if cpus := os.Getenv("S3SNAP_BENCH_SERVER_CPUS"); cpus != "" {
		pinServers(b, cpus, reg.Pid())
	}
	testenv.PushToRegistry(b, reg.Addr, "bench/realistic", "v1", im)
	// The same image twice: under ecr/ as it is, under ecrix/ with the
	// lazy index of each layer (s3snap index), which eager pulls unpack from.
	stIndexed := store.New(e.Client(b), bucket, store.WithPrefix("ecrix"))
	for _, s := range []*store.Store{st, stIndexed} {
		testenv.PutImage(b, s, "bench/realistic", im)
		if err := s.Tag(context.Background(), "bench/realistic", "v1", im.Digest); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := lazy.IndexImage(context.Background(), stIndexed, "bench/realistic", im.Digest, nil); err != nil {
		b.Fatal(err)
	}
	_, igzip := exec.LookPath("igzip")
	_, unpigz := exec.LookPath("unpigz")
	fmt.Printf("cold pull, realistic image (%d layers, %d MB gzip), GOMAXPROCS %d, igzip on PATH: %v, unpigz: %v\n",
		len(im.Layers), totalSize(im)>>20, runtime.GOMAXPROCS(0), igzip == nil, unpigz == nil)
	if cpus := os.Getenv("S3SNAP_BENCH_SERVER_CPUS"); cpus != "" {
		fmt.Printf("the pulls run on %d CPUs; the registry and S3 server on CPUs %s\n", runtime.GOMAXPROCS(0), cpus)
	}
	for _, shaped := range []bool{false, true} {
		name := "loopback"
		if shaped {
			name = "shaped"
		}
		b.Run(name, func(b *testing.B) {
			regAddr, s3env := reg.Addr, e
			if shaped {
				mbps, ttfb := float64(envInt("S3SNAP_BENCH_MBPS", 90)), time.Duration(envInt("S3SNAP_BENCH_TTFB_MS", 20))*time.Millisecond
				rs, err := newShaper(reg.Addr, mbps*1e6, ttfb)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { rs.Close() })
				ss, err := newShaper(strings.TrimPrefix(e.Endpoint, "http://"), mbps*1e6, ttfb)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { ss.Close() })
				regAddr = strings.TrimPrefix(rs.URL(), "http://")
				s3copy := *e
				s3copy.Endpoint = ss.URL()
				s3env = &s3copy
				fmt.Printf("shaped: %.0f MB/s per connection, %v to first byte\n", mbps, ttfb)
			} else {
				fmt.Println("loopback:")
			}
			comparePulls(b, pullSides(regAddr+"/bench/realistic:v1", regAddr, s3env, bucket, len(im.Layers)))
		})
	}
}

func pullSides(ref, regAddr string, e *testenv.S3Env, bucket string, layers int) []pullSide {
	containerd := func(extra string, env ...string) func(b *testing.B) time.Duration {
		return func(b *testing.B) time.Duration {
			c := testenv.StartContainerd(b, testenv.ContainerdOptions{Extra: extra, Env: env})
			return timedPull(b, c, ref, "--plain-http")
		}
	}
	agent := func(prefix string, source string) func(b *testing.B) time.Duration {
		return func(b *testing.B) time.Duration {
			profDir := os.Getenv("S3SNAP_BENCH_PROFILE")
			var extra, debugSock string
			if profDir != "" {
				debugSock = filepath.Join(b.TempDir(), "debug.sock")
				extra = fmt.Sprintf("[debug]\naddress = %q\n", debugSock)
			}
			a := testenv.StartAgent(b, testenv.AgentOptions{S3: e, Registries: map[string]string{regAddr: "s3://" + bucket + "/" + prefix}, Extra: extra})
			c := testenv.StartContainerd(b, testenv.ContainerdOptions{Extra: a.ContainerdConfig(regAddr)})
			var profiled func()
			if profDir != "" {
				profiled = profileAgent(b, debugSock, filepath.Join(profDir, source+"-"+strings.ReplaceAll(b.Name(), "/", "_")+".pprof"))
			}
			d := timedPull(b, c, ref, "--hosts-dir", a.HostsDir, "--snapshotter", "s3snap")
			if profiled != nil {
				profiled()
				for what, log := range map[string]string{"agent": a.Log, "containerd": c.Log} {
					if data, err := os.ReadFile(log); err == nil {
						_ = os.WriteFile(filepath.Join(profDir, source+"-"+strings.ReplaceAll(b.Name(), "/", "_")+"."+what+".log"), data, 0o600)
					}
				}
			}
			if n := a.Metric(b, "s3snap_snapshotter_layers_unpacked_total", "source="+source); int(n) != layers {
				b.Fatalf("only %v of %d layers came from S3, unpacked from their %s", n, layers, source)
			}
			return d
		}
	}
	return []pullSide{
		{"containerd 2.4 default", true, containerd("")},
		{"containerd 2.4 max_concurrent_unpacks=2", true, containerd(tunedContainerd)},
		// A stock node: containerd finds no igzip (nor unpigz) and
		// inflates with Go, as on an AMI without ISA-L.
		{"containerd 2.4 default, no igzip", true, containerd("", "CONTAINERD_DISABLE_IGZIP=1", "CONTAINERD_DISABLE_PIGZ=1")},
		{"s3snap eager, from the layer blobs", false, agent("ecr", "blob")},
		{"s3snap eager, from the lazy indexes", false, agent("ecrix", "index")},
	}
}

// comparePulls runs every side once a round, interleaved, and prints each
// side's median and its paired speed-up over the first two sides.
func comparePulls(b *testing.B, sides []pullSide) {
	runs := envInt("S3SNAP_BENCH_RUNS", 5)
	times := make([][]time.Duration, len(sides))
	for i := 0; i < runs; i++ {
		for j, s := range sides {
			b.Run(fmt.Sprintf("%s/%d", strings.ReplaceAll(s.name, " ", "_"), i), func(b *testing.B) {
				times[j] = append(times[j], s.pull(b))
			})
		}
	}
	if b.Failed() {
		return
	}
	for j, s := range sides {
		fmt.Printf("  %-42s median %6.2fs  %v\n", s.name, median(times[j]).Seconds(), round(times[j]))
	}
	for j := range sides {
		if sides[j].baseline {
			continue
		}
		for base := range sides {
			if !sides[base].baseline {
				continue
			}
			r := pairedRatio(times[base], times[j])
			fmt.Printf("  %s vs %s: %.2fx (median of paired ratios)\n", sides[j].name, sides[base].name, r)
			b.ReportMetric(r, fmt.Sprintf("x-vs-%d/%d", base, j))
		}
	}
}

// profileAgent starts a CPU profile of the agent serving debugSock
// ([debug] address) into file; the returned func waits for it (it covers
// the profileSeconds from its start, the pull and then idle time).
func profileAgent(b *testing.B, debugSock, file string) func() {
	const profileSeconds = 8
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", debugSock)
	}}}
	done := make(chan error, 1)
	go func() {
		resp, err := client.Get(fmt.Sprintf("http://debug/debug/pprof/profile?seconds=%d", profileSeconds))
		if err != nil {
			done <- err
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(file)
		if err != nil {
			done <- err
			return
		}
		_, err = io.Copy(f, resp.Body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // the profile has started
	return func() {
		if err := <-done; err != nil {
			b.Fatalf("profile the agent: %v", err)
		}
		fmt.Printf("  agent CPU profile: %s\n", file)
	}
}

// pinServers moves the registry (pid) and the environment's S3 server
// (its pid file) onto cpus, every thread.
func pinServers(b *testing.B, cpus string, pid int) {
	pids := []string{strconv.Itoa(pid)}
	s3pid, err := os.ReadFile(filepath.Join(os.Getenv("S3SNAP_STATE"), "s3.pid"))
	if err != nil {
		b.Fatalf("S3SNAP_BENCH_SERVER_CPUS: the S3 server's pid: %v", err)
	}
	pids = append(pids, strings.TrimSpace(string(s3pid)))
	for _, p := range pids {
		if out, err := exec.Command("taskset", "-a", "-p", "-c", cpus, p).CombinedOutput(); err != nil {
			b.Fatalf("taskset %s: %v\n%s", p, err, out)
		}
	}
	b.Cleanup(func() {
		// Give the shared S3 server its CPUs back (runtime.NumCPU counts
		// only this process's own).
		if online, err := os.ReadFile("/sys/devices/system/cpu/online"); err == nil {
			_ = exec.Command("taskset", "-a", "-p", "-c", strings.TrimSpace(string(online)), pids[1]).Run()
		}
	})
}

// pairedRatio is the median over rounds of base[i]/other[i].
func pairedRatio(base, other []time.Duration) float64 {
	var r []float64
	for i := range min(len(base), len(other)) {
		r = append(r, base[i].Seconds()/other[i].Seconds())
	}
	slices.Sort(r)
	if len(r) == 0 {
		return 0
	}
	return r[len(r)/2]
}

func round(d []time.Duration) []string {
	var out []string
	for _, x := range d {
		out = append(out, fmt.Sprintf("%.2fs", x.Seconds()))
	}
	return out
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
