package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const fullConfig = `
root = "/var/lib/s3snap"
socket = "/run/s3snap/s3snap.sock"

[mirror]
address = "127.0.0.1:6000"

[metrics]
address = "[::1]:6001"

[s3]
region = "eu-west-1"
endpoint = "http://127.0.0.1:9000"
path_style = false
profile = "nodes"

[fetch]
part_size = "4MiB"
concurrency = 32

[[registry]]
host = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
store = "s3://images/ecr"

[[registry]]
host = "registry.internal:5000"
store = "s3://other-bucket"
`

func TestParseFull(t *testing.T) {
	cfg, err := Parse([]byte(fullConfig))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Mirror.Address != "127.0.0.1:6000" || cfg.Metrics.Address != "[::1]:6001" {
		t.Errorf("addresses: %+v %+v", cfg.Mirror, cfg.Metrics)
	}
	if cfg.Fetch.PartSize != 4<<20 || cfg.Fetch.Concurrency != 32 {
		t.Errorf("fetch: %+v", cfg.Fetch)
	}
	if cfg.PathStyle() {
		t.Error("path_style = false was not honoured")
	}
	if len(cfg.Registry) != 2 {
		t.Fatalf("registries: %+v", cfg.Registry)
	}
	u, err := cfg.Registry[0].StoreURL()
	if err != nil || u.Bucket != "images" || u.Path != "ecr" {
		t.Errorf("store URL %+v, %v", u, err)
	}
}

func TestParseDefaults(t *testing.T) {
	cfg, err := Parse([]byte(`
[s3]
endpoint = "https://s3.example.com"
[[registry]]
host = "docker.io"
store = "s3://b/p"
`))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	if cfg.Root != want.Root || cfg.Socket != want.Socket || cfg.Mirror != want.Mirror || cfg.Metrics != want.Metrics || cfg.Fetch != want.Fetch {
		t.Errorf("defaults not applied: %+v", cfg)
	}
	if !cfg.PathStyle() {
		t.Error("path style should default to true with an endpoint")
	}
}

func TestParseErrors(t *testing.T) {
	reg := "\n[[registry]]\nhost = \"r.example.com\"\nstore = \"s3://b\"\n"
	for _, tc := range []struct {
		name, config, want string
	}{
		{"unknown top-level key", `cache = "/x"` + reg, "unknown key"},
		{"no unpack jobs", "[fetch]\nunpack_jobs = 0\n" + reg, "unpack_jobs 0"},
		{"unknown nested key", "[s3]\nbucket = \"x\"\n" + reg, "bucket"},
		{"typo in registry", "[[registry]]\nhost = \"r\"\nbucket = \"s3://b\"\n", "bucket"},
		{"syntax error", "root = \n" + reg, "line 1"},
		{"wrong type", "[fetch]\nconcurrency = \"many\"\n" + reg, "invalid config"},
		{"no registry", "", "no [[registry]]"},
		{"relative root", `root = "var/lib"` + reg, "root \"var/lib\": must be an absolute path"},
		{"relative socket", `socket = "s.sock"` + reg, "socket"},
		{"long socket", `socket = "/` + strings.Repeat("x", 120) + `"` + reg, "108"},
		{"mirror on all interfaces", "[mirror]\naddress = \"0.0.0.0:5050\"\n" + reg, "[mirror] address"},
		{"mirror without host", "[mirror]\naddress = \":5050\"\n" + reg, "loopback"},
		{"metrics public", "[metrics]\naddress = \"10.1.2.3:9100\"\n" + reg, "[metrics] address"},
		{"same address", "[metrics]\naddress = \"127.0.0.1:5050\"\n" + reg, "both listen"},
		{"bad endpoint", "[s3]\nendpoint = \"s3.example.com\"\n" + reg, "endpoint"},
		{"tiny part size", "[fetch]\npart_size = 1024\n" + reg, "part_size"},
		{"bad part size unit", "[fetch]\npart_size = \"8 parsecs\"\n" + reg, "size \"8 parsecs\""},
		{"zero concurrency", "[fetch]\nconcurrency = 0\n" + reg, "concurrency"},
		{"host with scheme", "[[registry]]\nhost = \"https://r.example.com\"\nstore = \"s3://b\"\n", "no scheme"},
		{"host with path", "[[registry]]\nhost = \"r.example.com/team\"\nstore = \"s3://b\"\n", "no scheme or path"},
		{"host uppercase", "[[registry]]\nhost = \"R.example.com\"\nstore = \"s3://b\"\n", "lowercase"},
		{"host bad port", "[[registry]]\nhost = \"r.example.com:99999\"\nstore = \"s3://b\"\n", "bad port"},
		{"duplicate host", reg + reg, "mapped twice"},
		{"store not s3", "[[registry]]\nhost = \"r\"\nstore = \"https://b\"\n", "s3://bucket"},
		{"store with tag", "[[registry]]\nhost = \"r\"\nstore = \"s3://b/p/app:v1\"\n", "without a tag"},
		{"empty host", "[[registry]]\nstore = \"s3://b\"\n", "host: empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.config))
			if err == nil {
				t.Fatalf("no error, want one containing %q", tc.want)
			}
			if !errors.Is(err, ErrInvalidConfig) && !strings.Contains(tc.want, "size") {
				t.Errorf("error does not wrap ErrInvalidConfig: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	_, err := Parse([]byte("root = \"rel\"\n[mirror]\naddress = \"0.0.0.0:1\"\n"))
	for _, want := range []string{"root", "[mirror]", "[[registry]]"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
}

func TestSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Size
	}{
		{"8MiB", 8 << 20}, {"512KiB", 512 << 10}, {"1GiB", 1 << 30}, {"2MB", 2e6}, {"1000", 1000}, {"64 KiB", 64 << 10}, {"10B", 10},
	} {
		var s Size
		if err := s.UnmarshalText([]byte(tc.in)); err != nil || s != tc.want {
			t.Errorf("Size(%q) = %d, %v; want %d", tc.in, s, err, tc.want)
		}
	}
	for _, bad := range []string{"", "MiB", "-1", "8 TB", "1.5MiB"} {
		var s Size
		if err := s.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("Size(%q) = %d, want an error", bad, s)
		}
	}
	cfg, err := Parse([]byte("[fetch]\npart_size = 1048576\n[[registry]]\nhost = \"r\"\nstore = \"s3://b\"\n"))
	if err != nil || cfg.Fetch.PartSize != 1<<20 {
		t.Errorf("integer part_size: %d, %v", cfg.Fetch.PartSize, err)
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(fullConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.toml")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want ErrNotExist", err)
	}
}

func TestContainerdConfig(t *testing.T) {
	cfg, err := Parse([]byte(fullConfig))
	if err != nil {
		t.Fatal(err)
	}
	got := ContainerdConfig(cfg, ContainerdOptions{CRI: true, Platform: "linux/amd64"})
	for _, want := range []string{
		`[proxy_plugins.s3snap]`, `address = "/run/s3snap/s3snap.sock"`, `root = "/var/lib/s3snap"`,
		`enable_remote_snapshot_annotations = "true"`, `snapshotter = "s3snap"`, `platform = "linux/amd64"`,
		`disable_snapshot_annotations = false`, `config_path = "/etc/containerd/certs.d"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("containerd config lacks %s:\n%s", want, got)
		}
	}
	hosts := HostsTOML(cfg, cfg.Registry[0].Host, "")
	if !strings.Contains(hosts, `server = "https://123456789012.dkr.ecr.us-east-1.amazonaws.com"`) ||
		!strings.Contains(hosts, `[host."http://127.0.0.1:6000"]`) {
		t.Errorf("hosts.toml:\n%s", hosts)
	}
}
