package systemd

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// snapshot returns every regular file and symlink under root with its
// content (or link target) and mode.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, _ := d.Info()
		if d.Type()&fs.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			out[rel] = "-> " + target
			return nil
		}
		b, err := os.ReadFile(p)
		out[rel] = fi.Mode().String() + "\n" + string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func testOptions(t *testing.T, root, ctrVersion string) Options {
	bin := filepath.Join(t.TempDir(), "s3snap")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho s3snap\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return Options{
		Root: root, Binary: bin, ContainerdVersion: ctrVersion,
		Agent: &AgentSettings{Bucket: "images", Prefix: "ecr", Region: "us-east-1", Lazy: true,
			Registries: []string{"123456789012.dkr.ecr.us-east-1.amazonaws.com", "public.ecr.aws"}},
	}
}

func TestInstallIdempotentAndUninstall(t *testing.T) {
	for _, fx := range []struct{ fixture, ctr string }{{"containerd-1.7.toml", "1.7.27"}, {"containerd-2.x.toml", "2.4.2"}} {
		t.Run(fx.fixture, func(t *testing.T) {
			ctx := context.Background()
			root := t.TempDir()
			orig := fixture(t, fx.fixture)
			cfgPath := filepath.Join(root, "etc/containerd/config.toml")
			if err := os.MkdirAll(filepath.Dir(cfgPath), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(cfgPath, orig, 0o644); err != nil {
				t.Fatal(err)
			}
			o := testOptions(t, root, fx.ctr)

			dry := o
			dry.DryRun = true
			res, err := Install(ctx, dry)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Changed() {
				t.Fatal("dry run reports nothing to do on a fresh root")
			}
			if files := snapshot(t, root); len(files) != 1 {
				t.Fatalf("dry run wrote files: %v", keys(files))
			}

			res, err = Install(ctx, o)
			if err != nil {
				t.Fatal(err)
			}
			first := snapshot(t, root)
			for _, want := range []string{
				"usr/local/bin/s3snap", "etc/s3snap/config.toml", "etc/systemd/system/s3snap.service",
				"etc/systemd/system/containerd.service.d/10-s3snap.conf", "etc/containerd/config.toml",
				"etc/containerd/config.toml.pre-s3snap",
				"etc/containerd/certs.d/123456789012.dkr.ecr.us-east-1.amazonaws.com/hosts.toml",
				"etc/containerd/certs.d/public.ecr.aws/hosts.toml",
				"etc/systemd/system/multi-user.target.wants/s3snap.service",
			} {
				if _, ok := first[want]; !ok {
					t.Errorf("%s not installed (have %v)", want, keys(first))
				}
			}
			if got := first["etc/containerd/config.toml.pre-s3snap"]; !strings.HasSuffix(got, string(orig)) {
				t.Errorf("backup is not the original config")
			}
			if got := first["etc/s3snap/config.toml"]; !strings.Contains(got, "[lazy]\nenabled = true") {
				t.Errorf("--lazy not in the agent config:\n%s", got)
			}
			if got := first["etc/s3snap/config.toml"]; !strings.HasPrefix(got, "-rw-------") {
				t.Errorf("agent config mode: %s", strings.SplitN(got, "\n", 2)[0])
			}
			if res.HostsDir != "/etc/containerd/certs.d" {
				t.Errorf("hosts dir %q", res.HostsDir)
			}

			res, err = Install(ctx, o)
			if err != nil {
				t.Fatal(err)
			}
			if res.Changed() {
				t.Errorf("second install changed something: %+v", res.Changes)
			}
			second := snapshot(t, root)
			for k, v := range first {
				if second[k] != v {
					t.Errorf("%s changed on the second run", k)
				}
			}
			if len(second) != len(first) {
				t.Errorf("second run added files: %v vs %v", keys(second), keys(first))
			}

			// A re-run without settings keeps the installed agent config.
			keep := o
			keep.Agent = nil
			if res, err = Install(ctx, keep); err != nil || res.Changed() {
				t.Fatalf("re-run without flags: changed=%v err=%v", res != nil && res.Changed(), err)
			}

			if _, err := Uninstall(ctx, o); err != nil {
				t.Fatal(err)
			}
			after := snapshot(t, root)
			for k, v := range after {
				if k != "etc/containerd/config.toml.pre-s3snap" && strings.Contains(v, "s3snap") {
					t.Errorf("%s still mentions s3snap after uninstall", k)
				}
			}
			if _, ok := after["etc/containerd/config.toml.pre-s3snap"]; !ok {
				t.Error("uninstall removed the backup")
			}
			if _, ok := after["etc/containerd/config.toml"]; !ok {
				t.Error("uninstall removed containerd's config")
			}
		})
	}
}

func TestInstallKeepsForeignHostsTOML(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	o := testOptions(t, root, "2.4.2")
	p := filepath.Join(root, "etc/containerd/certs.d/public.ecr.aws/hosts.toml")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	mine := []byte("server = \"https://public.ecr.aws\"\n")
	if err := os.WriteFile(p, mine, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Install(ctx, o); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p + BackupSuffix); string(b) != string(mine) {
		t.Errorf("user's hosts.toml not backed up: %q", b)
	}
	if _, err := Uninstall(ctx, o); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != string(mine) {
		t.Errorf("uninstall did not restore the user's hosts.toml: %q", b)
	}
}

func TestInstallNeedsSettings(t *testing.T) {
	o := testOptions(t, t.TempDir(), "2.4.2")
	o.Agent = nil
	if _, err := Install(context.Background(), o); !errors.Is(err, ErrNoAgentConfig) {
		t.Fatalf("err = %v, want ErrNoAgentConfig", err)
	}
	o = testOptions(t, t.TempDir(), "2.4.2")
	o.Agent.Registries = nil
	if _, err := Install(context.Background(), o); err == nil {
		t.Fatal("install without a registry host succeeded")
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
