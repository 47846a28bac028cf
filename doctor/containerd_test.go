package doctor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A drop-in named by imports can undo what install put in the main file;
// doctor reads the config as containerd does and says so.
func TestContainerdConfigImports(t *testing.T) {
	const good = `version = 3
imports = ["conf.d/*.toml"]
[proxy_plugins.s3snap]
  type = "snapshot"
  address = "/run/s3snap/s3snap.sock"
  [proxy_plugins.s3snap.exports]
    enable_remote_snapshot_annotations = "true"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "s3snap"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "/etc/containerd/certs.d"
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/amd64"
  snapshotter = "s3snap"
`
	for _, tc := range []struct {
		name   string
		dropIn string
		status Status
		detail string
	}{
		{"no drop-in", "", OK, "(version 3): s3snap registered"},
		{"drop-in keeps it", "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\nmax_concurrent_downloads = 3\n", OK, "and 1 imported file(s)"},
		{"drop-in overrides the snapshotter", "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\nsnapshotter = \"overlayfs\"\n", Fail,
			`the CRI's snapshotter is "overlayfs" (set by `},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := filepath.Join(dir, "config.toml")
			if err := os.WriteFile(cfg, []byte(good), 0o644); err != nil {
				t.Fatal(err)
			}
			if tc.dropIn != "" {
				if err := os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "conf.d", "99-node.toml"), []byte(tc.dropIn), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			r := &run{o: Options{ContainerdConfig: cfg}, report: &Report{Status: OK}}
			r.containerdConfig()
			c := r.report.Checks[0]
			if c.Status != tc.status || !strings.Contains(c.Detail, tc.detail) {
				t.Errorf("check = %+v, want %s with %q", c, tc.status, tc.detail)
			}
		})
	}
}
