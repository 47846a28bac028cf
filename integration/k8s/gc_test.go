package k8s

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/s3snap/s3snap/integration/testenv"
)

// imageFsUsed is kubelet's image file system usage (stats/summary).
// Asked of kubelet itself: the API server's nodes/proxy refuses a node on
// a loopback address ("address not allowed").
func (c *cluster) imageFsUsed(t *testing.T) uint64 {
	t.Helper()
	pki := func(p string) string { return filepath.Join(c.dir, p) }
	cert, err := tls.LoadX509KeyPair(pki("pki/admin.crt"), pki("pki/admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	serving, err := os.ReadFile(pki("kubelet/pki/kubelet.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(serving)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots}}}
	resp, err := client.Get("https://" + c.env["S3SNAP_K8S_KUBELET"] + "/stats/summary")
	if err != nil {
		t.Fatalf("kubelet stats/summary: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("kubelet stats/summary: %s %v\n%s", resp.Status, err, body)
	}
	var s struct {
		Node struct {
			Runtime struct {
				ImageFs struct {
					UsedBytes uint64 `json:"usedBytes"`
				} `json:"imageFs"`
			} `json:"runtime"`
		} `json:"node"`
	}
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatalf("stats/summary: %v\n%s", err, body)
	}
	return s.Node.Runtime.ImageFs.UsedBytes
}

// onDisk is what the agent's snapshots take on the node disk (du -x: its
// own file system, not the FUSE trees mounted in it), with or without the
// lazy layers' chunk cache.
func (c *cluster) onDisk(t *testing.T, chunks bool) uint64 {
	t.Helper()
	dir := c.env["S3SNAP_K8S_AGENT_ROOT"]
	args := []string{"-sx", "-B1", "--exclude=" + filepath.Join(dir, "mirror-spool")}
	if !chunks {
		args = append(args, "--exclude="+c.chunkDir())
	}
	out := testenv.Run(t, "du", append(args, dir)...)
	var n uint64
	if _, err := fmt.Sscan(out, &n); err != nil {
		t.Fatalf("du %s: %q: %v", dir, out, err)
	}
	return n
}

// chunkDir is the agent's lazy chunk cache.
func (c *cluster) chunkDir() string {
	return filepath.Join(c.env["S3SNAP_K8S_AGENT_ROOT"], "lazy", "chunks")
}

// checkAccounting waits (bounded: containerd refreshes snapshot usage every
// 10s) for kubelet's image fs usage to be within 10% of what is on disk
// (chunks: the lazy chunk cache counted).
func (c *cluster) checkAccounting(t *testing.T, what string, fuseTree uint64, chunks bool) (reported, disk uint64) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		reported, disk = c.imageFsUsed(t), c.onDisk(t, chunks)
		within := math.Abs(float64(reported)-float64(disk)) <= 0.1*float64(disk)
		if reported > 0 && within {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: kubelet's image fs usage %d bytes, on disk %d: not within 10%%", what, reported, disk)
			break
		}
		time.Sleep(2 * time.Second)
	}
	t.Logf("%s: kubelet image fs usage %.1f MiB, on disk %.1f MiB (lazy images' FUSE trees: %.1f MiB)",
		what, mib(reported), mib(disk), mib(fuseTree))
	return reported, disk
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }

// images lists the CRI's image references.
func (c *cluster) images(t *testing.T) string {
	t.Helper()
	return testenv.Run(t, testenv.Bin(t, "ctr"), "--address", c.env["S3SNAP_K8S_CONTAINERD"], "-n", "k8s.io", "images", "ls", "-q")
}

// fuseMounts counts the agent's lazy (FUSE) mounts.
func (c *cluster) fuseMounts(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, " "+c.env["S3SNAP_K8S_AGENT_ROOT"]+"/") && strings.Contains(line, "fuse.s3snap") {
			n++
		}
	}
	return n
}

// freePercent is the node disk's free space in percent, as kubelet
// computes imagefs.available.
func (c *cluster) freePercent(t *testing.T) float64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(c.env["S3SNAP_K8S_DISK"], &st); err != nil {
		t.Fatal(err)
	}
	return 100 * float64(st.Bavail) / float64(st.Blocks)
}

// TestK8sImageGC: on the node's small image disk, kubelet's image file
// system usage matches what the agent has on disk (within 10%, never 0)
// with eager and lazy images; under disk pressure (imagefs.available set
// just above the free space, so the eviction manager reclaims at once
// instead of the 5-minute GC period) kubelet removes the unused images, the
// lazily mounted one with its FUSE mounts included, keeps the one in use,
// and the usage it reports follows.
func TestK8sImageGC(t *testing.T) {
	c := theCluster(t)
	ns := c.namespace(t)
	const layers, size = 2, 32 << 20
	eager, lazy, kept := newImage(t, 900, layers, size), newImage(t, 910, layers, size), newImage(t, 920, 1, 1<<20)
	refs := map[string]string{}
	for name, im := range map[string]testImage{"eager": eager, "lazy": lazy, "kept": kept} {
		refs[name] = c.publish(t, "gc/"+name, "v1", im.Image, true)
	}
	c.index(t, "gc/lazy", "v1")
	lazyBefore := int(c.agent.Metric(t, "s3snap_snapshotter_lazy_layers_total"))
	for _, name := range []string{"eager", "lazy"} {
		im := map[string]testImage{"eager": eager, "lazy": lazy}[name]
		c.deploy(t, ns, "gc-"+name, refs[name], "IfNotPresent", im.args())
	}
	// The pod that stays is critical: kubelet restarted under disk pressure
	// re-admits (and its eviction manager evicts) no other.
	c.deploy(t, ns, "gc-kept", refs["kept"], "IfNotPresent", kept.args(), "priorityClassName: system-node-critical")
	if n := int(c.agent.Metric(t, "s3snap_snapshotter_lazy_layers_total")) - lazyBefore; n != len(lazy.Layers) {
		t.Fatalf("%d layers mounted lazily, want %d", n, len(lazy.Layers))
	}
	var fuseTree uint64
	for _, data := range lazy.files {
		fuseTree += uint64(len(data))
	}
	c.checkAccounting(t, "with 3 images in use", fuseTree, true)
	c.kubectl(t, "-n", ns, "delete", "deployment", "gc-eager", "gc-lazy", "--wait=true")
	mountsBefore := c.fuseMounts(t)
	c.checkAccounting(t, "2 of them unused", fuseTree, true)
	diskBefore := c.onDisk(t, true)

	// Disk pressure: imagefs.available just above the free space now.
	free := c.freePercent(t)
	threshold := int(math.Ceil(free)) + 1
	if threshold >= 100 {
		t.Fatalf("node disk %.1f%% free: cannot set imagefs.available above it", free)
	}
	envFile := filepath.Join(c.dir, "kubelet.env")
	writeFile(t, envFile, fmt.Sprintf("KUBELET_IMAGEFS_AVAILABLE=%d%%\n", threshold))
	t.Cleanup(func() {
		os.Remove(envFile)
		if out, err := k8sScript(c.dir, "kubelet-restart"); err != nil {
			t.Errorf("k8s.sh kubelet-restart: %v\n%s", err, out)
		}
		c.kubectl(t, "wait", "--for=condition=DiskPressure=False", "node/localhost", "--timeout=120s")
		c.waitNodeReady(t)
	})
	start := time.Now()
	if out, err := k8sScript(c.dir, "kubelet-restart"); err != nil {
		t.Fatalf("k8s.sh kubelet-restart: %v\n%s", err, out)
	}
	gone := func() bool {
		imgs := c.images(t)
		return !strings.Contains(imgs, refs["eager"]) && !strings.Contains(imgs, refs["lazy"])
	}
	deadline := time.Now().Add(120 * time.Second)
	for !gone() && time.Now().Before(deadline) {
		time.Sleep(time.Second)
	}
	if !gone() {
		t.Fatalf("kubelet did not remove the unused images in 120s (imagefs.available %d%%, %.1f%% free); images:\n%s", threshold, free, c.images(t))
	}
	took := time.Since(start)
	if !strings.Contains(c.images(t), refs["kept"]) {
		t.Errorf("kubelet removed %s, which a running pod uses", refs["kept"])
	}
	// The agent removes the snapshots containerd lets go of; FUSE mounts go
	// with the lazy ones.
	deadline = time.Now().Add(60 * time.Second)
	for c.fuseMounts(t) != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Second)
	}
	if n := c.fuseMounts(t); n != 0 {
		t.Errorf("%d lazy (FUSE) mounts left after the lazy image was removed, want 0 (%d before)", n, mountsBefore)
	}
	// No lazy layer is mounted now: removing a lazy snapshot deletes the
	// chunks no other mount uses, so the chunk cache is empty again and
	// what kubelet sees matches the disk, chunk cache included.
	_, diskAfter := c.checkAccounting(t, "after image GC", 0, true)
	leftover := diskAfter - c.onDisk(t, false)
	t.Logf("image GC under disk pressure (imagefs.available %d%%, %.1f%% free): unused images removed %.1fs after kubelet's restart; agent disk %.1f → %.1f MiB; %d FUSE mounts → %d; lazy chunk cache left: %.2f MiB",
		threshold, free, took.Seconds(), mib(diskBefore), mib(diskAfter), mountsBefore, c.fuseMounts(t), mib(leftover))
	// (du counts the cache's fan-out directories, which stay: up to 256
	// of 4 KiB. The lazy image's chunks would be tens of MiB.)
	if leftover > 2<<20 {
		t.Errorf("%.1f MiB of lazy chunks left after the lazy image was removed, want the cache empty", mib(leftover))
	}
	if diskAfter >= diskBefore || diskBefore-diskAfter < uint64(layers*size)*9/10 {
		t.Errorf("agent disk %d → %d bytes: want at least %d reclaimed (the unused eager image)", diskBefore, diskAfter, layers*size*9/10)
	}
}
