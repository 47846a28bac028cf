package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Containerd is a private containerd instance a test started: its own root,
// state, socket and namespace, so tests never share images or snapshots.
type Containerd struct {
	*Process
	Dir       string
	Address   string
	Namespace string
	config    string
	args      []string // flags overriding the config's paths
	env       []string
	t         testing.TB
}

// ContainerdOptions adjust the instance's config.
type ContainerdOptions struct {
	// Extra is appended to config.toml (proxy_plugins, plugin settings).
	Extra string
	// CRI keeps the CRI plugin enabled; off by default to start faster.
	CRI bool
	// ConfigFile, if set, is a whole config.toml to run with instead of the
	// generated one (Extra and CRI are ignored); its root, state and grpc
	// address are overridden with the instance's own.
	ConfigFile string
}

// StartContainerd starts containerd 2.x from env.sh's cache. It needs root.
func StartContainerd(t testing.TB, opts ContainerdOptions) *Containerd {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "containerd needs root")
	}
	Bin(t, "containerd")
	Bin(t, "containerd-shim-runc-v2")
	Bin(t, "runc")
	// A short base dir: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeAll(dir) })
	disabled := []string{`"io.containerd.snapshotter.v1.btrfs"`, `"io.containerd.snapshotter.v1.zfs"`,
		`"io.containerd.snapshotter.v1.devmapper"`, `"io.containerd.snapshotter.v1.aufs"`,
		`"io.containerd.tracing.processor.v1.otlp"`, `"io.containerd.internal.v1.tracing"`}
	if !opts.CRI {
		disabled = append(disabled, `"io.containerd.grpc.v1.cri"`, `"io.containerd.cri.v1.runtime"`,
			`"io.containerd.cri.v1.images"`, `"io.containerd.podsandbox.controller.v1.podsandbox"`,
			`"io.containerd.sandbox.controller.v1.shim"`)
	}
	c := &Containerd{
		Dir:       dir,
		Address:   filepath.Join(dir, "c.sock"),
		Namespace: "s3snap-" + filepath.Base(dir),
	}
	// disabled_plugins must precede the first table or TOML files it under it.
	cfg := fmt.Sprintf(`version = 3
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
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), strings.Join(disabled, ", "),
		c.Address, c.Address+".ttrpc", opts.Extra)
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if opts.ConfigFile != "" {
		path = opts.ConfigFile
		c.args = []string{"--root", filepath.Join(dir, "root"), "--state", filepath.Join(dir, "state"), "--address", c.Address}
	}
	c.config, c.t = path, t
	c.env = []string{"PATH=" + BinDir() + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	c.start(t)
	t.Cleanup(func() { c.cleanupNamespace(Bin(t, "ctr")) })
	return c
}

func (c *Containerd) start(t testing.TB) {
	t.Helper()
	c.Process = Start(c.t, "containerd", c.env, Bin(t, "containerd"), append([]string{"--config", c.config}, c.args...)...)
	ctr := Bin(t, "ctr")
	WaitFor(t, c.Process, 30*time.Second, "containerd at "+c.Address, func() bool {
		_, err := RunErr(context.Background(), ctr, "--address", c.Address, "version")
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

// Ctr runs ctr against this instance and namespace, failing t on error.
func (c *Containerd) Ctr(t testing.TB, args ...string) string {
	t.Helper()
	return Run(t, Bin(t, "ctr"), append([]string{"--address", c.Address, "--namespace", c.Namespace}, args...)...)
}

// CtrErr runs ctr and returns its output and error.
func (c *Containerd) CtrErr(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return RunErr(context.Background(), Bin(t, "ctr"), append([]string{"--address", c.Address, "--namespace", c.Namespace}, args...)...)
}

// cleanupNamespace kills and removes this instance's tasks and containers, so
// shims (which live under the shared /run/containerd/s) don't outlive it.
func (c *Containerd) cleanupNamespace(ctr string) {
	base := []string{"--address", c.Address, "--namespace", c.Namespace}
	ctx := context.Background()
	out, _ := RunErr(ctx, ctr, append(base, "tasks", "ls", "-q")...)
	for _, id := range strings.Fields(out) {
		_, _ = RunErr(ctx, ctr, append(base, "tasks", "kill", "-s", "SIGKILL", id)...)
		time.Sleep(200 * time.Millisecond)
		_, _ = RunErr(ctx, ctr, append(base, "tasks", "delete", "-f", id)...)
	}
	out, _ = RunErr(ctx, ctr, append(base, "containers", "ls", "-q")...)
	for _, id := range strings.Fields(out) {
		_, _ = RunErr(ctx, ctr, append(base, "containers", "delete", id)...)
	}
}

// removeAll unmounts anything left mounted under dir, then removes it.
// RemoveAll unmounts anything left mounted under dir, then removes it.
func RemoveAll(dir string) { removeAll(dir) }

func removeAll(dir string) {
	_, _ = RunErr(context.Background(), "sh", "-c", fmt.Sprintf("grep -o ' %s[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l", dir))
	_ = os.RemoveAll(dir)
}
