package config

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
spool_max_bytes = "512MiB"
max_concurrent_fetches = 3

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
	if cfg.Mirror.SpoolMaxBytes != 512<<20 || cfg.Mirror.MaxConcurrentFetches != 3 {
		t.Errorf("mirror limits: %+v", cfg.Mirror)
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
	// 0: the mirror sizes the spool from root's file system.
	if cfg.Mirror.SpoolMaxBytes != 0 || cfg.Mirror.MaxConcurrentFetches != 8 {
		t.Errorf("mirror limits default to %+v, want spool 0 (auto) and 8 fetches", cfg.Mirror)
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
		{"same address", "[metrics]\naddress = \"127.0.0.1:505\"\n" + reg, "both listen"},
		{"debug not a path", "[debug]\naddress = \"127.0.0.1:6060\"\n" + reg, "[debug] address"},
		{"debug on the snapshotter socket", "[debug]\naddress = \"/run/s3snap/s3snap.sock\"\n" + reg, "the snapshotter's socket"},
		{"tiny spool", "[mirror]\nspool_max_bytes = \"64KiB\"\n" + reg, "spool_max_bytes 65536"},
		{"no fetches", "[mirror]\nmax_concurrent_fetches = 0\n" + reg, "max_concurrent_fetches 0"},
		{"too many fetches", "[mirror]\nmax_concurrent_fetches = 100000\n" + reg, "max_concurrent_fetches 100000"},
		{"spool typo", "[mirror]\nspool_max = \"1GiB\"\n" + reg, "spool_max"},
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

// regional wraps registry lines into a config with a host.
func regional(lines string) string {
	return "[[registry]]\nhost = \"123456789012.dkr.ecr.us-east-1.amazonaws.com\"\n" + lines + "\n"
}

// TestParseRegionalStores: each way of writing a registry's stores gives
// its locations in the order written, and a node in a region looks in that
// region's store first, then the others in that order; a node in a region
// with no store (or an unknown one) keeps the written order.
func TestParseRegionalStores(t *testing.T) {
	const euw1, use1, aps1 = "eu-west-1", "us-east-1", "ap-south-1"
	for _, tc := range []struct {
		name   string
		lines  string
		region string
		want   []string // region=s3://bucket/prefix, in lookup order
	}{
		{"plain store", `store = "s3://images/ecr"`, use1, []string{"=s3://images/ecr"}},
		{"plain store, region unknown", `store = "s3://images"`, "", []string{"=s3://images"}},
		{"table, own region first", `stores = { "us-east-1" = "s3://imgs-use1/p", "eu-west-1" = "s3://imgs-euw1/p", "ap-south-1" = "s3://imgs-aps1" }`, euw1,
			[]string{"eu-west-1=s3://imgs-euw1/p", "us-east-1=s3://imgs-use1/p", "ap-south-1=s3://imgs-aps1"}},
		{"table, order kept for the rest", `stores = { "ap-south-1" = "s3://a", "eu-west-1" = "s3://e", "us-east-1" = "s3://u" }`, use1,
			[]string{"us-east-1=s3://u", "ap-south-1=s3://a", "eu-west-1=s3://e"}},
		{"table, own region already first", `stores = { "us-east-1" = "s3://u", "eu-west-1" = "s3://e" }`, use1,
			[]string{"us-east-1=s3://u", "eu-west-1=s3://e"}},
		{"table, region not listed", `stores = { "us-east-1" = "s3://u", "eu-west-1" = "s3://e" }`, aps1,
			[]string{"us-east-1=s3://u", "eu-west-1=s3://e"}},
		{"table, region unknown", `stores = { "eu-west-1" = "s3://e", "us-east-1" = "s3://u" }`, "",
			[]string{"eu-west-1=s3://e", "us-east-1=s3://u"}},
		{"sub-table", "[registry.stores]\n\"eu-west-1\" = \"s3://e/p\"\nus-east-1 = 's3://u/p'", use1,
			[]string{"us-east-1=s3://u/p", "eu-west-1=s3://e/p"}},
		{"pattern", "store = \"s3://images-{region}/prefix\"\nregions = [\"us-east-1\", \"eu-west-1\", \"ap-south-1\"]", aps1,
			[]string{"ap-south-1=s3://images-ap-south-1/prefix", "us-east-1=s3://images-us-east-1/prefix", "eu-west-1=s3://images-eu-west-1/prefix"}},
		{"pattern in the prefix", "store = \"s3://images/{region}/ecr\"\nregions = [\"eu-west-1\", \"us-east-1\"]", use1,
			[]string{"us-east-1=s3://images/us-east-1/ecr", "eu-west-1=s3://images/eu-west-1/ecr"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(regional(tc.lines)))
			if err != nil {
				t.Fatal(err)
			}
			locs, err := cfg.Registry[0].StoresFor(tc.region)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, l := range locs {
				got = append(got, l.Region+"="+l.URL.String())
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("stores for a node in %q:\n got %v\nwant %v", tc.region, got, tc.want)
			}
			if wantRegional := tc.want[0][0] != '='; cfg.Regional() != wantRegional {
				t.Errorf("Regional() = %v, want %v", cfg.Regional(), wantRegional)
			}
		})
	}
}

// TestParseRegionalErrors: every way of getting regional stores wrong is
// an ErrInvalidConfig naming the entry and the problem.
func TestParseRegionalErrors(t *testing.T) {
	for _, tc := range []struct {
		name, lines, want string
	}{
		{"unknown placeholder", "store = \"s3://images-{zone}/p\"\nregions = [\"us-east-1\"]", "unknown placeholder {zone}"},
		{"misspelt placeholder", "store = \"s3://images-{Region}\"\nregions = [\"us-east-1\"]", "unknown placeholder {Region}"},
		{"unbalanced brace", "store = \"s3://images-{region/p\"\nregions = [\"us-east-1\"]", "unbalanced"},
		{"pattern without regions", `store = "s3://images-{region}/p"`, "has no regions"},
		{"regions without pattern", "store = \"s3://images/p\"\nregions = [\"us-east-1\"]", "no {region} placeholder"},
		{"regions with a table", "stores = { \"us-east-1\" = \"s3://u\" }\nregions = [\"us-east-1\"]", "regions is for a store pattern"},
		{"store and stores", "store = \"s3://b\"\nstores = { \"us-east-1\" = \"s3://u\" }", "both store and stores"},
		{"neither", `regions = []`, "no store"},
		{"region with no store", `stores = { "us-east-1" = "s3://u", "eu-west-1" = "" }`, `region "eu-west-1" has no store`},
		{"empty table", `stores = {}`, "empty table"},
		{"bad region in table", `stores = { "us-east1" = "s3://u" }`, `region "us-east1": not an AWS region name`},
		{"bad region in list", "store = \"s3://i-{region}\"\nregions = [\"US-EAST-1\"]", `region "US-EAST-1"`},
		{"region twice in list", "store = \"s3://i-{region}\"\nregions = [\"us-east-1\", \"us-east-1\"]", "listed twice"},
		{"bad store in table", `stores = { "us-east-1" = "https://u" }`, "region us-east-1 store"},
		{"tag in table store", `stores = { "us-east-1" = "s3://u/p/app:v1" }`, "without a tag"},
		{"pattern makes a bad bucket", "store = \"s3://{region}_images\"\nregions = [\"us-east-1\"]", "region us-east-1 store"},
		{"placeholder in a table", `stores = { "us-east-1" = "s3://i-{region}" }`, "placeholders belong in a store pattern"},
		{"stores not a table", `stores = "s3://u"`, "for one store write store ="},
		{"store value not a string", `stores = { "us-east-1" = 1 }`, "want a store as a string"},
		{"dotted region key", `stores = { us-east-1.x = "s3://u" }`, "want a region name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(regional(tc.lines)))
			if err == nil {
				t.Fatalf("no error, want one containing %q", tc.want)
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error does not wrap ErrInvalidConfig: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}
