package integration

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/lazy"
)

// treeBytes is what du --apparent-size -b counts of the files under dir.
func treeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil // a file evicted while walking
		}
		if info, err := d.Info(); err == nil {
			n += info.Size()
		}
		return nil
	})
	return n
}

// dropPageCache drops the cached pages of every file in the lazy mounts
// under root, so the next read goes through the mount to the cache.
func dropPageCache(t *testing.T, root string) {
	t.Helper()
	for _, m := range lazyMounts(t, root) {
		_ = filepath.WalkDir(m, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			f, err := os.Open(p)
			if err != nil {
				t.Errorf("open %s: %v", p, err)
				return nil
			}
			defer f.Close()
			if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
				t.Errorf("fadvise %s: %v", p, err)
			}
			return nil
		})
	}
}

// usageBytes adds up the Usage of every snapshot in the CRI namespace.
func usageBytes(t *testing.T, p *pullEnv) int64 {
	t.Helper()
	out := p.ctrd.CtrNS(t, testenv.CRINamespace, "snapshots", "--snapshotter", "s3snap", "usage", "-b")
	var total int64
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] == "KEY" || strings.HasPrefix(line, "time=") { // the header, ctr's warnings
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			t.Fatalf("snapshots usage: %q: %v", line, err)
		}
		total += n
	}
	return total
}

// TestAgentLazyCacheLimit: with [lazy] cache_max_bytes a quarter of three
// images' content, pulling (CRI) and running the three keeps the chunk
// cache under the limit throughout (on disk and in the gauge), every file
// still hashes right in the containers, also when an image evicted by the
// others runs again; `crictl rmi` of an image shrinks the cache and
// removes the local TOC copies of the layers only it used.
func TestAgentLazyCacheLimit(t *testing.T) {
	testenv.Bin(t, "crictl")
	for _, v := range testenv.ContainerdVersions() {
		t.Run("containerd-"+v, func(t *testing.T) { testAgentLazyCacheLimit(t, v) })
	}
}

func testAgentLazyCacheLimit(t *testing.T, version string) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testenv.Unavailable(t, "lazy mode needs /dev/fuse: %v", err)
	}
	const nImages = 3
	type image struct {
		ref   string
		im    *testenv.Image
		files map[string][]byte
	}
	var (
		images []image
		total  = int64(len(testenv.HelloBinary(t))) // the base layer all share
	)
	for i := range nImages {
		files := map[string][]byte{
			fmt.Sprintf("/data/%d/a", i): pseudoRandom(uint64(100+i), 3<<20+i*4099),
			fmt.Sprintf("/data/%d/b", i): pseudoRandom(uint64(200+i), 2<<20+i*733),
		}
		var layers [][]testenv.File
		for name, data := range files {
			layers = append(layers, []testenv.File{{Name: strings.TrimPrefix(name, "/"), Data: data}})
			total += int64(len(data))
		}
		images = append(images, image{im: testenv.RunnableImage(t, layers...), files: files})
	}
	limit := total / 4
	p := newPullEnvWith(t, version, true, fmt.Sprintf("\n[lazy]\nenabled = true\ncache_max_bytes = %d\n", limit))
	p.viaCRI = true // pulls, runs and rmi through the CRI on both versions
	cli := indexCLI(t, p.e)
	for i := range images {
		images[i].ref = p.add(t, fmt.Sprintf("team/cache%d", i), images[i].im, true)
		if out := runIndex(t, cli, fmt.Sprintf("s3://%s/ecr/team/cache%d:v1", p.bucket, i)); out.Failed != 0 {
			t.Fatalf("index: %+v", out)
		}
	}
	chunks := filepath.Join(p.agent.Root, "lazy", "chunks")
	tocs := filepath.Join(p.agent.Root, "lazy", "toc")

	// The cache is sampled all along: a walk racing an eviction and the
	// write that follows it may count one chunk (1MiB) twice.
	var (
		mu      sync.Mutex
		maxSeen int64
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			n := treeBytes(t, chunks)
			mu.Lock()
			maxSeen = max(maxSeen, n)
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	stopSampling := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopSampling)

	check := func(when string) int64 {
		t.Helper()
		// Let the prefetch settle: it stops at the limit.
		time.Sleep(300 * time.Millisecond)
		du := treeBytes(t, chunks)
		gauge := int64(p.agent.Metric(t, "s3snap_lazy_cache_bytes"))
		t.Logf("%s: cache %d bytes on disk, gauge %d, limit %d (images %d)", when, du, gauge, limit, total)
		if du > limit || gauge > limit {
			t.Errorf("%s: the cache holds %d bytes (gauge %d), over the limit %d", when, du, gauge, limit)
		}
		return du
	}
	for i, im := range images {
		p.ctrd.Crictl(t, "pull", im.ref)
		p.run(t, im.ref, fmt.Sprintf("cache%d", i), im.files)
		check(fmt.Sprintf("image %d pulled and run", i))
	}
	if n := p.provided(t); n != 0 {
		t.Errorf("%v layers were unpacked, want all lazy", n)
	}
	// The first image's chunks were evicted by the others': read again,
	// through the mount, not from the page cache.
	dropPageCache(t, p.agent.Root)
	p.run(t, images[0].ref, "cache0-again", images[0].files)
	before := check("image 0 run again")
	// Usage (what kubelet's image GC adds up) is the bytes each layer has
	// in the cache; no chunk is shared between these layers.
	if u := usageBytes(t, p); u != before {
		t.Errorf("the lazy snapshots' Usage adds up to %d bytes, the cache holds %d", u, before)
	}
	if n := p.agent.Metric(t, "s3snap_lazy_cache_evictions_total"); n == 0 {
		t.Error("no eviction counted")
	}
	if n := p.agent.Metric(t, "s3snap_lazy_read_errors_total"); n != 0 {
		t.Errorf("%v lazy read errors", n)
	}
	// Every layer is verified, those the cache could not hold whole from
	// their data object streamed once.
	layers := map[digest.Digest]bool{}
	for _, im := range images {
		for _, l := range im.im.Layers {
			layers[digest.FromBytes(l)] = true
		}
	}
	waitMetric(t, p.agent, "s3snap_lazy_verified_layers_total", float64(len(layers)))

	// Which local TOC copies belong to layers only image 0 has.
	layerUsers := map[digest.Digest]int{}
	for _, im := range images {
		for _, l := range im.im.Layers {
			layerUsers[digest.FromBytes(l)]++
		}
	}
	tocOf := func(layer digest.Digest) string {
		_, raw, err := lazy.FetchTOC(context.Background(), p.st, layer)
		if err != nil {
			t.Fatal(err)
		}
		return filepath.Join(tocs, digest.FromBytes(raw).Encoded())
	}
	var own, shared []string
	for _, l := range images[0].im.Layers {
		if d := digest.FromBytes(l); layerUsers[d] == 1 {
			own = append(own, tocOf(d))
		} else {
			shared = append(shared, tocOf(d))
		}
	}
	for _, f := range append(own, shared...) {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("local toc copy before rmi: %v", err)
		}
	}

	mountsBefore := len(lazyMounts(t, p.agent.Root))
	p.ctrd.Crictl(t, "rmi", images[0].ref)
	// The CRI removes the image's snapshots (their mounts) in the
	// background.
	for deadline := time.Now().Add(20 * time.Second); len(lazyMounts(t, p.agent.Root)) > mountsBefore-len(own); {
		if time.Now().After(deadline) {
			t.Fatalf("lazy mounts after rmi: %v, want %d fewer than %d", lazyMounts(t, p.agent.Root), len(own), mountsBefore)
		}
		time.Sleep(100 * time.Millisecond)
	}
	after := check("image 0 removed")
	if after >= before {
		t.Errorf("after crictl rmi the cache holds %d bytes, was %d: it did not shrink", after, before)
	}
	for _, f := range own {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("local toc copy %s of a removed layer: %v, want it gone", f, err)
		}
	}
	for _, f := range shared {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("local toc copy %s of a layer other images use: %v", f, err)
		}
	}
	// The others still read right.
	dropPageCache(t, p.agent.Root)
	p.run(t, images[1].ref, "cache1-again", images[1].files)
	check("image 1 run again")
	stopSampling()
	if maxSeen > limit+1<<20 {
		t.Errorf("sampled while pulling and reading: the cache held up to %d bytes, limit %d", maxSeen, limit)
	}
	t.Logf("most bytes seen in the cache: %d (limit %d)", maxSeen, limit)
}
