package systemd

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"

	agentconfig "github.com/s3snap/s3snap/agent/config"
)

var update = flag.Bool("update", false, "rewrite the shipped example configs from the generator")

func testAgent(t *testing.T) agentconfig.Config {
	t.Helper()
	cfg, err := agentconfig.Parse([]byte(AgentSettings{Bucket: "images", Prefix: "ecr",
		Registries: []string{"123456789012.dkr.ecr.us-east-1.amazonaws.com"}}.render()))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// get walks nested tables of a decoded config.
func get(t *testing.T, data []byte, path ...string) any {
	t.Helper()
	var m map[string]any
	if err := toml.Unmarshal(data, &m); err != nil {
		t.Fatalf("merged config is not TOML: %v\n%s", err, data)
	}
	return Lookup(m, path...)
}

func TestMergeContainerd(t *testing.T) {
	cfg := testAgent(t)
	tests := []struct {
		name       string
		in         []byte
		ctr        string
		wantVer    int
		wantHosts  string
		check      map[string]any // dotted path (with | as separator) → value
		noTransfer bool
	}{
		{
			name: "eks 1.7", in: fixture(t, "containerd-1.7.toml"), ctr: "1.7.27", wantVer: 2,
			wantHosts: "/etc/containerd/certs.d", noTransfer: true,
			check: map[string]any{
				"plugins|io.containerd.grpc.v1.cri|containerd|snapshotter":                         "s3snap",
				"plugins|io.containerd.grpc.v1.cri|containerd|disable_snapshot_annotations":        false,
				"plugins|io.containerd.grpc.v1.cri|containerd|discard_unpacked_layers":             true,
				"plugins|io.containerd.grpc.v1.cri|registry|config_path":                           "/etc/containerd/certs.d:/etc/docker/certs.d",
				"plugins|io.containerd.grpc.v1.cri|sandbox_image":                                  "602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/pause:3.5",
				"plugins|io.containerd.grpc.v1.cri|containerd|runtimes|runc|options|SystemdCgroup": true,
				"proxy_plugins|s3snap|address":                                                     "/run/s3snap/s3snap.sock",
				"proxy_plugins|s3snap|exports|root":                                                "/var/lib/s3snap",
				"grpc|address":                                                                     "/run/containerd/containerd.sock",
			},
		},
		{
			name: "1.7 config on containerd 2.1 gets the transfer service too", in: fixture(t, "containerd-1.7.toml"), ctr: "2.1.0",
			wantVer: 2, wantHosts: "/etc/containerd/certs.d",
			check: map[string]any{"plugins|io.containerd.grpc.v1.cri|containerd|snapshotter": "s3snap"},
		},
		{
			name: "2.x", in: fixture(t, "containerd-2.x.toml"), ctr: "2.4.2", wantVer: 3, wantHosts: "/etc/containerd/certs.d",
			check: map[string]any{
				"plugins|io.containerd.cri.v1.images|snapshotter":                  "s3snap",
				"plugins|io.containerd.cri.v1.images|disable_snapshot_annotations": false, // discard_unpacked_layers: local pull mode
				"plugins|io.containerd.cri.v1.images|discard_unpacked_layers":      true,
				"plugins|io.containerd.cri.v1.images|pinned_images|sandbox":        "localhost/kubernetes/pause",
				"plugins|io.containerd.cri.v1.images|registry|config_path":         "/etc/containerd/certs.d",
				"plugins|io.containerd.transfer.v1.local|max_concurrent_downloads": int64(3),
				"proxy_plugins|s3snap|exports|enable_remote_snapshot_annotations":  "true",
			},
		},
		{
			name: "2.x pulling through the transfer service", in: []byte("version = 3\n"), ctr: "2.4.2", wantVer: 3, wantHosts: "/etc/containerd/certs.d",
			check: map[string]any{
				"plugins|io.containerd.cri.v1.images|snapshotter":                  "s3snap",
				"plugins|io.containerd.cri.v1.images|disable_snapshot_annotations": nil, // would force local pull mode
			},
		},
		{name: "no config, containerd unknown", in: nil, wantVer: 3, wantHosts: "/etc/containerd/certs.d"},
		{name: "no config, containerd 1.7", in: nil, ctr: "1.7.20", wantVer: 2, wantHosts: "/etc/containerd/certs.d", noTransfer: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := mergeContainerd(tc.in, mergeOptions{agent: cfg, ctrVersion: tc.ctr, platform: "linux/amd64"})
			if err != nil {
				t.Fatal(err)
			}
			if out.version != tc.wantVer || out.hostsDir != tc.wantHosts {
				t.Errorf("version %d hosts %q, want %d %q", out.version, out.hostsDir, tc.wantVer, tc.wantHosts)
			}
			if got := get(t, out.data, "version"); got != int64(tc.wantVer) {
				t.Errorf("version key = %v", got)
			}
			for path, want := range tc.check {
				if got := get(t, out.data, strings.Split(path, "|")...); got != want {
					t.Errorf("%s = %#v, want %#v", path, got, want)
				}
			}
			unpack, _ := get(t, out.data, "plugins", transferPlug, "unpack_config").([]any)
			if tc.noTransfer != (len(unpack) == 0) {
				t.Errorf("unpack_config = %v, want transfer entries: %v", unpack, !tc.noTransfer)
			}
			if !tc.noTransfer && len(unpack) != 2 {
				t.Errorf("unpack_config = %v, want overlayfs and s3snap", unpack)
			}
			again, err := mergeContainerd(out.data, mergeOptions{agent: cfg, ctrVersion: tc.ctr, platform: "linux/amd64"})
			if err != nil {
				t.Fatal(err)
			}
			if string(again.data) != string(out.data) {
				t.Errorf("second merge changed the config:\n%s\n---\n%s", out.data, again.data)
			}
			back, err := unmergeContainerd(out.data, "")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(back.data), "s3snap") {
				t.Errorf("uninstalled config still mentions s3snap:\n%s", back.data)
			}
		})
	}
}

func TestMergeContainerdHostsDir(t *testing.T) {
	out, err := mergeContainerd(fixture(t, "containerd-1.7.toml"), mergeOptions{agent: testAgent(t), ctrVersion: "1.7", hostsDir: "/etc/s3snap/certs.d"})
	if err != nil {
		t.Fatal(err)
	}
	if got := get(t, out.data, "plugins", criV2, "registry", "config_path"); got != "/etc/s3snap/certs.d:/etc/containerd/certs.d:/etc/docker/certs.d" {
		t.Errorf("config_path = %v: want the new dir first, the user's kept", got)
	}
}

func TestMergeContainerdRefuses(t *testing.T) {
	cfg := testAgent(t)
	tests := []struct {
		name, in, ctr string
	}{
		{"version 1", "version = 1\n", "1.7"},
		{"no version", "root = \"/var/lib/containerd\"\n", ""},
		{"not toml", "version = = 2\n", ""},
		{"v3 on 1.7", "version = 3\n", "1.7.27"},
		{"mirrors", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\nendpoint = [\"https://mirror\"]\n", "1.7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := mergeContainerd([]byte(tc.in), mergeOptions{agent: cfg, ctrVersion: tc.ctr})
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
}

// TestShippedExamples keeps systemd/containerd-*.toml and hosts.toml, the
// files the README points to, equal to what the installer writes.
func TestShippedExamples(t *testing.T) {
	cfg := testAgent(t)
	for _, tc := range []struct{ file, ctr string }{{"containerd-1.7.toml", "1.7"}, {"containerd-2.x.toml", "2.4"}} {
		out, err := mergeContainerd(nil, mergeOptions{agent: cfg, ctrVersion: tc.ctr, platform: "linux/amd64"})
		if err != nil {
			t.Fatal(err)
		}
		golden(t, tc.file, append([]byte("# s3snap's part of /etc/containerd/config.toml for containerd "+tc.ctr+", as `s3snap install` merges it.\n"), out.data...))
	}
	golden(t, "hosts.toml", hostsTOML(cfg, cfg.Registry[0].Host, ""))
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(name, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(name)
	if err != nil {
		t.Fatalf("%v (run go test ./systemd -update)", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s differs from the generator's output (run go test ./systemd -update):\n%s", name, got)
	}
}
