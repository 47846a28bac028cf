package systemd

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	agentconfig "github.com/s3snap/s3snap/agent/config"
)

// modeOwner returns path's permission bits and owner.
func modeOwner(t *testing.T, path string) (os.FileMode, uint32, uint32) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fi.Mode().Perm(), st.Uid, st.Gid
}

// TestInstallKeepsModeAndOwner: containerd's config.toml and a hosts.toml
// that install rewrites keep their mode (0600 stays 0600, 0640 stays 0640)
// and, as root, their owner; so does the backup of the original and the
// file uninstall writes back. A config.toml install creates is 0600.
func TestInstallKeepsModeAndOwner(t *testing.T) {
	const host = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	if os.Geteuid() == 0 {
		uid, gid = 1234, 5678 // root can give files away: the owner must come back too
	}
	for _, mode := range []os.FileMode{0o600, 0o640, 0o644} {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := context.Background()
			root := t.TempDir()
			cfg := filepath.Join(root, ContainerdCfg)
			hosts := filepath.Join(root, agentconfig.HostsTOMLPath(agentconfig.DefaultHostsDir, host))
			for path, data := range map[string][]byte{cfg: fixture(t, "containerd-2.x.toml"), hosts: []byte("server = \"https://" + host + "\"\n")} {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, data, mode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, mode); err != nil { // past the umask
					t.Fatal(err)
				}
				if err := os.Chown(path, int(uid), int(gid)); err != nil {
					t.Fatal(err)
				}
			}
			check := func(when string, paths ...string) {
				t.Helper()
				for _, p := range paths {
					if m, u, g := modeOwner(t, p); m != mode || u != uid || g != gid {
						t.Errorf("%s: %s is %04o %d:%d, want %04o %d:%d", when, p, m, u, g, mode, uid, gid)
					}
				}
			}
			before, _ := os.ReadFile(cfg)
			o := testOptions(t, root, "2.4.2")
			if _, err := Install(ctx, o); err != nil {
				t.Fatal(err)
			}
			if after, _ := os.ReadFile(cfg); bytes.Equal(after, before) {
				t.Fatal("install did not rewrite config.toml")
			}
			check("after install", cfg, hosts, cfg+BackupSuffix, hosts+BackupSuffix)
			res, err := Install(ctx, o)
			if err != nil {
				t.Fatal(err)
			}
			if res.Changed() {
				t.Errorf("second install changed files: %+v", res.Changes)
			}
			if _, err := Uninstall(ctx, o); err != nil {
				t.Fatal(err)
			}
			check("after uninstall", cfg, hosts)
		})
	}

	t.Run("new config.toml", func(t *testing.T) {
		root := t.TempDir()
		if _, err := Install(context.Background(), testOptions(t, root, "2.4.2")); err != nil {
			t.Fatal(err)
		}
		for path, want := range map[string]os.FileMode{
			ContainerdCfg: 0o600, agentconfig.DefaultConfigPath: 0o600, BinaryPath: 0o755, UnitPath: 0o644,
			agentconfig.HostsTOMLPath(agentconfig.DefaultHostsDir, host): 0o644,
		} {
			if m, _, _ := modeOwner(t, filepath.Join(root, path)); m != want {
				t.Errorf("new %s is %04o, want %04o", path, m, want)
			}
		}
	})
}
