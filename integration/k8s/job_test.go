package k8s

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/testenv"
)

// jobManifest is docs/migrate-job.yaml, checked to be the manifest the
// README shows.
func jobManifest(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(), "docs", "migrate-job.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(repoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "```yaml\n"+string(b)+"```\n") {
		t.Fatal("README.md's Indexed Job manifest is not docs/migrate-job.yaml word for word")
	}
	return string(b)
}

// edit replaces old with new in s, failing t unless old occurs exactly once:
// the tested manifest is the documented one with only these edits.
func edit(t *testing.T, s, old, new string) string {
	t.Helper()
	if n := strings.Count(s, old); n != 1 {
		t.Fatalf("docs/migrate-job.yaml has %q %d times, want once", old, n)
	}
	return strings.Replace(s, old, new, 1)
}

// s3snapImage is an image of a static s3snap binary (entrypoint /s3snap).
func s3snapImage(t *testing.T) *testenv.Image {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "s3snap")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./cmd/s3snap")
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build a static s3snap: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	gz, diffID := testenv.LayerTar(t, []testenv.File{{Name: "s3snap", Data: data, Mode: 0o755}})
	return testenv.ImageFromLayers(t, testenv.HostPlatform(), [][]byte{gz}, []digest.Digest{diffID}, ocispec.ImageConfig{Entrypoint: []string{"/s3snap"}})
}

// TestK8sMigrateIndexedJob: the README's Indexed Job (docs/migrate-job.yaml:
// 4 shards, --shard $(JOB_COMPLETION_INDEX)/4) runs on the cluster from an
// s3snap image built here against the ECR stand-in, with credentials from
// a Secret (into the S3 server) and as EKS Pod Identity gives them (a
// projected service account token and AWS_CONTAINER_CREDENTIALS_FULL_URI,
// into MinIO with its STS credentials); a pod killed mid-run is retried by
// the Job, and then `s3snap verify` finds the bucket complete.
func TestK8sMigrateIndexedJob(t *testing.T) {
	c := theCluster(t)
	manifest := jobManifest(t)
	const repos = 12
	for i := range repos {
		im := testenv.NewImage(t, testenv.HostPlatform(),
			[]testenv.File{{Name: "data", Data: pseudoRandom(uint64(1000+i), 2<<20)}},
			[]testenv.File{{Name: "name", Data: []byte(fmt.Sprint(i))}})
		testenv.PushToRegistry(t, c.registry, fmt.Sprintf("mig/r%02d", i), "v1", im)
	}
	image := c.publish(t, "tools/s3snap", "job", s3snapImage(t), true)

	t.Run("secret", func(t *testing.T) {
		ns := c.namespace(t)
		dst := c.s3.NewBucket(t)
		c.kubectl(t, "-n", ns, "create", "serviceaccount", "s3snap-migrate")
		c.kubectl(t, "-n", ns, "create", "secret", "generic", "s3snap-migrate-creds",
			"--from-literal=AWS_ACCESS_KEY_ID="+c.s3.AccessKey, "--from-literal=AWS_SECRET_ACCESS_KEY="+c.s3.SecretKey)
		env := fmt.Sprintf(`        envFrom: [{secretRef: {name: s3snap-migrate-creds}}]
        env:
        - {name: AWS_REGION, value: %s}
        - {name: AWS_ENDPOINT_URL, value: %q}
        - {name: AWS_ENDPOINT_URL_ECR, value: %q}
`, c.s3.Region, c.s3.Endpoint, c.env["ECR_ENDPOINT"])
		c.runJob(t, ns, jobEdits(t, manifest, image, dst, env, ""))
		c.verifyMigrated(t, c.s3.Endpoint, c.s3.AccessKey, c.s3.SecretKey, dst, repos)
	})

	t.Run("pod identity", func(t *testing.T) {
		ns := c.namespace(t)
		mi := startMinIO(t)
		const dst = "migrated"
		mi.bucket(t, dst)
		c.kubectl(t, "-n", ns, "create", "serviceaccount", "s3snap-migrate")
		pi := startPodIdentity(t, c, mi, ns, "s3snap-migrate")
		// Only that service account's tokens get credentials.
		other := strings.TrimSpace(c.kubectl(t, "-n", ns, "create", "token", "default", "--audience", podIdentityAudience))
		if code := pi.ask(t, other); code != http.StatusForbidden || pi.refused.Load() != 1 {
			t.Fatalf("pod identity answered %d to another service account's token, want 403", code)
		}
		pi.refused.Store(0)
		// What the EKS Pod Identity webhook adds to a pod of an associated
		// service account.
		const tokenDir = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"
		env := fmt.Sprintf(`        env:
        - {name: AWS_REGION, value: us-east-1}
        - {name: AWS_ENDPOINT_URL, value: %q}
        - {name: AWS_ENDPOINT_URL_ECR, value: %q}
        - {name: AWS_CONTAINER_CREDENTIALS_FULL_URI, value: %q}
        - {name: AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, value: %s/eks-pod-identity-token}
        volumeMounts: [{name: eks-pod-identity-token, mountPath: %s, readOnly: true}]
`, mi.endpoint, c.env["ECR_ENDPOINT"], pi.url, tokenDir, tokenDir)
		volumes := fmt.Sprintf(`      volumes:
      - name: eks-pod-identity-token
        projected: {sources: [{serviceAccountToken: {audience: %s, expirationSeconds: 86400, path: eks-pod-identity-token}}]}
`, podIdentityAudience)
		c.runJob(t, ns, jobEdits(t, manifest, image, dst, env, volumes))
		t.Logf("pod identity: %d credential requests served (MinIO STS), %d refused", pi.served.Load(), pi.refused.Load())
		if pi.served.Load() < 4 || pi.refused.Load() != 0 {
			t.Errorf("pod identity served %d credential requests and refused %d; want one per pod (at least 4), none refused", pi.served.Load(), pi.refused.Load())
		}
		c.verifyMigrated(t, mi.endpoint, mi.rootUser, mi.rootPass, dst, repos)
	})
}

// jobEdits are the test's edits to the documented manifest: the image
// built here, bucket dst, the ECR stand-in's repositories of this test,
// slow enough (1 MiB/s per pod) to be killed mid-run; the servers are on
// the node's loopback, so host network and their endpoints; env (the
// container's environment) and podSpec (volumes) for the credentials.
func jobEdits(t *testing.T, manifest, image, dst, env, podSpec string) string {
	t.Helper()
	m := edit(t, manifest, "image: registry.example.com/s3snap:v1\n", "image: "+image+"\n"+env)
	m = edit(t, m, `"s3://my-images"]`, fmt.Sprintf(`"s3://%s", "--repo=^mig/", "--max-bandwidth=1MiB"]`, dst))
	m = edit(t, m, "      restartPolicy: Never", podSpec+"      hostNetwork: true\n      restartPolicy: Never")
	if !strings.Contains(m, `"ecr://123456789012.dkr.ecr.us-east-1.amazonaws.com"`) {
		t.Fatal("the manifest's source is not the ECR stand-in's registry")
	}
	return m
}

// runJob applies the Job, kills one of its pods mid-run and waits for it
// to complete with every index.
func (c *cluster) runJob(t *testing.T, ns, manifest string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "job.yaml")
	if err := os.WriteFile(path, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.kubectl(t, "-n", ns, "apply", "-f", path)
	victim := c.killRunningJobPod(t, ns)
	c.kubectl(t, "-n", ns, "wait", "--for=condition=Complete", "job/s3snap-migrate", "--timeout=300s")
	t.Logf("Indexed Job (4 shards, pod %s killed mid-run) complete in %.1fs", victim, time.Since(start).Seconds())
	var job struct {
		Status struct {
			Succeeded, Failed int
			CompletedIndexes  string
		}
	}
	if err := json.Unmarshal([]byte(c.kubectl(t, "-n", ns, "get", "job", "s3snap-migrate", "-o", "json")), &job); err != nil {
		t.Fatal(err)
	}
	if job.Status.Succeeded != 4 || job.Status.CompletedIndexes != "0-3" || job.Status.Failed < 1 {
		t.Errorf("job status: %d succeeded, indexes %q completed, %d failed; want 4, 0-3 and the killed pod failed", job.Status.Succeeded, job.Status.CompletedIndexes, job.Status.Failed)
	}
}

// verifyMigrated runs `s3snap verify` (no --shard) of the ECR stand-in's
// mig/ repositories against bucket on endpoint.
func (c *cluster) verifyMigrated(t *testing.T, endpoint, accessKey, secretKey, bucket string, images int) {
	t.Helper()
	tmp := t.TempDir()
	env := []string{"AWS_ACCESS_KEY_ID=" + accessKey, "AWS_SECRET_ACCESS_KEY=" + secretKey, "AWS_REGION=us-east-1",
		"AWS_EC2_METADATA_DISABLED=true", "AWS_PROFILE=", "AWS_CONFIG_FILE=" + tmp + "/none", "AWS_SHARED_CREDENTIALS_FILE=" + tmp + "/none"}
	out := runEnv(t, env, testenv.S3snapBinary(t), "--endpoint", endpoint, "verify", "-o", "json",
		"--ecr-endpoint", c.env["ECR_ENDPOINT"], "--repo", "^mig/", "ecr://"+c.ecrHost, "s3://"+bucket)
	var rep struct {
		Summary struct{ Images, OK, Failed int }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("s3snap verify -o json: %v\n%s", err, out)
	}
	if rep.Summary.Images != images || rep.Summary.OK != images || rep.Summary.Failed != 0 {
		t.Errorf("s3snap verify: %+v, want all %d images ok", rep.Summary, images)
	}
}

// killRunningJobPod deletes the first Job pod seen running for more than
// a second (so mid-copy: a shard with nothing to do is done by then) and
// returns its name.
func (c *cluster) killRunningJobPod(t *testing.T, ns string) string {
	t.Helper()
	seen := map[string]time.Time{}
	deadline := time.Now().Add(120 * time.Second)
	for time.Now().Before(deadline) {
		out := c.kubectl(t, "-n", ns, "get", "pods", "-l", "batch.kubernetes.io/job-name=s3snap-migrate",
			"-o", `jsonpath={range .items[*]}{.metadata.name} {.status.phase}{"\n"}{end}`)
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			name, phase, _ := strings.Cut(line, " ")
			if phase != "Running" {
				continue
			}
			if first, ok := seen[name]; !ok {
				seen[name] = time.Now()
			} else if time.Since(first) > time.Second {
				c.kubectl(t, "-n", ns, "delete", "pod", name, "--grace-period=1", "--wait=false")
				return name
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatal("no Job pod ran for a second in 120s")
	return ""
}
