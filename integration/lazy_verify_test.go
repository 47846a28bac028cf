package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/lazy/fused"
	"github.com/s3snap/s3snap/store"
)

// newLazyEnvWith is newLazyEnv with more of the agent's [lazy] table.
func newLazyEnvWith(t *testing.T, version string, e *testenv.S3Env, bucket string, reg *testenv.Registry, lazyExtra string) *pullEnv {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testenv.Unavailable(t, "lazy mode needs /dev/fuse: %v", err)
	}
	p := &pullEnv{e: e, bucket: bucket, reg: reg, upstream: reg.Addr}
	p.st = store.New(e.Client(t), bucket, store.WithPrefix("ecr"))
	p.agent = testenv.StartAgent(t, testenv.AgentOptions{
		S3:         e,
		Registries: map[string]string{p.upstream: "s3://" + bucket + "/ecr"},
		Extra:      "[fetch]\npart_size = \"1MiB\"\n\n[lazy]\nenabled = true\n" + lazyExtra,
	})
	p.startContainerd(t, version, false)
	return p
}

// ctrErrNS runs ctr in the namespace p.pull puts images in, returning its
// error rather than failing t.
func ctrErrNS(p *pullEnv, args ...string) (string, error) {
	return testenv.RunErr(context.Background(), p.ctrd.CtrBin, append([]string{"--address", p.ctrd.Address, "--namespace", p.namespace()}, args...)...)
}

// diffIDsOf reads an image's diff IDs from its config.
func diffIDsOf(t *testing.T, im *testenv.Image) []digest.Digest {
	t.Helper()
	var cfg ocispec.Image
	if err := json.Unmarshal(im.Config, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg.RootFS.DiffIDs
}

// agentLog is what the agent logged so far.
func agentLog(t *testing.T, a *testenv.Agent) string {
	t.Helper()
	b, err := os.ReadFile(a.Log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// serverLog is what the agent's lazy FUSE server logged so far (it
// serves, prefetches and verifies the lazy mounts).
func serverLog(t *testing.T, a *testenv.Agent) string {
	t.Helper()
	b, err := os.ReadFile(fused.LogPath(a.Root))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitMetric waits until the agent's metric is at least want.
func waitMetric(t *testing.T, a *testenv.Agent, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for a.Metric(t, name) < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s stayed at %v, want %v", name, a.Metric(t, name), want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// swapImages are two images whose second layers hold the same file names
// with different contents, both in the bucket (tagged v1) and upstream, both
// indexed with s3snap index.
func swapImages(t *testing.T, e *testenv.S3Env, bucket string, reg *testenv.Registry) (good, other *testenv.Image, files map[string][]byte) {
	t.Helper()
	files = map[string][]byte{"/data/secret": pseudoRandom(21, 3<<20), "/etc/conf": []byte("the real one")}
	fake := map[string][]byte{"/data/secret": pseudoRandom(22, 3<<20), "/etc/conf": []byte("an impostor!")}
	layer := func(f map[string][]byte) []testenv.File {
		return []testenv.File{{Name: "data/secret", Data: f["/data/secret"]}, {Name: "etc/conf", Data: f["/etc/conf"]}}
	}
	good, other = testenv.RunnableImage(t, layer(files)), testenv.RunnableImage(t, layer(fake))
	st := store.New(e.Client(t), bucket, store.WithPrefix("ecr"))
	cli := indexCLI(t, e)
	for repo, im := range map[string]*testenv.Image{"team/app": good, "team/other": other} {
		testenv.PutImage(t, st, repo, im)
		if err := st.Tag(context.Background(), repo, "v1", im.Digest); err != nil {
			t.Fatal(err)
		}
		testenv.PushToRegistry(t, reg.Addr, repo, "v1", im)
		runIndex(t, cli, "s3://"+bucket+"/ecr/"+repo+":v1")
	}
	return good, other, files
}

// forgeIndex replaces the index of layer with other's, edited to name
// layer and diffID: consistent with itself (every chunk matches its digest,
// the data object its size), so only the rebuilt tar can tell.
func forgeIndex(t *testing.T, e *testenv.S3Env, bucket string, st *store.Store, layer, diffID, other digest.Digest) {
	t.Helper()
	toc, _, err := lazy.FetchTOC(context.Background(), st, other)
	if err != nil {
		t.Fatal(err)
	}
	toc.Layer, toc.DiffID = layer, diffID
	b, err := toc.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lazy.DecodeTOC(b); err != nil {
		t.Fatalf("the forged toc is not consistent: %v", err)
	}
	putObject(t, e, bucket, "ecr/s3snap/"+lazy.Key(layer, "data"), readObject(t, e, bucket, "ecr/s3snap/"+lazy.Key(other, "data")))
	putObject(t, e, bucket, "ecr/s3snap/"+lazy.Key(layer, "toc"), b)
}

// TestAgentLazyVerify: an index whose data was swapped for another
// layer's, consistent with its own TOC, is caught. In the background
// (default): once the prefetch has the layer, its reads fail with EIO and
// the failure is counted. With verify_before_start: the pull falls back to
// unpacking the layer, and the container reads the image's own files.
func TestAgentLazyVerify(t *testing.T) {
	for _, v := range testenv.ContainerdVersions() {
		t.Run("containerd-"+v, func(t *testing.T) { testAgentLazyVerify(t, v) })
	}
}

func testAgentLazyVerify(t *testing.T, version string) {
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	reg := testenv.StartFSRegistry(t)
	good, other, files := swapImages(t, e, bucket, reg)
	st := store.New(e.Client(t), bucket, store.WithPrefix("ecr"))
	layer, diffID := digest.FromBytes(good.Layers[1]), diffIDsOf(t, good)[1]
	forgeIndex(t, e, bucket, st, layer, diffID, digest.FromBytes(other.Layers[1]))
	ref := reg.Addr + "/team/app:v1"

	t.Run("in the background: reads fail", func(t *testing.T) {
		p := newLazyEnv(t, version, e, bucket, reg)
		p.pull(t, ref)
		if n := p.agent.Metric(t, "s3snap_snapshotter_lazy_layers_total"); int(n) != len(good.Layers) {
			t.Fatalf("%v layers mounted lazily, want %d", n, len(good.Layers))
		}
		// A file read now (perhaps before the check) is in the page cache:
		// once the layer is bad it must not be served from there either.
		ctrErrNS(p, "run", "--rm", "--snapshotter", "s3snap", ref, "early-"+p.ctrd.Namespace, "/hello", "/etc/conf")
		waitMetric(t, p.agent, "s3snap_lazy_verify_failures_total", 1)
		if n := p.agent.Metric(t, "s3snap_lazy_verified_layers_total"); n != 1 {
			t.Errorf("%v layers verified, want 1 (the base layer)", n)
		}
		out, err := ctrErrNS(p, "run", "--rm", "--snapshotter", "s3snap", ref, "swapped-"+p.ctrd.Namespace, "/hello", "/data/secret", "/etc/conf")
		if err == nil {
			t.Errorf("reading the swapped layer succeeded:\n%s", out)
		}
		for _, f := range []string{"/data/secret", "/etc/conf"} {
			if !strings.Contains(out, f+": read "+f+": input/output error") {
				t.Errorf("want EIO reading %s:\n%s", f, out)
			}
		}
		if strings.Contains(out, "impostor") || strings.Contains(out, hashLine("/etc/conf", []byte("an impostor!"))) {
			t.Errorf("the swapped content was served:\n%s", out)
		}
		if !regexp.MustCompile(`lazy layer does not match the image.*` + regexp.QuoteMeta(layer.String())).MatchString(serverLog(t, p.agent)) {
			t.Errorf("no line of the lazy FUSE server's log names the bad layer %s", layer)
		}
		// As the log line says: remove the image and pull it again. The
		// agent does not mount that index again, but unpacks the layer.
		p.rmi(t, ref)
		p.pull(t, ref)
		if n := p.agent.Metric(t, "s3snap_snapshotter_lazy_fallbacks_total"); n != 1 {
			t.Errorf("%v lazy fallbacks after pulling again, want 1 (the bad layer)", n)
		}
		p.run(t, ref, "again", files)
	})

	t.Run("verify_before_start: unpacked instead", func(t *testing.T) {
		p := newLazyEnvWith(t, version, e, bucket, reg, "verify_before_start = true\n")
		p.pull(t, ref)
		if n := p.agent.Metric(t, "s3snap_lazy_verify_failures_total"); n != 1 {
			t.Errorf("%v verification failures, want 1", n)
		}
		if n := p.agent.Metric(t, "s3snap_snapshotter_lazy_layers_total"); int(n) != len(good.Layers)-1 {
			t.Errorf("%v layers mounted lazily, want %d (all but the swapped one)", n, len(good.Layers)-1)
		}
		if n := p.agent.Metric(t, "s3snap_snapshotter_lazy_fallbacks_total"); n != 1 {
			t.Errorf("%v lazy fallbacks, want 1", n)
		}
		p.run(t, ref, "verified", files)
	})
}

// TestAgentLazyV1Unverified: an index of format v1 (no tar headers) is
// still served, and the agent says it is unverified; verify_before_start
// does not serve it.
func TestAgentLazyV1Unverified(t *testing.T) {
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	reg := testenv.StartFSRegistry(t)
	good, _, files := swapImages(t, e, bucket, reg)
	st := store.New(e.Client(t), bucket, store.WithPrefix("ecr"))
	for _, l := range good.Layers {
		toV1(t, e, bucket, st, digest.FromBytes(l))
	}
	ref := reg.Addr + "/team/app:v1"
	p := newLazyEnv(t, testenv.Containerd2, e, bucket, reg)
	p.pull(t, ref)
	if n := p.agent.Metric(t, "s3snap_snapshotter_lazy_layers_total"); int(n) != len(good.Layers) {
		t.Errorf("%v v1 layers mounted lazily, want %d", n, len(good.Layers))
	}
	p.run(t, ref, "v1", files)
	waitMetric(t, p.agent, "s3snap_lazy_unverified_layers_total", float64(len(good.Layers)))
	if !strings.Contains(agentLog(t, p.agent), "cannot be verified") {
		t.Error("no log line says the v1 index is unverified")
	}

	strict := newLazyEnvWith(t, testenv.Containerd2, e, bucket, reg, "verify_before_start = true\n")
	strict.pull(t, ref)
	if n := strict.agent.Metric(t, "s3snap_snapshotter_lazy_layers_total"); n != 0 {
		t.Errorf("verify_before_start: %v v1 layers mounted lazily, want 0", n)
	}
	strict.run(t, ref, "v1-strict", files)

	// s3snap index rewrites them as v2.
	if out := runIndex(t, indexCLI(t, e), "s3://"+bucket+"/ecr/team/app:v1"); out.Built != len(good.Layers) {
		t.Errorf("s3snap index over v1 indexes built %d, want %d", out.Built, len(good.Layers))
	}
	for _, l := range good.Layers {
		if toc, _, err := lazy.FetchTOC(context.Background(), st, digest.FromBytes(l)); err != nil || !toc.Verifiable() {
			t.Errorf("after s3snap index: %v, verifiable %v", err, err == nil && toc.Verifiable())
		}
	}
}

// toV1 rewrites layer's index as format v1: the v2 TOC without its tar
// headers, under the v1 keys; the v2 objects are deleted.
func toV1(t *testing.T, e *testenv.S3Env, bucket string, st *store.Store, layer digest.Digest) {
	t.Helper()
	toc, _, err := lazy.FetchTOC(context.Background(), st, layer)
	if err != nil {
		t.Fatal(err)
	}
	toc.Version, toc.Trailer = 1, nil
	for i := range toc.Entries {
		toc.Entries[i].Header = nil
	}
	b, err := toc.Encode()
	if err != nil {
		t.Fatal(err)
	}
	v2 := func(o string) string { return "ecr/s3snap/" + lazy.Key(layer, o) }
	putObject(t, e, bucket, "ecr/s3snap/"+lazy.VersionKey(1, layer, "data"), readObject(t, e, bucket, v2("data")))
	putObject(t, e, bucket, "ecr/s3snap/"+lazy.VersionKey(1, layer, "toc"), b)
	deleteObject(t, e, bucket, v2("toc"))
	deleteObject(t, e, bucket, v2("data"))
}

// blobGETs counts, per blob digest, the GETs the registry served under
// repo's blobs path (its access log).
func blobGETs(t *testing.T, reg *testenv.Registry, repo string) map[digest.Digest]int {
	t.Helper()
	b, err := os.ReadFile(reg.Log)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`"GET /v2/` + regexp.QuoteMeta(repo) + `/blobs/(sha256:[0-9a-f]{64}) HTTP/1.1" 20[06] `)
	out := map[digest.Digest]int{}
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		out[digest.Digest(m[1])]++
	}
	return out
}

// TestMigrateLazyIndex: migrate --lazy-index builds each layer's index from
// the stream it copies: the registry serves each blob once, the index is
// byte for byte the one s3snap index builds, verify --lazy-index checks it,
// and an agent pulls the image lazily from it.
func TestMigrateLazyIndex(t *testing.T) {
	e := testenv.S3(t)
	reg := testenv.StartFSRegistry(t)
	files := map[string][]byte{"/data/a": pseudoRandom(31, 5<<20+7), "/data/b": bytes.Repeat([]byte("text "), 300000)}
	im := testenv.RunnableImage(t,
		[]testenv.File{{Name: "data/a", Data: files["/data/a"]}},
		[]testenv.File{{Name: "data/b", Data: files["/data/b"]}, {Name: "data/link", Link: "b"}})
	testenv.PushToRegistry(t, reg.Addr, "team/app", "v1", im)
	bucket := e.NewBucket(t)
	cli := newMigrateCLI(t, e)
	rep, code := cli.migrate(t, "migrate", "--lazy-index", "--lazy-index-min-size=0", "docker://"+reg.Addr+"/team/app:v1", "s3://"+bucket+"/ecr")
	if code != 0 || rep.Summary.Copied != 1 {
		t.Fatalf("migrate: exit %d, %d copied", code, rep.Summary.Copied)
	}
	if rep.Summary.LazyIndexes != len(im.Layers) || rep.Summary.LazyIndexBytes <= 0 {
		t.Errorf("report: %d lazy indexes of %d bytes, want %d", rep.Summary.LazyIndexes, rep.Summary.LazyIndexBytes, len(im.Layers))
	}
	gets := blobGETs(t, reg, "team/app")
	for _, l := range im.Layers {
		if n := gets[digest.FromBytes(l)]; n != 1 {
			t.Errorf("layer %s read %d times from the registry, want once", digest.FromBytes(l), n)
		}
	}

	// The same image put in another bucket and indexed by s3snap index.
	ref := e.NewBucket(t)
	rst := store.New(e.Client(t), ref, store.WithPrefix("ecr"))
	testenv.PutImage(t, rst, "team/app", im)
	if err := rst.Tag(context.Background(), "team/app", "v1", im.Digest); err != nil {
		t.Fatal(err)
	}
	runIndex(t, indexCLI(t, e), "s3://"+ref+"/ecr/team/app:v1")
	for _, l := range im.Layers {
		d := digest.FromBytes(l)
		for _, o := range []string{"toc", "data"} {
			key := "ecr/s3snap/" + lazy.Key(d, o)
			if !bytes.Equal(readObject(t, e, bucket, key), readObject(t, e, ref, key)) {
				t.Errorf("layer %s: the %s migrate built is not the one s3snap index built", d, o)
			}
		}
	}

	if _, _, code := cli.run(t, "verify", "--lazy-index", "--lazy-index-min-size=0", "docker://"+reg.Addr+"/team/app:v1", "s3://"+bucket+"/ecr"); code != 0 {
		t.Errorf("verify --lazy-index: exit %d", code)
	}
	// A layer's index swapped for the other's: verify --lazy-index fails.
	st := store.New(e.Client(t), bucket, store.WithPrefix("ecr"))
	forgeIndex(t, e, bucket, st, digest.FromBytes(im.Layers[2]), diffIDsOf(t, im)[2], digest.FromBytes(im.Layers[1]))
	if _, _, code := cli.run(t, "verify", "--lazy-index", "docker://"+reg.Addr+"/team/app:v1", "s3://"+bucket+"/ecr"); code == 0 {
		t.Error("verify --lazy-index passed a swapped index")
	}
	if _, _, code := cli.run(t, "verify", "--deep", "docker://"+reg.Addr+"/team/app:v1", "s3://"+bucket+"/ecr"); code == 0 {
		t.Error("verify --deep passed a swapped index")
	}
	if _, _, code := cli.run(t, "verify", "docker://"+reg.Addr+"/team/app:v1", "s3://"+bucket+"/ecr"); code != 0 {
		t.Errorf("verify without --lazy-index: exit %d", code)
	}

	// The index as migrate built it serves a lazy pull.
	fresh := e.NewBucket(t)
	if rep, code := cli.migrate(t, "migrate", "--lazy-index", "--lazy-index-min-size=0", "docker://"+reg.Addr+"/team/app:v1", "s3://"+fresh+"/ecr"); code != 0 || rep.Summary.LazyIndexes != len(im.Layers) {
		t.Fatalf("migrate again: exit %d", code)
	}
	p := newLazyEnv(t, testenv.Containerd2, e, fresh, reg)
	p.pull(t, reg.Addr+"/team/app:v1")
	if n := p.agent.Metric(t, "s3snap_snapshotter_lazy_layers_total"); int(n) != len(im.Layers) {
		t.Errorf("%v layers mounted lazily, want %d", n, len(im.Layers))
	}
	p.run(t, reg.Addr+"/team/app:v1", "migrated", files)
	waitMetric(t, p.agent, "s3snap_lazy_verified_layers_total", float64(len(im.Layers)))
}

// TestPushLazyIndex: push --lazy-index of a legacy docker save (whose
// layers push gzips as it streams them) writes every layer's index, each
// one rebuilding its layer, says how many bytes they took, and an agent
// pulls the image lazily from them.
func TestPushLazyIndex(t *testing.T) {
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	reg := testenv.StartFSRegistry(t)
	img := newSaveImage(t, 9)
	tarPath := t.TempDir() + "/legacy.tar"
	img.legacy(t, tarPath)
	c := newPushCLI(t, e)
	ref := reg.Addr + "/team/legacy:v1"
	var res struct {
		Digest         digest.Digest `json:"digest"`
		LazyIndexes    int           `json:"lazyIndexes"`
		LazyIndexBytes int64         `json:"lazyIndexBytes"`
	}
	if err := json.Unmarshal([]byte(c.ok(t, "push", "-o", "json", "--prefix", "ecr", "--lazy-index", "--lazy-index-min-size=0", "--also", "docker://"+ref, tarPath, "s3://"+bucket+"/ecr/team/legacy:v1")), &res); err != nil {
		t.Fatal(err)
	}
	st := store.New(e.Client(t), bucket, store.WithPrefix("ecr"))
	m, err := st.GetManifest(context.Background(), "team/legacy", res.Digest)
	if err != nil {
		t.Fatal(err)
	}
	layers := map[digest.Digest]bool{}
	for _, l := range m.Image.Layers {
		layers[l.Digest] = true
	}
	if res.LazyIndexes != len(layers) || res.LazyIndexBytes <= 0 {
		t.Errorf("push: %d lazy indexes of %d bytes, want %d", res.LazyIndexes, res.LazyIndexBytes, len(layers))
	}
	if err := lazy.CheckImage(context.Background(), st, "team/legacy", res.Digest, 0); err != nil {
		t.Errorf("the pushed indexes: %v", err)
	}
	p := newLazyEnv(t, testenv.Containerd2, e, bucket, reg)
	p.pull(t, ref)
	// The legacy image lists its last layer twice: two snapshots of it.
	if n := p.agent.Metric(t, "s3snap_snapshotter_lazy_layers_total"); int(n) != len(m.Image.Layers) {
		t.Errorf("%v layers mounted lazily, want %d", n, len(m.Image.Layers))
	}
	p.run(t, ref, "pushed", img.files)
}
