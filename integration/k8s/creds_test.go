package k8s

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/store"
)

// useAgent restarts the node's agent with its installed config edited to
// read store from endpoint, and env as its whole AWS environment; the
// installed agent is back when t ends.
func (c *cluster) useAgent(t *testing.T, endpoint, storeURL string, env []string) {
	t.Helper()
	installed, err := os.ReadFile(c.env["S3SNAP_K8S_AGENT_CONFIG"])
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(installed)
	for _, r := range [][2]string{
		{`endpoint = "` + c.s3.Endpoint + `"`, `endpoint = "` + endpoint + `"`},
		{`store = "s3://` + c.bucket + `/` + c.prefix + `"`, `store = "` + storeURL + `"`},
	} {
		if strings.Count(cfg, r[0]) != 1 {
			t.Fatalf("installed agent config has no single %s:\n%s", r[0], cfg)
		}
		cfg = strings.Replace(cfg, r[0], r[1], 1)
	}
	writeFile(t, filepath.Join(c.dir, "agent.toml"), cfg)
	writeFile(t, filepath.Join(c.dir, "agent.env"), strings.Join(env, "\n")+"\n")
	t.Cleanup(func() {
		os.Remove(filepath.Join(c.dir, "agent.toml"))
		os.Remove(filepath.Join(c.dir, "agent.env"))
		if out, err := k8sScript(c.dir, "agent-restart"); err != nil {
			t.Errorf("k8s.sh agent-restart (the installed agent back): %v\n%s", err, out)
		}
	})
	if out, err := k8sScript(c.dir, "agent-restart"); err != nil {
		t.Fatalf("k8s.sh agent-restart: %v\n%s", err, out)
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// agentEnviron is the running agent's environment.
func (c *cluster) agentEnviron(t *testing.T) []string {
	t.Helper()
	pid, err := os.ReadFile(filepath.Join(c.dir, "agent.pid"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/" + strings.TrimSpace(string(pid)) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// TestK8sInstanceCredentials: the agent's only credentials are the ones an
// instance metadata service (AWS's ec2-metadata-mock, IMDSv2 only) hands
// out: temporary ones with a session token from MinIO's STS, which MinIO
// checks. Pods pull through it from a bucket on MinIO; when the metadata
// service hands out new credentials and the old ones' expiry passes, the
// next pull is signed with the new ones and nothing fails.
func TestK8sInstanceCredentials(t *testing.T) {
	c := theCluster(t)
	mi := startMinIO(t)
	const bucket = "s3snap-node"
	mi.bucket(t, bucket)
	rec := startKeyRecorder(t, mi.endpoint)

	const layers = 2
	ims := []testImage{newImage(t, 700, layers, 4<<20), newImage(t, 800, layers, 4<<20)}
	st := store.New(mi.client(mi.endpoint), bucket, store.WithPrefix("ecr"))
	for i, im := range ims {
		repo := []string{"creds/before", "creds/after"}[i]
		testenv.PutImage(t, st, repo, im.Image)
		if err := st.Tag(context.Background(), repo, "v1", im.Digest); err != nil {
			t.Fatal(err)
		}
		testenv.PushToRegistry(t, c.registry, repo, "v1", im.Image)
	}

	old := mi.assumeRole(t)
	oldExpires := time.Now().Add(30 * time.Second)
	imds := startIMDS(t, old, oldExpires)
	c.useAgent(t, rec.url, "s3://"+bucket+"/ecr", []string{"AWS_EC2_METADATA_SERVICE_ENDPOINT=" + imds.url})
	for _, kv := range c.agentEnviron(t) {
		k, _, _ := strings.Cut(kv, "=")
		if slices.Contains([]string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_EC2_METADATA_DISABLED"}, k) {
			t.Fatalf("the agent's environment has %s", kv)
		}
	}
	ns := c.namespace(t)

	pull := func(name, repo string, im testImage) {
		t.Helper()
		before := c.counts(t, repo)
		c.deploy(t, ns, name, c.ecrHost+"/"+repo+":v1", "IfNotPresent", im.args())
		got := c.counts(t, repo).since(before)
		if got.provided != len(im.Layers) || got.blobs != 0 {
			t.Errorf("%s: layers provided from S3: %d, want %d; blobs the registry served: %d, want 0", repo, got.provided, len(im.Layers), got.blobs)
		}
		c.checkLogs(t, ns, name, im)
	}
	pull("before", "creds/before", ims[0])
	keys, _, _ := rec.snapshot()
	if len(keys) != 1 || keys[0] != aws.ToString(old.AccessKeyId) {
		t.Fatalf("requests to MinIO were signed with %v, want only the metadata service's %s", keys, aws.ToString(old.AccessKeyId))
	}

	// Rotation: the metadata service hands out new credentials; once the
	// old ones' stated expiry passes, the SDK asks it again.
	fresh := mi.assumeRole(t)
	imds.serve(t, fresh, time.Now().Add(10*time.Minute))
	time.Sleep(time.Until(oldExpires) + time.Second)
	pull("after", "creds/after", ims[1])
	keys, counts, denied := rec.snapshot()
	t.Logf("instance credentials: old access key id %s (%d requests), new %s (%d requests); requests refused: %d",
		aws.ToString(old.AccessKeyId), counts[aws.ToString(old.AccessKeyId)], aws.ToString(fresh.AccessKeyId), counts[aws.ToString(fresh.AccessKeyId)], denied)
	if keys[len(keys)-1] != aws.ToString(fresh.AccessKeyId) {
		t.Errorf("after the rotation requests were signed with %s, want the new %s (sequence %v)", keys[len(keys)-1], aws.ToString(fresh.AccessKeyId), keys)
	}
	if denied != 0 {
		t.Errorf("MinIO refused %d requests", denied)
	}
}
