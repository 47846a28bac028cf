package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/s3snap/s3snap/doctor"
	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/store"
	"github.com/s3snap/s3snap/systemd"
)

// install runs `s3snap install -o json` with args and returns its result.
func install(t *testing.T, args ...string) systemd.Result {
	t.Helper()
	out := testenv.Run(t, testenv.S3snapBinary(t), append([]string{"install", "-o", "json", "--binary", testenv.S3snapBinary(t)}, args...)...)
	var res systemd.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("install -o json: %v\n%s", err, out)
	}
	return res
}

// readTree returns every file under root by relative path.
func readTree(t *testing.T, root string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if fi.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			files[rel] = "-> " + target
			return err
		}
		b, err := os.ReadFile(p)
		files[rel] = fi.Mode().String() + string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// writeTreeFile writes path, creating its directories.
func writeTreeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// stockConfigs are containerd configs as nodes ship them: containerd 1.7's
// version 2 (the EKS AL2 shape), a 2.x version 3, and containerd 2.4's own
// default (version 4).
func stockConfigs(t *testing.T) map[string][]byte {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("..", "systemd", "testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	def := testenv.Run(t, testenv.Bin(t, "containerd"), "config", "default")
	return map[string][]byte{"1.7": read("containerd-1.7.toml"), "2.x": read("containerd-2.x.toml"), "2.4-default": []byte(def)}
}

// TestInstallUnitsVerify: the units s3snap install writes pass
// systemd-analyze verify, s3snap.service and containerd.service with
// s3snap's drop-in, in an image tree.
func TestInstallUnitsVerify(t *testing.T) {
	analyze := testenv.Bin(t, "systemd-analyze")
	root := t.TempDir()
	install(t, "--root", root, "--bucket", "images", "--registry", "123456789012.dkr.ecr.us-east-1.amazonaws.com", "--containerd-version", "2.4.2")
	// The image tree needs systemd's own units (targets) and containerd.
	if err := os.MkdirAll(filepath.Join(root, "usr/lib/systemd"), 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "cp", "-a", "/usr/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/"))
	unit, err := os.ReadFile("testdata/containerd.service")
	if err != nil {
		t.Fatal(err)
	}
	writeTreeFile(t, filepath.Join(root, "usr/lib/systemd/system/containerd.service"), unit)
	testenv.Run(t, "cp", testenv.Bin(t, "containerd"), filepath.Join(root, "usr/local/bin/containerd"))

	verify := func() (string, error) {
		// By name, so systemd loads each unit with its drop-ins from the root.
		cmd := exec.Command(analyze, "verify", "--root="+root, "s3snap.service", "containerd.service")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := verify(); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The check can fail: a bad setting in the drop-in is reported.
	dropIn := filepath.Join(root, systemd.DropInPath)
	good, _ := os.ReadFile(dropIn)
	writeTreeFile(t, dropIn, append(good, []byte("\n[Service]\nRestartSec=soon\n")...))
	if out, _ := verify(); !strings.Contains(out, "10-s3snap.conf") {
		t.Errorf("systemd-analyze verify did not flag a broken drop-in:\n%s", out)
	}
}

// TestInstallStockContainerdConfigs: merged into stock 1.7 and 2.x
// configs, the result runs the real containerd 2.4 with s3snap registered
// (ok) next to the CRI, and a second install is a byte-identical no-op.
// (TestInstalledNodePullsFromS3 shows the CRI then pulls through it.)
func TestInstallStockContainerdConfigs(t *testing.T) {
	for name, stock := range stockConfigs(t) {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			cfgPath := filepath.Join(root, systemd.ContainerdCfg)
			writeTreeFile(t, cfgPath, stock)
			args := []string{"--root", root, "--bucket", "images", "--prefix", "ecr",
				"--registry", "123456789012.dkr.ecr.us-east-1.amazonaws.com", "--registry", "public.ecr.aws"}
			if name == "1.7" {
				args = append(args, "--containerd-version", "1.7.27")
			} else {
				args = append(args, "--containerd-version", "2.4.2")
			}
			res := install(t, args...)
			if !res.Changed() {
				t.Fatal("first install changed nothing")
			}
			before := readTree(t, root)
			if again := install(t, args...); again.Changed() {
				t.Errorf("second install changed files: %+v", again.Changes)
			}
			after := readTree(t, root)
			if len(after) != len(before) {
				t.Errorf("second install added or removed files")
			}
			for k, v := range before {
				if after[k] != v {
					t.Errorf("second install changed %s", k)
				}
			}
			if b, _ := os.ReadFile(cfgPath + systemd.BackupSuffix); !bytes.Equal(b, stock) {
				t.Error("the original config was not backed up")
			}

			ctrd := testenv.StartContainerd(t, testenv.ContainerdOptions{ConfigFile: cfgPath})
			plugins := ctrd.Ctr(t, "plugins", "ls")
			for _, p := range [][2]string{{"io.containerd.snapshotter.v1", "s3snap"}, {"io.containerd.grpc.v1", "cri"}} {
				if !hasPlugin(plugins, p[0], p[1], "ok") {
					t.Errorf("ctr plugins ls does not list %s %s as ok:\n%s", p[0], p[1], plugins)
				}
			}
		})
	}
}

// hasPlugin reports whether `ctr plugins ls` lists typ/id with status.
func hasPlugin(ls, typ, id, status string) bool {
	for _, line := range strings.Split(ls, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == typ && f[1] == id && f[len(f)-1] == status {
			return true
		}
	}
	return false
}

// installedNode is a node set up only by `s3snap install`: the agent runs
// from the installed config, containerd from the merged config.toml, and
// hosts.toml files sit where config_path says.
type installedNode struct {
	e              *testenv.S3Env
	root, hostsDir string
	agent          *testenv.Agent
	ctrd           *testenv.Containerd
	reg            *testenv.Registry
	st             *store.Store
	bucket         string
}

// newInstalledNode installs s3snap into a root holding stock config
// ctrName ("1.7", "2.x", "2.4-default") and starts the agent and containerd
// version (testenv.Containerd2 or Containerd17) from what it wrote.
func newInstalledNode(t *testing.T, stock []byte, ctrName, version string) *installedNode {
	t.Helper()
	e := testenv.S3(t)
	n := &installedNode{e: e, root: t.TempDir(), reg: testenv.StartFSRegistry(t), bucket: e.NewBucket(t)}
	n.st = store.New(e.Client(t), n.bucket, store.WithPrefix("ecr"))
	state, err := os.MkdirTemp("", "node-") // short: socket paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testenv.RemoveAll(state) })
	// hosts.toml files are written below the root at their node path; the
	// node path is made to lead there, as it would on the booted image.
	n.hostsDir = filepath.Join(state, "certs.d")
	// The 1.7 config is installed as for a 1.7 node (version 2 keys only),
	// then run by containerd 2.4, which migrates it, as after an upgrade, or
	// by containerd 1.7 itself, whose binary in the root install asks for its
	// version, as on an EKS AL2 node.
	// Ports below 1024, as the defaults are: doctor warns about others.
	ports := privilegedAddrs(t, 2)
	args := []string{"--root", n.root, "--bucket", n.bucket, "--prefix", "ecr",
		"--registry", n.reg.Addr + "=http://" + n.reg.Addr, "--region", e.Region, "--endpoint", e.Endpoint,
		"--socket", filepath.Join(state, "run", "s3snap.sock"), "--state-dir", filepath.Join(state, "root"),
		"--mirror-address", ports[0], "--metrics-address", ports[1],
		"--hosts-dir", n.hostsDir}
	switch {
	case version == testenv.Containerd17:
		bin := filepath.Join(n.root, "usr/bin/containerd")
		if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(testenv.ContainerdBin(t, version, "containerd"), bin); err != nil {
			t.Fatal(err)
		}
	case ctrName == "1.7":
		args = append(args, "--containerd-version", "1.7.27")
	default:
		args = append(args, "--containerd-version", "2.4.2")
	}
	writeTreeFile(t, filepath.Join(n.root, systemd.ContainerdCfg), stock)
	res := install(t, args...)
	if version == testenv.Containerd17 && (res.ContainerdVersion != "1.7.29" || res.ConfigVersion != 2) {
		t.Fatalf("install on a containerd 1.7.29 root: containerd %q, config version %d; want 1.7.29 and 2", res.ContainerdVersion, res.ConfigVersion)
	}
	if err := os.Symlink(filepath.Join(n.root, n.hostsDir), n.hostsDir); err != nil {
		t.Fatal(err)
	}
	n.agent = testenv.StartAgent(t, testenv.AgentOptions{S3: e, ConfigPath: filepath.Join(n.root, "etc/s3snap/config.toml")})
	n.ctrd = testenv.StartContainerd(t, testenv.ContainerdOptions{Version: version, ConfigFile: filepath.Join(n.root, systemd.ContainerdCfg)})
	return n
}

// doctor runs `s3snap doctor -o json` against the node with the test
// server's credentials (env overrides them) and returns its report and
// exit code.
func (n *installedNode) doctor(t *testing.T, env []string) (doctor.Report, int) {
	t.Helper()
	cmd := exec.Command(testenv.S3snapBinary(t), "doctor", "-o", "json",
		"--config", filepath.Join(n.root, "etc/s3snap/config.toml"),
		"--containerd-config", filepath.Join(n.root, systemd.ContainerdCfg),
		"--containerd-address", n.ctrd.Address, "--timeout", "5s")
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID="+n.e.AccessKey, "AWS_SECRET_ACCESS_KEY="+n.e.SecretKey,
		"AWS_EC2_METADATA_DISABLED=true", "AWS_PROFILE=", "AWS_ENDPOINT_URL=")
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := cmd.ProcessState.ExitCode()
	var rep doctor.Report
	if jerr := json.Unmarshal(stdout.Bytes(), &rep); jerr != nil {
		t.Fatalf("doctor -o json (exit %d, %v): %v\n%s\n%s", code, err, jerr, stdout.String(), stderr.String())
	}
	return rep, code
}

// TestInstalledNodePullsFromS3: the installer's output alone (no
// hand-written config), merged into each stock config, makes containerd
// pull an image's layers from S3 through the CRI as the kubelet does, and
// run it; s3snap doctor calls that node healthy. Every stock config runs
// on containerd 2.4; the 1.7 one also on containerd 1.7 (an EKS AL2 node).
func TestInstalledNodePullsFromS3(t *testing.T) {
	testenv.Bin(t, "crictl")
	stocks := stockConfigs(t)
	type node struct{ config, version string }
	nodes := []node{{"1.7", testenv.Containerd17}}
	for name := range stocks {
		nodes = append(nodes, node{name, testenv.Containerd2})
	}
	for _, nd := range nodes {
		t.Run(nd.config+"/containerd-"+nd.version, func(t *testing.T) {
			n := newInstalledNode(t, stocks[nd.config], nd.config, nd.version)
			files := map[string][]byte{"/data/x": pseudoRandom(51, 2<<20)}
			im := testenv.RunnableImage(t, []testenv.File{{Name: "data/x", Data: files["/data/x"]}}, []testenv.File{{Name: "etc/y", Data: []byte("y")}})
			testenv.PutImage(t, n.st, "team/app", im)
			if err := n.st.Tag(context.Background(), "team/app", "v1", im.Digest); err != nil {
				t.Fatal(err)
			}
			testenv.PushToRegistry(t, n.reg.Addr, "team/app", "v1", im)
			ref := n.reg.Addr + "/team/app:v1"

			n.ctrd.Crictl(t, "pull", ref)
			if got := n.agent.Metric(t, "s3snap_snapshotter_layers_provided_total"); int(got) != len(im.Layers) {
				t.Errorf("snapshotter provided %v layers from S3, want %d", got, len(im.Layers))
			}
			if got := registryRequests(t, n.reg, "/v2/team/app/blobs/"); got != 0 {
				t.Errorf("the registry served %d blobs, want 0", got)
			}
			out := n.ctrd.CtrNS(t, testenv.CRINamespace, "run", "--rm", "--snapshotter", "s3snap", ref, "installed-"+n.ctrd.Namespace, "/hello", "/data/x")
			if !strings.Contains(out, hashLine("/data/x", files["/data/x"])) {
				t.Errorf("container output:\n%s", out)
			}
			rep, code := n.doctor(t, nil)
			if code != 0 || rep.Status != doctor.OK {
				t.Errorf("doctor on a working node: exit %d, %s", code, describe(rep))
			}
		})
	}
}

// TestDoctorNamesBrokenPiece: on an installed node, s3snap doctor is
// healthy, and names the broken piece when the bucket is unreadable, the
// snapshot annotations are disabled, or the agent is stopped.
func TestDoctorNamesBrokenPiece(t *testing.T) {
	n := newInstalledNode(t, stockConfigs(t)["2.x"], "2.x", testenv.Containerd2)
	im := testenv.RunnableImage(t, []testenv.File{{Name: "data/d", Data: pseudoRandom(61, 1<<20)}})
	testenv.PutImage(t, n.st, "team/doc", im)
	if err := n.st.Tag(context.Background(), "team/doc", "v1", im.Digest); err != nil {
		t.Fatal(err)
	}
	rep, code := n.doctor(t, nil)
	if code != 0 || rep.Status != doctor.OK {
		t.Fatalf("healthy node: exit %d, %s", code, describe(rep))
	}
	if c := find(rep, "blob fetch"); !strings.Contains(c.Detail, "digest verified") {
		t.Errorf("blob fetch: %+v", c)
	}

	t.Run("bucket unreadable", func(t *testing.T) {
		rep, code := n.doctor(t, []string{"AWS_SECRET_ACCESS_KEY=not-the-secret"})
		if code != 1 || find(rep, "bucket s3://"+n.bucket+"/ecr").Status != doctor.Fail {
			t.Errorf("exit %d, %s", code, describe(rep))
		}
		if find(rep, "containerd config").Status != doctor.OK || find(rep, "agent socket").Status != doctor.OK {
			t.Errorf("other checks failed too: %s", describe(rep))
		}
	})
	t.Run("annotations disabled", func(t *testing.T) {
		cfg := filepath.Join(n.root, systemd.ContainerdCfg)
		good, err := os.ReadFile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { writeTreeFile(t, cfg, good) })
		bad := strings.Replace(string(good), "enable_remote_snapshot_annotations = 'true'", "enable_remote_snapshot_annotations = 'false'", 1)
		if bad == string(good) {
			t.Fatalf("config has no enable_remote_snapshot_annotations to break:\n%s", good)
		}
		writeTreeFile(t, cfg, []byte(bad))
		rep, code := n.doctor(t, nil)
		c := find(rep, "containerd config")
		if code != 1 || c.Status != doctor.Fail || !strings.Contains(c.Detail, "annotations") {
			t.Errorf("exit %d, %s", code, describe(rep))
		}
	})
	t.Run("agent stopped", func(t *testing.T) {
		n.agent.Stop()
		rep, code := n.doctor(t, nil)
		if code != 1 {
			t.Errorf("exit %d", code)
		}
		for _, name := range []string{"agent socket", "mirror", "agent health"} {
			if c := find(rep, name); c.Status != doctor.Fail || c.Fix == "" {
				t.Errorf("%s: %+v", name, c)
			}
		}
		if c := find(rep, "bucket s3://"+n.bucket+"/ecr"); c.Status != doctor.OK {
			t.Errorf("bucket check failed with the agent stopped: %+v", c)
		}
	})
}

func find(rep doctor.Report, name string) doctor.Check {
	for _, c := range rep.Checks {
		if c.Name == name {
			return c
		}
	}
	return doctor.Check{Name: name, Status: "missing"}
}

func describe(rep doctor.Report) string {
	var b strings.Builder
	for _, c := range rep.Checks {
		fmt.Fprintf(&b, "\n  %s %s: %s", c.Status, c.Name, c.Detail)
	}
	return b.String()
}
