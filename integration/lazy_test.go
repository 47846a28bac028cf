package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/store"
)

// newLazyEnv starts an agent with [lazy] enabled between a private
// containerd of version (testenv.Containerd2 or Containerd17; 1.7 pulls
// through its CRI) and a bucket, with a real registry upstream holding the
// same images.
func newLazyEnv(t *testing.T, version string, e *testenv.S3Env, bucket string, reg *testenv.Registry) *pullEnv {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testenv.Unavailable(t, "lazy mode needs /dev/fuse: %v", err)
	}
	p := &pullEnv{e: e, bucket: bucket, reg: reg, upstream: reg.Addr}
	p.st = store.New(e.Client(t), bucket, store.WithPrefix("ecr"))
	p.agent = testenv.StartAgent(t, testenv.AgentOptions{
		S3:         e,
		Registries: map[string]string{p.upstream: "s3://" + bucket + "/ecr"},
		Extra:      "[fetch]\npart_size = \"1MiB\"\n\n[lazy]\nenabled = true\n",
	})
	p.startContainerd(t, version, false)
	return p
}

// waitSnapshotter waits until containerd reaches the agent again: after
// a restart its proxy connection may still be backing off from the
// agent's absence for a second or two.
func (p *pullEnv) waitSnapshotter(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := p.ctrd.CtrErr(t, "snapshots", "--snapshotter", "s3snap", "ls")
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd does not reach the agent: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func indexCLI(t *testing.T, e *testenv.S3Env) *cliRunner {
	tmp := t.TempDir()
	return &cliRunner{
		bin:      testenv.S3snapBinary(t),
		endpoint: e.Endpoint,
		env: []string{
			"AWS_ACCESS_KEY_ID=" + e.AccessKey, "AWS_SECRET_ACCESS_KEY=" + e.SecretKey, "AWS_REGION=" + e.Region,
			"AWS_EC2_METADATA_DISABLED=true",
			"AWS_CONFIG_FILE=" + filepath.Join(tmp, "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(tmp, "no-aws-credentials"),
		},
	}
}

type indexOut struct {
	Layers                 []lazy.Result
	Built, Existed, Failed int
}

func runIndex(t *testing.T, c *cliRunner, ref string) indexOut {
	t.Helper()
	var out indexOut
	if err := json.Unmarshal([]byte(c.ok(t, "index", "-o", "json", ref)), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// lazyMounts lists the FUSE mounts of lazy layers under dir.
func lazyMounts(t *testing.T, dir string) []string {
	t.Helper()
	return testenv.LazyMountPoints(dir)
}

// TestAgentLazyPull: an image indexed with `s3snap index` is pulled through
// an agent in lazy mode with zero layer downloads and no unpacking: every
// layer is a FUSE mount, a container from it runs and reads every file
// intact, and it still runs after the agent restarts. The registry layout
// in the bucket is untouched by indexing. On every containerd version (1.7
// pulls through its CRI).
func TestAgentLazyPull(t *testing.T) {
	for _, v := range testenv.ContainerdVersions() {
		t.Run("containerd-"+v, func(t *testing.T) { testAgentLazyPull(t, v) })
	}
}

func testAgentLazyPull(t *testing.T, version string) {
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	reg := testenv.StartFSRegistry(t)
	files := map[string][]byte{
		"/data/a":     pseudoRandom(11, 3<<20+12345), // several chunks
		"/data/b":     bytes.Repeat([]byte("compressible "), 200000),
		"/etc/c":      []byte("small"),
		"/data/empty": {},
	}
	im := testenv.RunnableImage(t,
		[]testenv.File{{Name: "data/a", Data: files["/data/a"]}, {Name: "data/empty"}},
		[]testenv.File{{Name: "data/b", Data: files["/data/b"]}, {Name: "data/link", Link: "b"}},
		[]testenv.File{{Name: "etc/c", Data: files["/etc/c"], Mode: 0o600}},
	)
	st := store.New(e.Client(t), bucket, store.WithPrefix("ecr"))
	testenv.PutImage(t, st, "team/app", im)
	if err := st.Tag(context.Background(), "team/app", "v1", im.Digest); err != nil {
		t.Fatal(err)
	}
	testenv.PushToRegistry(t, reg.Addr, "team/app", "v1", im)
	ref := reg.Addr + "/team/app:v1"

	layout := testenv.Keys(t, e.Client(t), bucket, "ecr/docker/")
	cli := indexCLI(t, e)
	out := runIndex(t, cli, "s3://"+bucket+"/ecr/team/app:v1")
	if out.Built != len(im.Layers) || out.Failed != 0 {
		t.Fatalf("index built %d of %d layers, %d failed: %+v", out.Built, len(im.Layers), out.Failed, out.Layers)
	}
	if again := runIndex(t, cli, "s3://"+bucket+"/ecr/team/app:v1"); again.Existed != len(im.Layers) || again.Built != 0 {
		t.Errorf("second index run: %d built, %d existed; want 0 and %d", again.Built, again.Existed, len(im.Layers))
	}
	if after := testenv.Keys(t, e.Client(t), bucket, "ecr/docker/"); !slices.Equal(layout, after) {
		t.Errorf("indexing changed the registry layout:\nbefore %v\nafter  %v", layout, after)
	}
	for _, l := range im.Layers {
		d := digest.FromBytes(l)
		for _, obj := range []string{"toc", "data"} {
			if _, err := st.StatExtra(context.Background(), lazy.Key(d, obj)); err != nil {
				t.Errorf("layer %s: %s: %v", d, obj, err)
			}
		}
	}

	p := newLazyEnv(t, version, e, bucket, reg)
	p.pull(t, ref)
	if n := p.agent.Metric(t, "s3snap_snapshotter_lazy_layers_total"); int(n) != len(im.Layers) {
		t.Errorf("%v layers mounted lazily, want %d", n, len(im.Layers))
	}
	if n := p.provided(t); n != 0 {
		t.Errorf("%v layers were unpacked, want none", n)
	}
	if n := registryRequests(t, p.reg, "/v2/team/app/blobs/"); n != 0 {
		t.Errorf("containerd downloaded %d blobs from the registry, want 0", n)
	}
	if m := lazyMounts(t, p.agent.Root); len(m) != len(im.Layers) {
		t.Errorf("FUSE mounts under the agent root: %v, want %d", m, len(im.Layers))
	}
	p.run(t, ref, "lazy", files)
	if n := p.agent.Metric(t, "s3snap_lazy_read_errors_total"); n != 0 {
		t.Errorf("%v lazy read errors", n)
	}
	// Once prefetched, every layer's tar is rebuilt from its index and
	// checked against the image's diff ID.
	waitMetric(t, p.agent, "s3snap_lazy_verified_layers_total", float64(len(im.Layers)))

	t.Run("restart agent: layers remounted, the image runs", func(t *testing.T) {
		p.agent.Restart(t)
		p.waitSnapshotter(t)
		if m := lazyMounts(t, p.agent.Root); len(m) != len(im.Layers) {
			t.Errorf("after restart FUSE mounts: %v, want %d", m, len(im.Layers))
		}
		p.run(t, ref, "lazy-restarted", files)
		if n := p.agent.Metric(t, "s3snap_snapshotter_lazy_layers_total"); n != 0 {
			t.Errorf("after restart %v layers were mounted anew, want 0", n)
		}
		// Cached whole, they are verified again (from the cache).
		waitMetric(t, p.agent, "s3snap_lazy_verified_layers_total", float64(len(im.Layers)))
	})

	t.Run("restart with lazy mode off: lazy layers still remounted", func(t *testing.T) {
		cfg, err := os.ReadFile(p.agent.ConfigPath)
		if err != nil {
			t.Fatal(err)
		}
		off := strings.Replace(string(cfg), "enabled = true", "enabled = false", 1)
		if err := os.WriteFile(p.agent.ConfigPath, []byte(off), 0o600); err != nil {
			t.Fatal(err)
		}
		p.agent.Restart(t)
		p.waitSnapshotter(t)
		if m := lazyMounts(t, p.agent.Root); len(m) != len(im.Layers) {
			t.Errorf("lazy off: FUSE mounts %v, want the %d existing ones", m, len(im.Layers))
		}
		p.run(t, ref, "lazy-off", files)
	})

	t.Run("remove the image: mounts go", func(t *testing.T) {
		p.rmi(t, ref)
		if m := lazyMounts(t, p.agent.Root); len(m) != 0 {
			t.Errorf("after image removal FUSE mounts remain: %v", m)
		}
	})
}

// TestAgentLazyCorruptChunk: a flipped byte in a data chunk in the bucket
// makes reading that file fail inside the container (EIO); the bytes are
// never served, the other files read fine.
func TestAgentLazyCorruptChunk(t *testing.T) {
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	reg := testenv.StartFSRegistry(t)
	good := []byte("fine")
	bad := pseudoRandom(12, 2<<20)
	im := testenv.RunnableImage(t, []testenv.File{{Name: "data/bad", Data: bad}}, []testenv.File{{Name: "etc/good", Data: good}})
	st := store.New(e.Client(t), bucket, store.WithPrefix("ecr"))
	testenv.PutImage(t, st, "team/app", im)
	if err := st.Tag(context.Background(), "team/app", "v1", im.Digest); err != nil {
		t.Fatal(err)
	}
	testenv.PushToRegistry(t, reg.Addr, "team/app", "v1", im)
	runIndex(t, indexCLI(t, e), "s3://"+bucket+"/ecr/team/app:v1")

	// Flip a byte in the middle of the chunk holding data/bad.
	layer := digest.FromBytes(im.Layers[1])
	toc, _, err := lazy.FetchTOC(context.Background(), st, layer)
	if err != nil {
		t.Fatal(err)
	}
	c := toc.Chunks[0]
	key := "ecr/s3snap/" + lazy.Key(layer, "data")
	data := readObject(t, e, bucket, key)
	data[c.Offset+c.Size/2] ^= 0x01
	putObject(t, e, bucket, key, data)

	p := newLazyEnv(t, testenv.Containerd2, e, bucket, reg)
	ref := reg.Addr + "/team/app:v1"
	p.pull(t, ref)
	out, err := p.ctrd.CtrErr(t, "run", "--rm", "--snapshotter", "s3snap", ref, "corrupt-"+p.ctrd.Namespace, "/hello", "/data/bad", "/etc/good")
	if err == nil {
		t.Errorf("reading the corrupt file succeeded:\n%s", out)
	}
	if !strings.Contains(out, "/data/bad: read /data/bad: input/output error") {
		t.Errorf("want EIO reading /data/bad:\n%s", out)
	}
	if strings.Contains(out, hashLine("/data/bad", bad)) {
		t.Errorf("corrupt file hashed as if intact:\n%s", out)
	}
	if !strings.Contains(out, hashLine("/etc/good", good)) {
		t.Errorf("/etc/good did not read intact:\n%s", out)
	}
	if n := p.agent.Metric(t, "s3snap_lazy_read_errors_total"); n == 0 {
		t.Error("no lazy read error counted")
	}
}

// TestIndexCLI: bad usage exits 2; a layer blob damaged in the bucket
// fails its index (exit 1, the digest mismatch named) and leaves no TOC,
// so no agent ever mounts it, while the image's other layers are indexed.
func TestIndexCLI(t *testing.T) {
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	cli := indexCLI(t, e)
	cli.fails(t, 2, []string{"index", "s3://" + bucket + "/ecr/team/app"}, "names no tag or digest")
	cli.fails(t, 2, []string{"index", "--chunk-size", "0", "s3://" + bucket + "/ecr/team/app:v1"}, "--chunk-size 0")
	cli.fails(t, 2, []string{"index"}, "takes 1 argument")

	st := store.New(e.Client(t), bucket, store.WithPrefix("ecr"))
	im := testenv.NewImage(t, testenv.HostPlatform(),
		[]testenv.File{{Name: "a", Data: pseudoRandom(13, 100000)}},
		[]testenv.File{{Name: "b", Data: []byte("b")}})
	testenv.PutImage(t, st, "team/app", im)
	if err := st.Tag(context.Background(), "team/app", "v1", im.Digest); err != nil {
		t.Fatal(err)
	}
	cli.fails(t, 1, []string{"index", "s3://" + bucket + "/ecr/team/app:nope"}, "not found")

	bad, good := digest.FromBytes(im.Layers[0]), digest.FromBytes(im.Layers[1])
	key := "ecr/docker/registry/v2/blobs/sha256/" + bad.Encoded()[:2] + "/" + bad.Encoded() + "/data"
	blob := readObject(t, e, bucket, key)
	blob[len(blob)/2] ^= 0x01
	putObject(t, e, bucket, key, blob)

	out, errOut, code := cli.run(t, "index", "-o", "json", "s3://"+bucket+"/ecr/team/app:v1")
	if code != 1 || !strings.Contains(errOut, bad.String()) {
		t.Fatalf("index of a damaged layer: exit %d, want 1 naming %s\n%s", code, bad, errOut)
	}
	var doc indexOut
	if err := json.Unmarshal([]byte(out), &doc); err != nil || doc.Failed != 1 || doc.Built != 1 {
		t.Errorf("report %+v (%v), want 1 failed and 1 built", doc, err)
	}
	for _, obj := range []string{"toc", "data"} {
		if _, err := st.StatExtra(context.Background(), lazy.Key(bad, obj)); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("damaged layer's index %s: %v, want nothing written", obj, err)
		}
	}
	if ups := testenv.MultipartUploads(t, e.Client(t), bucket); len(ups) != 0 {
		t.Errorf("%d unfinished multipart uploads left", len(ups))
	}
	if _, err := st.StatExtra(context.Background(), lazy.Key(good, "toc")); err != nil {
		t.Errorf("the good layer has no TOC: %v", err)
	}
}
