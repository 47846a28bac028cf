package k8s

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/testenv"
)

// testImage is a runnable image with nLayers data layers of size bytes
// each (incompressible, so a pull moves them all), files /data/N.
type testImage struct {
	*testenv.Image
	files map[string][]byte
}

func newImage(t *testing.T, seed uint64, nLayers, size int) testImage {
	t.Helper()
	ti := testImage{files: map[string][]byte{}}
	// The first layer, /hello, is this image's own too (an id file in it):
	// every layer of every test image is new to the node, so a test counts
	// exactly the layers its pull provides.
	first, firstID := testenv.LayerTar(t, []testenv.File{{Name: "hello", Data: testenv.HelloBinary(t), Mode: 0o755},
		{Name: "id", Data: []byte(fmt.Sprint(seed))}})
	gzs, diffIDs := [][]byte{first}, []digest.Digest{firstID}
	for i := range nLayers {
		name := fmt.Sprintf("data/%d", i)
		ti.files["/"+name] = pseudoRandom(seed+uint64(i), size)
		gz, id := testenv.LayerTar(t, []testenv.File{{Name: name, Data: ti.files["/"+name]}})
		gzs, diffIDs = append(gzs, gz), append(diffIDs, id)
	}
	ti.Image = testenv.ImageFromLayers(t, testenv.HostPlatform(), gzs, diffIDs, ocispec.ImageConfig{Cmd: []string{"/hello"}})
	return ti
}

func pseudoRandom(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// hashLines are what /hello prints for the image's files.
func (ti testImage) hashLines() []string {
	var lines []string
	for name, data := range ti.files {
		lines = append(lines, fmt.Sprintf("%x  %s", sha256.Sum256(data), name))
	}
	return lines
}

func (ti testImage) args() []string {
	args := []string{"/hello"}
	for name := range ti.files {
		args = append(args, name)
	}
	return args
}

// publish puts im under repo:tag in the ECR stand-in's registry and, with
// inBucket, in the node's bucket (as `s3snap migrate` would).
func (c *cluster) publish(t *testing.T, repo, tag string, im *testenv.Image, inBucket bool) string {
	t.Helper()
	testenv.PushToRegistry(t, c.registry, repo, tag, im)
	if inBucket {
		st := c.store(t)
		testenv.PutImage(t, st, repo, im)
		if err := st.Tag(context.Background(), repo, tag, im.Digest); err != nil {
			t.Fatal(err)
		}
	}
	return c.ecrHost + "/" + repo + ":" + tag
}

// index runs `s3snap index` on repo:tag in the node's bucket.
func (c *cluster) index(t *testing.T, repo, tag string) {
	t.Helper()
	c.s3snap(t, "index", fmt.Sprintf("s3://%s/%s/%s:%s", c.bucket, c.prefix, repo, tag))
}

// s3snap runs the CLI with the S3 server's keys against its endpoint.
func (c *cluster) s3snap(t *testing.T, args ...string) string {
	t.Helper()
	tmp := t.TempDir()
	env := []string{"AWS_ACCESS_KEY_ID=" + c.s3.AccessKey, "AWS_SECRET_ACCESS_KEY=" + c.s3.SecretKey, "AWS_REGION=" + c.s3.Region,
		"AWS_EC2_METADATA_DISABLED=true", "AWS_PROFILE=", "AWS_CONFIG_FILE=" + tmp + "/none", "AWS_SHARED_CREDENTIALS_FILE=" + tmp + "/none"}
	return runEnv(t, env, testenv.S3snapBinary(t), append([]string{"--endpoint", c.s3.Endpoint}, args...)...)
}

// runEnv runs bin and returns its stdout, failing t on error.
func runEnv(t *testing.T, env []string, bin string, args ...string) string {
	t.Helper()
	cmd := execCommand(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", bin, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// deployment is a one-replica Deployment of image whose pod prints its
// files' hashes and stays up; podSpec lines are added to its pod's spec.
func deployment(ns, name, image, pullPolicy string, args []string, podSpec ...string) string {
	quoted, _ := json.Marshal(args)
	extra := ""
	for _, l := range podSpec {
		extra += "      " + l + "\n"
	}
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: %[2]s}}
  template:
    metadata: {labels: {app: %[2]s}}
    spec:
      terminationGracePeriodSeconds: 2
      dnsPolicy: Default
      automountServiceAccountToken: false
      enableServiceLinks: false
      containers:
      - name: app
        image: %[3]s
        imagePullPolicy: %[4]s
        command: %[5]s
        env: [{name: HELLO_WAIT, value: "1"}]
%[6]s`, ns, name, image, pullPolicy, quoted, extra)
}

// deploy applies a Deployment and waits for its rollout, returning the time
// from apply to the pod Ready.
func (c *cluster) deploy(t *testing.T, ns, name, image, pullPolicy string, args []string, podSpec ...string) time.Duration {
	t.Helper()
	start := time.Now()
	c.apply(t, deployment(ns, name, image, pullPolicy, args, podSpec...))
	c.kubectl(t, "-n", ns, "rollout", "status", "deployment/"+name, "--timeout=180s")
	return time.Since(start)
}

// checkLogs: the deployment's newest pod printed every file's hash: each
// layer landed intact. (Bounded wait: a pod just Ready may not have
// written its log yet.)
func (c *cluster) checkLogs(t *testing.T, ns, name string, im testImage) {
	t.Helper()
	var out string
	deadline := time.Now().Add(20 * time.Second)
	for {
		pods := strings.Fields(c.kubectl(t, "-n", ns, "get", "pods", "-l", "app="+name, "--sort-by=.metadata.creationTimestamp",
			"-o", "jsonpath={.items[*].metadata.name}"))
		if len(pods) > 0 {
			out, _ = c.kubectlErr(t, "-n", ns, "logs", pods[len(pods)-1])
		}
		missing := 0
		for _, line := range im.hashLines() {
			if !strings.Contains(out, line) {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("the newest pod of %s did not print %d of its files' hashes; its log:\n%s", name, missing, out)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

type pullCounts struct{ provided, lazy, blobs int }

func (c *cluster) counts(t *testing.T, repo string) pullCounts {
	t.Helper()
	return pullCounts{
		provided: int(c.agent.Metric(t, "s3snap_snapshotter_layers_provided_total")),
		lazy:     int(c.agent.Metric(t, "s3snap_snapshotter_lazy_layers_total")),
		blobs:    c.registryBlobGETs(t, repo),
	}
}

func (p pullCounts) since(before pullCounts) pullCounts {
	return pullCounts{p.provided - before.provided, p.lazy - before.lazy, p.blobs - before.blobs}
}

// TestK8sDeploymentPullsFromS3: a Deployment whose image is referenced by
// its ECR name becomes Ready on the node with every layer from S3 and no
// blob from the registry, eagerly and lazily (indexed by `s3snap index`);
// imagePullPolicy: Always re-pulls a moved tag from S3; with the bucket
// emptied, the pull falls back to the registry. Create-to-Ready times are
// logged, and compared with the same node's containerd without the agent.
func TestK8sDeploymentPullsFromS3(t *testing.T) {
	c := theCluster(t)
	ns := c.namespace(t)
	const layers, size = 3, 32 << 20

	t.Run("eager", func(t *testing.T) {
		im := newImage(t, 100, layers, size)
		ref := c.publish(t, "team/eager", "v1", im.Image, true)
		before := c.counts(t, "team/eager")
		took := c.deploy(t, ns, "eager", ref, "Always", im.args())
		got := c.counts(t, "team/eager").since(before)
		t.Logf("pod start (create → Ready), eager from S3: %.2fs (%d layers of %d MiB)", took.Seconds(), layers, size>>20)
		if got.provided != len(im.Layers) || got.blobs != 0 {
			t.Errorf("layers provided from S3: %d, want %d; blobs the registry served: %d, want 0", got.provided, len(im.Layers), got.blobs)
		}
		c.checkLogs(t, ns, "eager", im)

		// imagePullPolicy: Always: the tag now names another image; a
		// restarted rollout pulls it, again from S3.
		im2 := newImage(t, 200, layers, size)
		c.publish(t, "team/eager", "v1", im2.Image, true)
		before = c.counts(t, "team/eager")
		c.kubectl(t, "-n", ns, "rollout", "restart", "deployment/eager")
		c.kubectl(t, "-n", ns, "rollout", "status", "deployment/eager", "--timeout=180s")
		got = c.counts(t, "team/eager").since(before)
		if got.provided != len(im2.Layers) || got.blobs != 0 {
			t.Errorf("re-pull: layers provided from S3: %d, want %d; blobs the registry served: %d, want 0", got.provided, len(im2.Layers), got.blobs)
		}
		c.checkLogs(t, ns, "eager", im2)
		c.kubectl(t, "-n", ns, "delete", "deployment", "eager", "--wait=true")
	})

	t.Run("lazy", func(t *testing.T) {
		im := newImage(t, 300, layers, size)
		ref := c.publish(t, "team/lazy", "v1", im.Image, true)
		c.index(t, "team/lazy", "v1")
		before := c.counts(t, "team/lazy")
		took := c.deploy(t, ns, "lazy", ref, "IfNotPresent", im.args())
		got := c.counts(t, "team/lazy").since(before)
		t.Logf("pod start (create → Ready), lazy from S3: %.2fs (%d layers of %d MiB)", took.Seconds(), layers, size>>20)
		if got.lazy != len(im.Layers) || got.blobs != 0 {
			t.Errorf("layers mounted lazily: %d, want %d; blobs the registry served: %d, want 0", got.lazy, len(im.Layers), got.blobs)
		}
		c.checkLogs(t, ns, "lazy", im)
		c.kubectl(t, "-n", ns, "delete", "deployment", "lazy", "--wait=true")
	})

	t.Run("without agent", func(t *testing.T) {
		// The same node's containerd as it was before `s3snap install`
		// (overlayfs, the registry directly), kubelet left running.
		c.restartContainerd(t, "plain")
		t.Cleanup(func() { c.restartContainerd(t, "s3snap") })
		im := newImage(t, 400, layers, size)
		ref := c.publish(t, "team/plain", "v1", im.Image, false)
		took := c.deploy(t, ns, "plain", ref, "IfNotPresent", im.args())
		t.Logf("pod start (create → Ready), containerd without the agent: %.2fs (%d layers of %d MiB)", took.Seconds(), layers, size>>20)
		if got := c.registryBlobGETs(t, "team/plain"); got < len(im.Layers) {
			t.Errorf("containerd without the agent fetched %d blobs from the registry, want at least %d", got, len(im.Layers))
		}
		c.checkLogs(t, ns, "plain", im)
		c.kubectl(t, "-n", ns, "delete", "deployment", "plain", "--wait=true")
	})

	t.Run("bucket emptied", func(t *testing.T) {
		im := newImage(t, 500, layers, 1<<20)
		ref := c.publish(t, "team/gone", "v1", im.Image, true)
		testenv.EmptyBucket(context.Background(), c.s3.Client(t), c.bucket)
		before := c.counts(t, "team/gone")
		c.deploy(t, ns, "gone", ref, "IfNotPresent", im.args())
		got := c.counts(t, "team/gone").since(before)
		if got.provided != 0 || got.blobs < len(im.Layers) {
			t.Errorf("with the bucket empty: %d layers provided from S3, want 0; %d blobs from the registry, want at least %d", got.provided, got.blobs, len(im.Layers))
		}
		c.checkLogs(t, ns, "gone", im)
	})
}

// restartContainerd restarts the node's containerd in mode (s3snap or
// plain) under the running kubelet and waits for the node to be Ready.
func (c *cluster) restartContainerd(t *testing.T, mode string) {
	t.Helper()
	if out, err := k8sScript(c.dir, "containerd-restart", mode); err != nil {
		t.Fatalf("k8s.sh containerd-restart %s: %v\n%s", mode, err, out)
	}
	c.waitNodeReady(t)
}

func (c *cluster) waitNodeReady(t *testing.T) {
	t.Helper()
	c.kubectl(t, "wait", "--for=condition=Ready", "node/localhost", "--timeout=120s")
}
