package k8s

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/store"
)

// cluster is the running cluster, as k8s.sh's env file describes it.
type cluster struct {
	env         map[string]string
	dir         string
	kubectlBin  string
	kubeconfig  string
	bucket      string
	prefix      string
	registry    string // the ECR stand-in's registry, 127.0.0.1:port
	registryLog string
	ecrHost     string // the name pods use: ACCOUNT.dkr.ecr.REGION.amazonaws.com
	agent       *testenv.Agent
	s3          *testenv.S3Env
	startTime   time.Duration
}

var up struct {
	once    sync.Once
	c       *cluster
	err     error
	missing string // a binary or server the cluster needs is absent
	dir     string // set once the cluster is up: TestMain takes it down
	lock    *os.File
}

func TestMain(m *testing.M) {
	code := m.Run()
	if up.dir != "" {
		if out, err := k8sScript(up.dir, "down", "--purge"); err != nil {
			fmt.Fprintf(os.Stderr, "k8s.sh down: %v\n%s", err, out)
			code = 1
		}
	}
	os.Exit(code)
}

func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Join(wd, "..", "..")
}

func k8sScript(dir string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(repoRoot(), "integration", "k8s.sh"), args...)
	cmd.Env = append(os.Environ(), "S3SNAP_K8S_DIR="+dir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// k8sBinDir is where `k8s.sh install` puts the cluster's binaries.
func k8sBinDir() (string, error) {
	b, err := os.ReadFile(filepath.Join(repoRoot(), "integration", "k8s.sh"))
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile(`(?m)^K8S_VERSION=(\S+)$`).FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("k8s.sh names no K8S_VERSION")
	}
	return filepath.Join(testenv.BinDir(), "k8s-"+string(m[1])), nil
}

// startCluster runs `k8s.sh up` into a fresh directory.
func startCluster() (*cluster, error) {
	if os.Geteuid() != 0 {
		up.missing = "the node (containerd, kubelet) needs root"
		return nil, nil
	}
	bin, err := k8sBinDir()
	if err != nil {
		return nil, err
	}
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl", "cni/bridge"} {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			up.missing = fmt.Sprintf("%s not built (integration/k8s.sh install)", filepath.Join(bin, name))
			return nil, nil
		}
	}
	state := os.Getenv("S3SNAP_STATE")
	if state == "" {
		state = "/tmp/s3snap-env"
	}
	if _, err := os.Stat(filepath.Join(state, "env")); err != nil {
		up.missing = "integration/env.sh up has not run"
		return nil, nil
	}
	// A cluster already up (k8s.sh up with S3SNAP_K8S_DIR set) is used and
	// left running: quick turns while working on these tests.
	dir := os.Getenv("S3SNAP_K8S_DIR")
	start := time.Now()
	if dir == "" {
		// One cluster per machine (kubelet's cgroups, the pods' bridge): a
		// second `go test` run waits here for the first to finish. The lock
		// goes with the test binary.
		lock, err := os.OpenFile(filepath.Join(os.TempDir(), "s3snap-k8s.lock"), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, err
		}
		if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
			return nil, fmt.Errorf("lock %s: %w", lock.Name(), err)
		}
		up.lock = lock
		// Holding the lock, any other cluster directory is a run that died
		// (a test timeout kills the binary before TestMain's cleanup).
		stale, _ := filepath.Glob(filepath.Join(os.TempDir(), "k8s-*", "kubeconfig"))
		for _, kc := range stale {
			if out, err := k8sScript(filepath.Dir(kc), "down", "--purge"); err != nil {
				return nil, fmt.Errorf("k8s.sh down of a stale cluster in %s: %v\n%s", filepath.Dir(kc), err, out)
			}
		}
		// Short: unix socket paths are limited to 108 bytes.
		if dir, err = os.MkdirTemp("", "k8s-"); err != nil {
			return nil, err
		}
		if out, err := k8sScript(dir, "up"); err != nil {
			// Whatever did start is stopped again.
			down, _ := k8sScript(dir, "down", "--purge")
			return nil, fmt.Errorf("k8s.sh up: %v\n%s\n%s", err, out, down)
		}
		up.dir = dir
	}
	c := &cluster{dir: dir, env: map[string]string{}, startTime: time.Since(start)}
	f, err := os.Open(filepath.Join(dir, "env"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "export "), "=")
		if ok {
			c.env[k] = v
		}
	}
	c.kubectlBin = filepath.Join(c.env["S3SNAP_K8S_BIN"], "kubectl")
	c.kubeconfig = c.env["KUBECONFIG"]
	c.bucket, c.prefix = c.env["S3SNAP_K8S_BUCKET"], c.env["S3SNAP_K8S_PREFIX"]
	c.registry, c.registryLog = c.env["S3SNAP_K8S_REGISTRY"], c.env["S3SNAP_K8S_REGISTRY_LOG"]
	c.ecrHost = c.env["ECR_HOST"]
	c.agent = &testenv.Agent{MetricsAddr: c.env["S3SNAP_K8S_AGENT_METRICS"]}
	for _, k := range []string{"S3SNAP_K8S_BIN", "KUBECONFIG", "S3SNAP_K8S_BUCKET", "S3SNAP_K8S_REGISTRY", "ECR_HOST", "ECR_ENDPOINT", "S3SNAP_K8S_AGENT_METRICS"} {
		if c.env[k] == "" {
			return nil, fmt.Errorf("k8s.sh's env file has no %s", k)
		}
	}
	return c, nil
}

// theCluster returns the cluster, starting it on first use; a missing
// piece skips t (fails it under CI=true).
func theCluster(t *testing.T) *cluster {
	t.Helper()
	up.once.Do(func() {
		up.c, up.err = startCluster()
		if up.err == nil && up.c != nil {
			fmt.Fprintf(os.Stderr, "k8s: cluster up in %.1fs (%s)\n", up.c.startTime.Seconds(), up.c.dir)
		}
	})
	if up.missing != "" {
		testenv.Unavailable(t, "%s", up.missing)
	}
	if up.err != nil {
		t.Fatal(up.err)
	}
	up.c.s3 = testenv.S3(t)
	return up.c
}

// kubectl runs kubectl against the cluster, failing t on error.
func (c *cluster) kubectl(t testing.TB, args ...string) string {
	t.Helper()
	return testenv.Run(t, c.kubectlBin, append([]string{"--kubeconfig", c.kubeconfig}, args...)...)
}

func (c *cluster) kubectlErr(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return testenv.RunErr(context.Background(), c.kubectlBin, append([]string{"--kubeconfig", c.kubeconfig}, args...)...)
}

// apply applies manifest YAML.
func (c *cluster) apply(t testing.TB, manifest string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(path, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	c.kubectl(t, "apply", "-f", path)
}

// namespace creates a namespace for t, deleted (with its pods) when t ends.
func (c *cluster) namespace(t *testing.T) string {
	t.Helper()
	ns := strings.ToLower(regexp.MustCompile(`[^a-zA-Z0-9]+`).ReplaceAllString(t.Name(), "-"))
	ns = strings.Trim(ns, "-")
	if len(ns) > 50 {
		ns = ns[len(ns)-50:]
	}
	ns = strings.Trim(ns, "-")
	c.kubectl(t, "create", "namespace", ns)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := c.kubectlErr(t, "-n", ns, "describe", "pods")
			t.Logf("pods in %s:\n%s", ns, lastLines(out, 60))
			out, _ = c.kubectlErr(t, "-n", ns, "get", "events", "--sort-by=.lastTimestamp")
			t.Logf("events in %s:\n%s", ns, lastLines(out, 30))
		}
		if out, err := c.kubectlErr(t, "delete", "namespace", ns, "--timeout=90s"); err != nil {
			t.Errorf("delete namespace %s: %v\n%s", ns, err, out)
		}
	})
	return ns
}

// store is the bucket's store, as the agent reads it.
func (c *cluster) store(t testing.TB) *store.Store {
	t.Helper()
	return store.New(c.s3.Client(t), c.bucket, store.WithPrefix(c.prefix))
}

// registryBlobGETs counts the blob requests containerd made to the ECR
// stand-in's registry for repo.
func (c *cluster) registryBlobGETs(t testing.TB, repo string) int {
	t.Helper()
	b, err := os.ReadFile(c.registryLog)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		// Access log: 127.0.0.1 - - [date] "GET /v2/... HTTP/1.1" 200 182 "" "containerd/2.4.2"
		if strings.Contains(line, `"GET /v2/`+repo+`/blobs/`) && strings.Contains(line, `"containerd/`) {
			n++
		}
	}
	return n
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

var execCommand = exec.Command
