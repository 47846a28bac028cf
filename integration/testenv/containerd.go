package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Containerd versions StartContainerd runs (ContainerdOptions.Version).
const (
	// Containerd2 is containerd 2.4.2 (env.sh's CONTAINERD_VERSION), the
	// default: config version 3, ctr pulls through the transfer service.
	Containerd2 = "2.4"
	// Containerd17 is containerd 1.7.29 (env.sh's CONTAINERD17_VERSION), as
	// on EKS AL2 and older AL2023 nodes: config version 2, one CRI plugin
	// ("io.containerd.grpc.v1.cri"), and only the CRI passes the
	// remote-snapshot layer labels to the agent (`ctr images pull` unpacks
	// without them, a plain pull through the snapshotter).
	Containerd17 = "1.7"
)

// ContainerdVersions lists the versions StartContainerd runs, the default
// first. A test of containerd-version-specific behaviour runs once per
// version:
//
//	for _, v := range testenv.ContainerdVersions() {
//		t.Run("containerd-"+v, func(t *testing.T) {
//			a := testenv.StartAgent(t, testenv.AgentOptions{...})
//			c := testenv.StartContainerd(t, testenv.ContainerdOptions{
//				Version: v, CRI: true, Extra: a.ContainerdConfigFor(v, host)})
//			c.Crictl(t, "pull", ref) // on 1.7 only the CRI triggers the agent
//		})
//	}
//
// A missing 1.7 build skips on a laptop and fails under CI=true.
func ContainerdVersions() []string { return []string{Containerd2, Containerd17} }

// Containerd is a private containerd instance a test started: its own root,
// state, socket and namespace, so tests never share images or snapshots.
type Containerd struct {
	*Process
	Version   string // Containerd2 or Containerd17
	Dir       string
	Address   string
	Namespace string
	CtrBin    string // the ctr of this containerd's version
	cleaned   bool
	config    string
	args      []string // flags overriding the config's paths
	env       []string
	bin       string // the containerd binary
	t         testing.TB
}

// ContainerdOptions adjust the instance's config.
type ContainerdOptions struct {
	// Version is Containerd2 (the default, "") or Containerd17.
	Version string
	// Extra is appended to config.toml (proxy_plugins, plugin settings).
	// It must be in the version's config format: for an agent, pass
	// Agent.ContainerdConfigFor(Version, host).
	Extra string
	// CRI keeps the CRI plugin enabled; off by default to start faster.
	CRI bool
	// ConfigFile, if set, is a whole config.toml to run with instead of the
	// generated one (Extra and CRI are ignored); its root, state and grpc
	// address are overridden with the instance's own.
	ConfigFile string
	// Env is added to containerd's environment (CONTAINERD_DISABLE_IGZIP=1,
	// say, for a node without ISA-L).
	Env []string
}

// ContainerdBin returns the path of binary name (containerd, ctr,
// containerd-shim-runc-v2) of containerd version, from env.sh's cache:
// 2.4's in BinDir, 1.7's in BinDir/containerd-1.7 (its shim has the same
// name as 2.4's).
func ContainerdBin(t testing.TB, version, name string) string {
	t.Helper()
	switch version {
	case "", Containerd2:
		return Bin(t, name)
	case Containerd17:
		p := filepath.Join(BinDir(), "containerd-1.7", name)
		if _, err := os.Stat(p); err != nil {
			Unavailable(t, "containerd 1.7 binary %s not found in %s", name, filepath.Dir(p))
		}
		return p
	}
	t.Fatalf("containerd version %q: want one of %v", version, ContainerdVersions())
	return ""
}

// StartContainerd starts containerd (2.4 by default, or opts.Version) from
// env.sh's cache. It needs root.
func StartContainerd(t testing.TB, opts ContainerdOptions) *Containerd {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "containerd needs root")
	}
	if opts.Version == "" {
		opts.Version = Containerd2
	}
	c := &Containerd{
		Version: opts.Version,
		bin:     ContainerdBin(t, opts.Version, "containerd"),
		CtrBin:  ContainerdBin(t, opts.Version, "ctr"),
	}
	shim := ContainerdBin(t, opts.Version, "containerd-shim-runc-v2")
	Bin(t, "runc")
	if opts.Version == Containerd17 && opts.ConfigFile == "" && strings.Contains(opts.Extra, "io.containerd.cri.v1.") {
		t.Fatal("StartContainerd: Extra is a containerd 2.x snippet; containerd 1.7 needs Agent.ContainerdConfigFor(testenv.Containerd17, host)")
	}
	// A short base dir: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeAll(dir) })
	c.Dir = dir
	c.Address = filepath.Join(dir, "c.sock")
	c.Namespace = "s3snap-" + filepath.Base(dir)
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(containerdConfig(c, opts)), 0o600); err != nil {
		t.Fatal(err)
	}
	if opts.ConfigFile != "" {
		path = opts.ConfigFile
		c.args = []string{"--root", filepath.Join(dir, "root"), "--state", filepath.Join(dir, "state"), "--address", c.Address}
	}
	c.config, c.t = path, t
	// containerd finds its shim on PATH: this version's first.
	c.env = append([]string{"PATH=" + filepath.Dir(shim) + ":" + BinDir() + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, opts.Env...)
	c.start(t)
	return c
}

// containerdConfig is the generated config.toml: version 3 for 2.x,
// version 2 for 1.7 (whose CRI is the single io.containerd.grpc.v1.cri).
func containerdConfig(c *Containerd, opts ContainerdOptions) string {
	disabled := []string{`"io.containerd.snapshotter.v1.btrfs"`, `"io.containerd.snapshotter.v1.zfs"`,
		`"io.containerd.snapshotter.v1.devmapper"`, `"io.containerd.snapshotter.v1.aufs"`,
		`"io.containerd.tracing.processor.v1.otlp"`, `"io.containerd.internal.v1.tracing"`}
	if !opts.CRI {
		disabled = append(disabled, `"io.containerd.grpc.v1.cri"`)
		if opts.Version != Containerd17 {
			disabled = append(disabled, `"io.containerd.cri.v1.runtime"`, `"io.containerd.cri.v1.images"`,
				`"io.containerd.podsandbox.controller.v1.podsandbox"`, `"io.containerd.sandbox.controller.v1.shim"`)
		}
	}
	version := 3
	if opts.Version == Containerd17 {
		version = 2
	}
	// disabled_plugins must precede the first table or TOML files it under it.
	return fmt.Sprintf(`version = %d
root = %q
state = %q
disabled_plugins = [%s]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  level = "info"

%s
`, version, filepath.Join(c.Dir, "root"), filepath.Join(c.Dir, "state"), strings.Join(disabled, ", "),
		c.Address, c.Address+".ttrpc", opts.Extra)
}

func (c *Containerd) start(t testing.TB) {
	t.Helper()
	c.Process = Start(c.t, "containerd", c.env, c.bin, append([]string{"--config", c.config}, c.args...)...)
	// Registered after Start's stop, so it runs first, while this process
	// (the last one, after a Restart) serves.
	c.t.Cleanup(c.cleanupNamespace)
	WaitFor(t, c.Process, 30*time.Second, "containerd "+c.Version+" at "+c.Address, func() bool {
		_, err := RunErr(context.Background(), c.CtrBin, "--address", c.Address, "version")
		return err == nil
	})
}

// Restart stops containerd (SIGTERM) and starts it again on the same
// root, state and config.
func (c *Containerd) Restart(t testing.TB) {
	t.Helper()
	c.Stop()
	c.start(t)
}

// Ctr runs this version's ctr against this instance and namespace, failing
// t on error.
func (c *Containerd) Ctr(t testing.TB, args ...string) string {
	t.Helper()
	return c.CtrNS(t, c.Namespace, args...)
}

// CtrErr runs ctr and returns its output and error.
func (c *Containerd) CtrErr(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return RunErr(context.Background(), c.CtrBin, append([]string{"--address", c.Address, "--namespace", c.Namespace}, args...)...)
}

// CRINamespace is the namespace the CRI keeps its images and containers in.
const CRINamespace = "k8s.io"

// CtrNS runs ctr in namespace ns (CRINamespace for what the CRI pulled),
// failing t on error.
func (c *Containerd) CtrNS(t testing.TB, ns string, args ...string) string {
	t.Helper()
	return Run(t, c.CtrBin, append([]string{"--address", c.Address, "--namespace", ns}, args...)...)
}

// Crictl runs crictl against this instance's CRI (ContainerdOptions.CRI
// must be set), failing t on error.
func (c *Containerd) Crictl(t testing.TB, args ...string) string {
	t.Helper()
	endpoint := "unix://" + c.Address
	return Run(t, Bin(t, "crictl"), append([]string{"--runtime-endpoint", endpoint, "--image-endpoint", endpoint, "--timeout", "60s"}, args...)...)
}

// cleanupNamespace kills and removes this instance's tasks and containers
// (its own namespace's and the CRI's), so shims (which live under the
// shared /run/containerd/s) don't outlive it. It runs once, while
// containerd is up: 1.7's ctr waits 10s to dial a stopped one.
func (c *Containerd) cleanupNamespace() {
	if c.cleaned || c.Exited() {
		return
	}
	c.cleaned = true
	for _, ns := range []string{c.Namespace, CRINamespace} {
		c.cleanup(ns)
	}
}

func (c *Containerd) cleanup(ns string) {
	ctx := context.Background()
	ctr := func(args ...string) string {
		// stdout only: 2.x's ctr warns on stderr (cgroup v1 is deprecated),
		// and those words are no IDs.
		out, err := exec.CommandContext(ctx, c.CtrBin, append([]string{"--address", c.Address, "--namespace", ns}, args...)...).Output()
		if err != nil {
			return ""
		}
		return string(out)
	}
	for _, id := range strings.Fields(ctr("tasks", "ls", "-q")) {
		ctr("tasks", "kill", "-s", "SIGKILL", id)
		time.Sleep(200 * time.Millisecond)
		ctr("tasks", "delete", "-f", id)
	}
	for _, id := range strings.Fields(ctr("containers", "ls", "-q")) {
		ctr("containers", "delete", id)
	}
}

// removeAll unmounts anything left mounted under dir, then removes it.
// RemoveAll unmounts anything left mounted under dir, then removes it.
func RemoveAll(dir string) { removeAll(dir) }

func removeAll(dir string) {
	_, _ = RunErr(context.Background(), "sh", "-c", fmt.Sprintf("grep -o ' %s[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l", dir))
	_ = os.RemoveAll(dir)
}
