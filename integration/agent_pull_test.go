package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/integration/faultproxy"
	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/store"
)

// pseudoRandom is incompressible test data, the same for the same seed.
func pseudoRandom(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// hashLine is what /hello prints for a file.
func hashLine(name string, data []byte) string {
	return fmt.Sprintf("%x  %s", sha256.Sum256(data), name)
}

// pullEnv is an agent between a private containerd and a bucket, with S3
// behind a fault proxy and a real registry upstream holding the same images.
type pullEnv struct {
	e        *testenv.S3Env
	bucket   string
	st       *store.Store
	reg      *testenv.Registry
	proxy    *faultproxy.Proxy
	agent    *testenv.Agent
	ctrd     *testenv.Containerd
	upstream string
	// viaCRI pulls with crictl, into the CRI's namespace: containerd 1.7's
	// ctr unpacks without the remote-snapshot labels, only its CRI sends
	// them.
	viaCRI bool
}

// newPullEnv starts the agent and containerd 2.4, with its CRI when cri is
// set.
func newPullEnv(t *testing.T, cri bool) *pullEnv {
	t.Helper()
	return newPullEnvFor(t, testenv.Containerd2, cri)
}

// newPullEnvFor is newPullEnv for containerd version (testenv.Containerd2
// or Containerd17). On 1.7 the CRI is always on and p.pull goes through it.
func newPullEnvFor(t *testing.T, version string, cri bool) *pullEnv {
	t.Helper()
	return newPullEnvWith(t, version, cri, "")
}

// newPullEnvWith is newPullEnvFor with extra agent config (a [lazy] table).
func newPullEnvWith(t *testing.T, version string, cri bool, extra string) *pullEnv {
	t.Helper()
	e := testenv.S3(t)
	p := &pullEnv{e: e, bucket: e.NewBucket(t), reg: testenv.StartFSRegistry(t)}
	p.upstream = p.reg.Addr
	p.st = store.New(e.Client(t), p.bucket, store.WithPrefix("ecr"))
	proxy, err := faultproxy.New(e.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	p.proxy = proxy
	viaProxy := *e
	viaProxy.Endpoint = proxy.URL()
	p.agent = testenv.StartAgent(t, testenv.AgentOptions{
		S3:         &viaProxy,
		Registries: map[string]string{p.upstream: "s3://" + p.bucket + "/ecr"},
		Extra:      "[fetch]\npart_size = \"1MiB\"\n" + extra,
	})
	p.startContainerd(t, version, cri)
	return p
}

func (p *pullEnv) startContainerd(t *testing.T, version string, cri bool) {
	t.Helper()
	p.viaCRI = version == testenv.Containerd17
	p.ctrd = testenv.StartContainerd(t, testenv.ContainerdOptions{
		Version: version, CRI: cri || p.viaCRI, Extra: p.agent.ContainerdConfigFor(version, p.upstream)})
}

// add puts im in the bucket (tagged) and in the upstream registry.
func (p *pullEnv) add(t *testing.T, repo string, im *testenv.Image, inBucket bool) string {
	t.Helper()
	if inBucket {
		testenv.PutImage(t, p.st, repo, im)
		if err := p.st.Tag(context.Background(), repo, "v1", im.Digest); err != nil {
			t.Fatal(err)
		}
	}
	testenv.PushToRegistry(t, p.upstream, repo, "v1", im)
	return p.upstream + "/" + repo + ":v1"
}

// pull pulls ref into the s3snap snapshotter: with ctr, or the CRI on 1.7.
func (p *pullEnv) pull(t *testing.T, ref string) {
	t.Helper()
	if p.viaCRI {
		p.ctrd.Crictl(t, "pull", ref)
		return
	}
	p.ctrPull(t, ref)
}

func (p *pullEnv) ctrPull(t *testing.T, ref string) {
	t.Helper()
	p.ctrd.Ctr(t, "images", "pull", "--hosts-dir", p.agent.HostsDir, "--snapshotter", "s3snap", ref)
}

// namespace is where p.pull puts images.
func (p *pullEnv) namespace() string {
	if p.viaCRI {
		return testenv.CRINamespace
	}
	return p.ctrd.Namespace
}

// rmi removes the image p.pull pulled, synchronously (its snapshots too).
func (p *pullEnv) rmi(t *testing.T, ref string) {
	t.Helper()
	if p.viaCRI {
		// The CRI keeps the image under its tag, digest and ID.
		p.ctrd.Crictl(t, "rmi", ref)
		return
	}
	p.ctrd.Ctr(t, "images", "rm", "--sync", ref)
}

// run runs /hello in a container from ref (pulled by p.pull) and checks it
// printed the expected hash lines.
func (p *pullEnv) run(t *testing.T, ref, id string, files map[string][]byte) {
	t.Helper()
	p.runIn(t, p.namespace(), ref, id, files)
}

func (p *pullEnv) runIn(t *testing.T, ns, ref, id string, files map[string][]byte) {
	t.Helper()
	args := []string{"run", "--rm", "--snapshotter", "s3snap", ref, id + "-" + p.ctrd.Namespace, "/hello"}
	for name := range files {
		args = append(args, name)
	}
	out := p.ctrd.CtrNS(t, ns, args...)
	if !strings.Contains(out, "hello from s3snap") {
		t.Fatalf("container output:\n%s", out)
	}
	for name, data := range files {
		if !strings.Contains(out, hashLine(name, data)) {
			t.Errorf("in the container %s does not hash right:\n%s", name, out)
		}
	}
}

func (p *pullEnv) provided(t *testing.T) float64 {
	return p.agent.Metric(t, "s3snap_snapshotter_layers_provided_total")
}

// TestAgentPullsLayersFromS3: with the agent as containerd's snapshotter, an
// image in the bucket is pulled by its registry reference with zero layer
// blob downloads (from the registry or the mirror): every layer is fetched
// from S3 by the snapshotter, and a container from it runs with every file
// intact, also after the agent and then containerd restart. On containerd
// 2.4 ctr pulls; on 1.7, whose ctr sends no layer labels, the CRI does
// (crictl), and 1.7's ctr pull is a plain pull that must still run.
func TestAgentPullsLayersFromS3(t *testing.T) {
	for _, v := range testenv.ContainerdVersions() {
		t.Run("containerd-"+v, func(t *testing.T) { testAgentPullsLayersFromS3(t, v) })
	}
}

func testAgentPullsLayersFromS3(t *testing.T, version string) {
	p := newPullEnvFor(t, version, false)
	files := map[string][]byte{
		"/data/a": pseudoRandom(1, 3<<20), // three 1 MiB parts
		"/data/b": bytes.Repeat([]byte("compressible "), 100000),
		"/etc/c":  []byte("small"),
	}
	im := testenv.RunnableImage(t,
		[]testenv.File{{Name: "data/a", Data: files["/data/a"]}},
		[]testenv.File{{Name: "data/b", Data: files["/data/b"]}},
		[]testenv.File{{Name: "etc/c", Data: files["/etc/c"]}},
	)
	ref := p.add(t, "team/app", im, true)

	p.pull(t, ref)
	if n := p.provided(t); int(n) != len(im.Layers) {
		t.Errorf("snapshotter provided %v layers from S3, want all %d", n, len(im.Layers))
	}
	if n := registryRequests(t, p.reg, "/v2/team/app/blobs/"); n != 0 {
		t.Errorf("containerd downloaded %d blobs from the registry, want 0", n)
	}
	// The mirror serves the manifest and the config; no layer passes through it.
	if n := p.agent.Metric(t, "s3snap_mirror_served_bytes_total", "kind=blob"); int(n) != len(im.Config) {
		t.Errorf("the mirror served %v blob bytes, want only the %d-byte config", n, len(im.Config))
	}
	p.run(t, ref, "first", files)

	t.Run("restart agent then containerd: images run, nothing fetched again", func(t *testing.T) {
		p.agent.Restart(t)
		p.ctrd.Restart(t)
		p.run(t, ref, "after-restart", files)
		p.pull(t, ref) // pulling again is a no-op
		if n := p.provided(t); n != 0 {
			t.Errorf("after restart the agent fetched %v layers again", n)
		}
		if n := p.agent.Metric(t, "s3snap_snapshotter_fetched_bytes_total"); n != 0 {
			t.Errorf("after restart the agent fetched %v bytes again", n)
		}
		if n := registryRequests(t, p.reg, "/v2/team/app/blobs/"); n != 0 {
			t.Errorf("after restart containerd downloaded %d blobs", n)
		}
	})

	t.Run("image only upstream falls back", func(t *testing.T) {
		other := map[string][]byte{"/only": []byte("upstream only")}
		ref := p.add(t, "team/other", testenv.RunnableImage(t, []testenv.File{{Name: "only", Data: other["/only"]}}), false)
		p.pull(t, ref)
		if n := p.agent.Metric(t, "s3snap_snapshotter_fallbacks_total", "reason=not_in_bucket"); n < 1 {
			t.Errorf("fallbacks{not_in_bucket} = %v", n)
		}
		p.run(t, ref, "upstream", other)
	})

	if version != testenv.Containerd17 {
		return
	}
	t.Run("ctr pull on 1.7: no layer labels, a plain pull that runs", func(t *testing.T) {
		plain := map[string][]byte{"/data/plain": pseudoRandom(2, 1<<20)}
		pim := testenv.RunnableImage(t, []testenv.File{{Name: "data/plain", Data: plain["/data/plain"]}})
		ref := p.add(t, "team/plain", pim, true)
		provided := p.provided(t)
		fallbacks := p.agent.Metric(t, "s3snap_snapshotter_fallbacks_total")
		p.ctrPull(t, ref)
		// The agent sees ordinary Prepares: no layer from S3 through the
		// snapshotter, no fallback counted; the layers come through the
		// mirror, which serves them from the bucket.
		if n := p.provided(t); n != provided {
			t.Errorf("snapshotter provided %v layers for a label-less ctr pull, want none", n-provided)
		}
		if n := p.agent.Metric(t, "s3snap_snapshotter_fallbacks_total"); n != fallbacks {
			t.Errorf("%v fallbacks counted for a label-less ctr pull, want none", n-fallbacks)
		}
		if n := registryRequests(t, p.reg, "/v2/team/plain/blobs/"); n != 0 {
			t.Errorf("containerd downloaded %d blobs from the registry, want 0 (the mirror serves them)", n)
		}
		p.runIn(t, p.ctrd.Namespace, ref, "plain", plain)
	})
}

// TestAgentFaults: a flipped byte or a truncated object in the bucket, or S3
// going down mid-pull, never leaves a corrupt layer: the pull falls back to
// the registry and the container sees the right bytes.
func TestAgentFaults(t *testing.T) {
	p := newPullEnv(t, false)
	ctx := context.Background()
	for i, tc := range []struct {
		name   string
		damage func(t *testing.T, key string, data []byte)
	}{
		{"flipped byte", func(t *testing.T, key string, data []byte) {
			data[len(data)/2] ^= 0x40
			putObject(t, p.e, p.bucket, key, data)
		}},
		{"truncated object", func(t *testing.T, key string, data []byte) {
			putObject(t, p.e, p.bucket, key, data[:len(data)/2])
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string][]byte{"/data/x": pseudoRandom(uint64(10+i), 2<<20)}
			im := testenv.RunnableImage(t, []testenv.File{{Name: "data/x", Data: files["/data/x"]}})
			repo := fmt.Sprintf("fault/case%d", i)
			ref := p.add(t, repo, im, true)
			layer := digest.FromBytes(im.Layers[1])
			info, err := p.st.StatBlob(ctx, layer)
			if err != nil {
				t.Fatal(err)
			}
			tc.damage(t, info.Key, readObject(t, p.e, p.bucket, info.Key))
			before := p.agent.Metric(t, "s3snap_snapshotter_fallbacks_total")
			p.pull(t, ref)
			if n := p.agent.Metric(t, "s3snap_snapshotter_fallbacks_total"); n <= before {
				t.Errorf("no fallback recorded for a damaged layer")
			}
			if n := registryRequests(t, p.reg, "/v2/"+repo+"/blobs/sha256:"+layer.Encoded()); n == 0 {
				t.Errorf("the damaged layer was not fetched from the registry")
			}
			p.run(t, ref, strings.ReplaceAll(tc.name, " ", "-"), files)
		})
	}

	t.Run("S3 goes down mid-pull", func(t *testing.T) {
		files := map[string][]byte{
			"/data/1": pseudoRandom(21, 4<<20),
			"/data/2": pseudoRandom(22, 4<<20),
			"/data/3": pseudoRandom(23, 4<<20),
		}
		im := testenv.RunnableImage(t,
			[]testenv.File{{Name: "data/1", Data: files["/data/1"]}},
			[]testenv.File{{Name: "data/2", Data: files["/data/2"]}},
			[]testenv.File{{Name: "data/3", Data: files["/data/3"]}},
		)
		ref := p.add(t, "fault/down", im, true)
		// The third ranged GET of layer data kills the S3 server (the proxy).
		kill := p.proxy.Add(faultproxy.Rule{
			Method: http.MethodGet,
			Match:  func(r *http.Request) bool { return r.Header.Get("Range") != "" },
			Nth:    3,
			Fault:  faultproxy.Reset,
			After:  1000,
			Hook:   func(*http.Request) { go p.proxy.Close() },
		})
		p.pull(t, ref)
		if kill.Fired() != 1 {
			t.Fatalf("S3 was not taken down mid-pull (rule fired %d times)", kill.Fired())
		}
		p.run(t, ref, "s3-down", files)
		if code, _ := p.agent.Health(t); code != http.StatusServiceUnavailable {
			t.Errorf("healthz with S3 down = %d, want 503", code)
		}
	})
}

// TestAgentCRIPull is the kubelet's path: containerd's CRI image service
// with the agent as its snapshotter and snapshot annotations on, pulled
// with crictl, on every containerd version. Every layer comes from S3; the
// registry serves no blob.
func TestAgentCRIPull(t *testing.T) {
	testenv.Bin(t, "crictl")
	for _, v := range testenv.ContainerdVersions() {
		t.Run("containerd-"+v, func(t *testing.T) {
			p := newPullEnvFor(t, v, true)
			files := map[string][]byte{"/data/cri": pseudoRandom(31, 2<<20)}
			im := testenv.RunnableImage(t, []testenv.File{{Name: "data/cri", Data: files["/data/cri"]}})
			ref := p.add(t, "team/cri", im, true)

			out := p.ctrd.Crictl(t, "pull", ref)
			// crictl names an image by its ID, the config's digest.
			if id := digest.FromBytes(im.Config); !strings.Contains(out, "Image is up to date for "+id.String()) {
				t.Errorf("crictl pull printed %q, want image %s", out, id)
			}
			if n := p.provided(t); int(n) != len(im.Layers) {
				t.Errorf("snapshotter provided %v layers from S3, want %d", n, len(im.Layers))
			}
			if n := registryRequests(t, p.reg, "/v2/team/cri/blobs/"); n != 0 {
				t.Errorf("the registry served %d blobs, want 0", n)
			}
			images := p.ctrd.Crictl(t, "images", "--digests")
			if !strings.Contains(images, p.upstream+"/team/cri") {
				t.Errorf("crictl images does not list the image:\n%s", images)
			}
			// The CRI's image lives in containerd's k8s.io namespace; run it
			// there with the snapshotter it was unpacked into.
			p.runIn(t, testenv.CRINamespace, ref, "cri-run", files)
		})
	}
}
