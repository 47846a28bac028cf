package systemd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	agentconfig "github.com/s3snap/s3snap/agent/config"
)

// writeTree writes files (node path -> content) under root.
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, s := range files {
		host := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(host, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestLoadContainerdImports(t *testing.T) {
	const main = "/etc/containerd/config.toml"
	v3 := func(snap string) string {
		return "version = 3\n[plugins.'io.containerd.cri.v1.images']\nsnapshotter = '" + snap + "'\n"
	}
	for _, tc := range []struct {
		name    string
		files   map[string]string
		key     []string
		want    any
		setBy   string
		imports int
		err     error
		opts    []LoadOption
	}{
		{
			name: "a drop-in overrides the snapshotter",
			files: map[string]string{
				main:                                "imports = ['/etc/containerd/conf.d/*.toml']\n" + v3("s3snap"),
				"/etc/containerd/conf.d/10-ov.toml": v3("overlayfs"),
			},
			key: CRISnapshotterPath(3), want: "overlayfs", setBy: "/etc/containerd/conf.d/10-ov.toml", imports: 1,
		},
		{
			name: "later files win, relative imports",
			files: map[string]string{
				main:                               "imports = ['conf.d/*.toml']\n" + v3("overlayfs"),
				"/etc/containerd/conf.d/10-a.toml": v3("native"),
				"/etc/containerd/conf.d/20-b.toml": v3("s3snap"),
			},
			key: CRISnapshotterPath(3), want: "s3snap", setBy: "/etc/containerd/conf.d/20-b.toml", imports: 2,
		},
		{
			name: "tables merge key by key",
			files: map[string]string{
				main:              "version = 3\nimports = ['/etc/extra.toml']\n" + "[plugins.'io.containerd.cri.v1.images']\nsnapshotter = 's3snap'\ndisable_snapshot_annotations = false\n",
				"/etc/extra.toml": "version = 3\n[plugins.'io.containerd.cri.v1.images']\nmax_concurrent_downloads = 3\n",
			},
			key: CRISnapshotterPath(3), want: "s3snap", setBy: main, imports: 1,
		},
		{
			name: "version 2",
			files: map[string]string{
				main:             "version = 2\nimports = ['/etc/ctr2.toml']\n[plugins.'io.containerd.grpc.v1.cri'.containerd]\nsnapshotter = 's3snap'\n",
				"/etc/ctr2.toml": "version = 2\n[plugins.'io.containerd.grpc.v1.cri'.containerd]\nsnapshotter = 'overlayfs'\n",
			},
			key: CRISnapshotterPath(2), want: "overlayfs", setBy: "/etc/ctr2.toml", imports: 1,
		},
		{
			name: "a proxy plugin is replaced whole",
			files: map[string]string{
				main:          "version = 3\nimports = ['/etc/p.toml']\n[proxy_plugins.s3snap]\ntype = 'snapshot'\naddress = '/run/s3snap/s3snap.sock'\n[proxy_plugins.s3snap.exports]\nroot = '/var/lib/s3snap'\n",
				"/etc/p.toml": "version = 3\n[proxy_plugins.s3snap]\naddress = '/elsewhere.sock'\n",
			},
			key: []string{"proxy_plugins", "s3snap", "exports"}, want: nil, setBy: "/etc/p.toml", imports: 1,
		},
		{
			name: "an import cycle ends",
			files: map[string]string{
				main:          "version = 3\nimports = ['/etc/a.toml']\n",
				"/etc/a.toml": "version = 3\nimports = ['/etc/containerd/config.toml', '/etc/a.toml']\n" + "[plugins.'io.containerd.cri.v1.images']\nsnapshotter = 's3snap'\n",
			},
			key: CRISnapshotterPath(3), want: "s3snap", setBy: "/etc/a.toml", imports: 1,
		},
		{
			// containerd 1.x merges imports per plugin: a drop-in that
			// only sets the CRI's registry replaces its whole table, and
			// with it the snapshotter (containerd/containerd#5837).
			name: "containerd 1.x: a plugin's table replaced whole",
			files: map[string]string{
				main:            "version = 2\nimports = ['/etc/reg.toml']\n[plugins.'io.containerd.grpc.v1.cri'.containerd]\nsnapshotter = 's3snap'\n",
				"/etc/reg.toml": "version = 2\n[plugins.'io.containerd.grpc.v1.cri'.registry]\nconfig_path = '/etc/containerd/certs.d'\n",
			},
			key: CRISnapshotterPath(2), want: nil, setBy: "/etc/reg.toml", imports: 1,
		},
		{
			name: "containerd 2.x reading a version 2 config merges deeper",
			files: map[string]string{
				main:            "version = 2\nimports = ['/etc/reg.toml']\n[plugins.'io.containerd.grpc.v1.cri'.containerd]\nsnapshotter = 's3snap'\n",
				"/etc/reg.toml": "version = 2\n[plugins.'io.containerd.grpc.v1.cri'.registry]\nconfig_path = '/etc/containerd/certs.d'\n",
			},
			key: CRISnapshotterPath(2), want: "s3snap", setBy: main, imports: 1, opts: []LoadOption{WithDaemonMajor(2)},
		},
		{
			name:  "a missing import is an error, as in containerd",
			files: map[string]string{main: "version = 3\nimports = ['/etc/none.toml']\n"},
			err:   ErrInvalid,
		},
		{
			name:  "imports not a list",
			files: map[string]string{main: "version = 3\nimports = 'x'\n"},
			err:   ErrInvalid,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, tc.files)
			e, err := LoadContainerd(root, main, []byte(tc.files[main]), tc.opts...)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := e.Lookup(tc.key...); got != tc.want && !(tc.want == nil && got == nil) {
				t.Errorf("%v = %#v, want %#v", tc.key, got, tc.want)
			}
			if got := e.SetBy(tc.key...); got != tc.setBy {
				t.Errorf("%v set by %q, want %q", tc.key, got, tc.setBy)
			}
			if len(e.Imports) != tc.imports {
				t.Errorf("imports %v, want %d", e.Imports, tc.imports)
			}
		})
	}
}

func TestInstallWarnsOfADropInOverride(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{
		"/etc/containerd/config.toml":        "version = 3\nimports = ['/etc/containerd/conf.d/*.toml']\n",
		"/etc/containerd/conf.d/99-eks.toml": "version = 3\n[plugins.'io.containerd.cri.v1.images']\nsnapshotter = 'overlayfs'\n",
	})
	res, err := Install(context.Background(), testOptions(t, root, "2.4.2"))
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, w := range res.Warnings {
		found = found || strings.Contains(w, "/etc/containerd/conf.d/99-eks.toml sets the CRI's snapshotter to \"overlayfs\"")
	}
	if !found {
		t.Errorf("no warning names the drop-in that overrides the snapshotter: %q", res.Warnings)
	}
	// Without the drop-in, the installed config is what containerd uses.
	if err := os.Remove(filepath.Join(root, "/etc/containerd/conf.d/99-eks.toml")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "/etc/containerd/config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := LoadContainerd(root, "/etc/containerd/config.toml", b)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.Lookup(CRISnapshotterPath(e.Version)...); got != agentconfig.PluginName {
		t.Errorf("effective snapshotter %v, want %s", got, agentconfig.PluginName)
	}
}
