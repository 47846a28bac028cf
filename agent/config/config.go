// Package config is the node agent's configuration and what other node
// tools read of the agent without linking it: the TOML config file (parse,
// defaults, validation, regional stores), the containerd and hosts.toml
// snippets it needs, and the /healthz body. systemd (install) and doctor
// import this package, not the agent, so they link neither the snapshotter
// nor go-fuse.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/s3snap/s3snap/fetcher"
	"github.com/s3snap/s3snap/mirror"
	"github.com/s3snap/s3snap/store"
)

// Defaults of the config file's settings.
const (
	DefaultRoot   = "/var/lib/s3snap"
	DefaultSocket = "/run/s3snap/s3snap.sock"
	// The mirror and metrics listen on privileged ports (below 1024), which
	// only root (or CAP_NET_BIND_SERVICE) may bind: while the agent is down
	// no other local user can take them to answer containerd's lookups
	// with images of their own, or to keep the agent from starting.
	DefaultMirrorAddress  = "127.0.0.1:505"
	DefaultMetricsAddress = "127.0.0.1:506"
	DefaultConfigPath     = "/etc/s3snap/config.toml"
)

// Config is the agent's TOML config file.
type Config struct {
	// Root holds the snapshotter's state (snapshots, metadata).
	Root string `toml:"root"`
	// Socket is the unix socket the snapshotter's gRPC API is served on.
	Socket   string           `toml:"socket"`
	Mirror   MirrorConfig     `toml:"mirror"`
	Metrics  MetricsConfig    `toml:"metrics"`
	S3       S3Config         `toml:"s3"`
	Fetch    FetchConfig      `toml:"fetch"`
	Registry []RegistryConfig `toml:"registry"`
	Lazy     LazyConfig       `toml:"lazy"`
	Debug    DebugConfig      `toml:"debug"`
}

// DebugConfig is the [debug] table.
type DebugConfig struct {
	// Address is a unix socket serving Go's runtime profiles
	// (/debug/pprof/), as containerd's [debug] address does; empty (the
	// default) serves none. The socket is 0600: only root may read them.
	//
	//	curl --unix-socket /run/s3snap/debug.sock -o cpu.pprof 'http://debug/debug/pprof/profile?seconds=10'
	Address string `toml:"address"`
}

// LazyConfig is the [lazy] table: layers whose lazy index is in the bucket
// (built with s3snap index) are mounted with FUSE and read on demand
// instead of unpacked before the container starts.
type LazyConfig struct {
	Enabled bool `toml:"enabled"`
	// Server says who runs the lazy FUSE server, the process that holds
	// the lazy mounts so they outlive the agent: "agent" (the default:
	// the agent starts it, detached) or "external" (run apart as `s3snap
	// agent fused`, e.g. a second container of a DaemonSet's pod, whose
	// processes die with the agent's container otherwise).
	Server string `toml:"server"`
	// VerifyBeforeStart fetches a lazy layer whole and checks its index
	// rebuilds the layer (the diff ID of the image config) before the
	// snapshot is committed: the container waits for the layer, and an
	// index that fails (or a v1 one, which cannot be checked) is not used,
	// the layer unpacked instead. Off, the check runs once the background
	// prefetch has the layer, and a mismatch makes its reads fail (EIO).
	VerifyBeforeStart bool `toml:"verify_before_start"`
	// CacheMaxBytes bounds the verified chunk cache (<root>/lazy/chunks)
	// the lazy FUSE server keeps; 0 is a tenth of root's file system (at
	// most 32GiB). Chunks of layers no longer mounted are evicted first,
	// then the least recently read; a chunk read again is fetched again.
	CacheMaxBytes Size `toml:"cache_max_bytes"`
}

// Lazy FUSE server modes (LazyConfig.Server).
const (
	LazyServerAgent    = "agent"
	LazyServerExternal = "external"
)

// MirrorConfig is the [mirror] table.
type MirrorConfig struct {
	// Address is the loopback host:port of the registry mirror.
	Address string `toml:"address"`
	// SpoolMaxBytes bounds the disk the mirror's spool of verified blobs
	// (<root>/mirror-spool) takes; 0 is a tenth of root's file system, at
	// most 4GiB. A blob larger than this is refused (503): containerd
	// fetches it from the registry.
	SpoolMaxBytes Size `toml:"spool_max_bytes"`
	// MaxConcurrentFetches bounds the blobs read from S3 into the spool at
	// once; further requests wait.
	MaxConcurrentFetches int `toml:"max_concurrent_fetches"`
}

// MetricsConfig is the [metrics] table.
type MetricsConfig struct {
	// Address is the loopback host:port serving /metrics and /healthz.
	Address string `toml:"address"`
}

// S3Config is the [s3] table: how to reach S3. Credentials always come
// from the AWS SDK's default chain, never from this file.
type S3Config struct {
	Region   string `toml:"region"`
	Endpoint string `toml:"endpoint"`
	// PathStyle addresses buckets in the URL path; unset, it is true when
	// an endpoint is given (S3-compatible servers need it).
	PathStyle *bool  `toml:"path_style"`
	Profile   string `toml:"profile"`
}

// FetchConfig is the [fetch] table: how layers are read from S3.
type FetchConfig struct {
	// PartSize is the size of one ranged GET: bytes, or a string with a
	// unit ("8MiB").
	PartSize Size `toml:"part_size"`
	// Concurrency is how many ranged GETs one blob keeps in flight.
	Concurrency int `toml:"concurrency"`
	// UnpackJobs is how many layers are fetched and unpacked at once;
	// each also decodes and writes files on all the CPUs it is given.
	// The default is the CPUs the agent may use (GOMAXPROCS, which
	// follows its affinity and cgroup CPU limit), at most 4: each job
	// holds buffers, ~70MiB on 2 CPUs and up to ~200MiB on many.
	UnpackJobs int `toml:"unpack_jobs"`
}

// RegistryConfig is one [[registry]] entry: images of registry Host are
// looked for in Store, or, for a bucket replicated to several regions (S3
// Cross-Region Replication), in the node's own region's copy first, then
// in the others. The regional copies are given either as a table, Stores,
// or as a Store pattern with {region} in it plus the Regions it stands for.
type RegistryConfig struct {
	// Host is the registry host as image references name it, with its
	// port if any: 123456789012.dkr.ecr.us-east-1.amazonaws.com.
	Host string `toml:"host"`
	// Store is s3://bucket[/prefix]; the prefix is taken as written. With
	// Regions it is a pattern: s3://images-{region}/prefix.
	Store string `toml:"store"`
	// Stores maps regions to their copies of the store, tried (after the
	// node's own region) in the order written:
	// stores = { "us-east-1" = "s3://imgs-use1/p", "eu-west-1" = "s3://imgs-euw1/p" }.
	Stores RegionStores `toml:"stores"`
	// Regions lists, in order, the regions a Store pattern stands for.
	Regions []string `toml:"regions"`
}

// Default returns the config with every default filled in and no registry.
func Default() Config {
	return Config{
		Root:    DefaultRoot,
		Socket:  DefaultSocket,
		Mirror:  MirrorConfig{Address: DefaultMirrorAddress, MaxConcurrentFetches: mirror.DefaultMaxFetches},
		Metrics: MetricsConfig{Address: DefaultMetricsAddress},
		Fetch:   FetchConfig{PartSize: fetcher.DefaultPartSize, Concurrency: fetcher.DefaultConcurrency, UnpackJobs: min(runtime.GOMAXPROCS(0), 4)},
	}
}

// Load reads, parses and validates the config file at path.
func Load(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	cfg, err := Parse(b)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// ErrInvalidConfig is wrapped by every error about the config's content.
var ErrInvalidConfig = errors.New("invalid config")

// Parse decodes a config strictly (an unknown key is an error), fills in
// defaults and validates it.
func Parse(b []byte) (Config, error) {
	cfg := Default()
	// The unmarshaler interface is for RegionStores, which keeps the
	// order a stores table is written in.
	dec := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields().EnableUnmarshalerInterface()
	if err := dec.Decode(&cfg); err != nil {
		var strict *toml.StrictMissingError
		var de *toml.DecodeError
		switch {
		case errors.As(err, &strict):
			return Config{}, fmt.Errorf("%w: unknown key(s):\n%s", ErrInvalidConfig, strict.String())
		case errors.As(err, &de):
			row, col := de.Position()
			return Config{}, fmt.Errorf("%w: line %d column %d: %s", ErrInvalidConfig, row, col, de.Error())
		}
		return Config{}, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate checks every setting, reporting all problems at once.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !filepath.IsAbs(c.Root) {
		bad("root %q: must be an absolute path", c.Root)
	}
	if !filepath.IsAbs(c.Socket) {
		bad("socket %q: must be an absolute path", c.Socket)
	} else if len(c.Socket) >= 108 {
		bad("socket %q: a unix socket path must be shorter than 108 bytes", c.Socket)
	}
	if err := mirror.CheckLoopback(c.Mirror.Address); err != nil {
		bad("[mirror] address: %w", err)
	}
	if c.Mirror.SpoolMaxBytes != 0 && c.Mirror.SpoolMaxBytes < 1<<20 {
		bad("[mirror] spool_max_bytes %d: want at least 1MiB, or 0 for a tenth of root's file system (at most 4GiB)", c.Mirror.SpoolMaxBytes)
	}
	if c.Mirror.MaxConcurrentFetches < 1 || c.Mirror.MaxConcurrentFetches > 256 {
		bad("[mirror] max_concurrent_fetches %d: want 1 to 256", c.Mirror.MaxConcurrentFetches)
	}
	if err := mirror.CheckLoopback(c.Metrics.Address); err != nil {
		bad("[metrics] address: %w", err)
	}
	switch c.Lazy.Server {
	case "", LazyServerAgent, LazyServerExternal:
	default:
		bad("[lazy] server %q: want %q or %q", c.Lazy.Server, LazyServerAgent, LazyServerExternal)
	}
	if c.Lazy.CacheMaxBytes != 0 && c.Lazy.CacheMaxBytes < 4<<20 {
		bad("[lazy] cache_max_bytes %d: want at least 4MiB, or 0 for a tenth of root's file system (at most 32GiB)", c.Lazy.CacheMaxBytes)
	}
	// The lazy FUSE server's socket is <root>/fused/fused.sock.
	if c.Lazy.Enabled && len(c.Root)+len("/fused/fused.sock") >= 108 {
		bad("root %q: too long for the lazy FUSE server's socket under it (a unix socket path must be shorter than 108 bytes)", c.Root)
	}
	if c.Debug.Address != "" {
		if !filepath.IsAbs(c.Debug.Address) {
			bad("[debug] address %q: must be an absolute path (a unix socket)", c.Debug.Address)
		} else if len(c.Debug.Address) >= 108 {
			bad("[debug] address %q: a unix socket path must be shorter than 108 bytes", c.Debug.Address)
		} else if c.Debug.Address == c.Socket {
			bad("[debug] address %q: the snapshotter's socket", c.Debug.Address)
		}
	}
	if c.Mirror.Address == c.Metrics.Address {
		bad("[mirror] and [metrics] both listen on %s", c.Mirror.Address)
	}
	if c.S3.Endpoint != "" {
		if u, err := url.Parse(c.S3.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("[s3] endpoint %q: want an http:// or https:// URL with a host", c.S3.Endpoint)
		}
	}
	if c.Fetch.PartSize < 64<<10 || c.Fetch.PartSize > 1<<30 {
		bad("[fetch] part_size %d: want 64KiB to 1GiB", c.Fetch.PartSize)
	}
	if c.Fetch.UnpackJobs < 1 || c.Fetch.UnpackJobs > 64 {
		bad("[fetch] unpack_jobs %d: want 1 to 64", c.Fetch.UnpackJobs)
	}
	if c.Fetch.Concurrency < 1 || c.Fetch.Concurrency > 1024 {
		bad("[fetch] concurrency %d: want 1 to 1024", c.Fetch.Concurrency)
	}
	if len(c.Registry) == 0 {
		bad("no [[registry]] entries: map at least one registry host to a store")
	}
	seen := map[string]bool{}
	for i, r := range c.Registry {
		where := fmt.Sprintf("[[registry]] #%d", i+1)
		if err := validateHost(r.Host); err != nil {
			bad("%s host: %w", where, err)
		} else if seen[r.Host] {
			bad("%s host %q: mapped twice", where, r.Host)
		}
		seen[r.Host] = true
		if _, err := r.Locations(); err != nil {
			bad("%s: %w", where, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return nil
}

// validateHost checks h is a registry host as it appears in an image
// reference: a hostname or IP, optionally with a port, nothing more.
func validateHost(h string) error {
	if h == "" {
		return errors.New("empty; want a registry host such as 123456789012.dkr.ecr.us-east-1.amazonaws.com")
	}
	if strings.Contains(h, "://") || strings.ContainsAny(h, "/ ") {
		return fmt.Errorf("%q: want host[:port] as image references name it, no scheme or path", h)
	}
	name := h
	if host, port, err := net.SplitHostPort(h); err == nil {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%q: bad port", h)
		}
		name = host
	}
	if name == "" || strings.ContainsAny(name, ":[]") && net.ParseIP(strings.Trim(name, "[]")) == nil {
		return fmt.Errorf("%q: not a host name", h)
	}
	if strings.ToLower(h) != h {
		return fmt.Errorf("%q: must be lowercase, as containerd normalises it", h)
	}
	return nil
}

// StoreURL parses Store, which must be s3://bucket[/prefix] with no tag or
// digest. For an entry with regional stores, see Locations.
func (r RegistryConfig) StoreURL() (store.URL, error) {
	return parseStore(r.Store)
}

func parseStore(s string) (store.URL, error) {
	u, err := store.ParseURL(s)
	if err != nil {
		return store.URL{}, err
	}
	if u.Tag != "" || u.Digest != "" {
		return store.URL{}, fmt.Errorf("%q: a store is s3://bucket[/prefix], without a tag or digest", s)
	}
	return u, nil
}

// PathStyle is [s3] path_style if set, else whether an endpoint is given.
func (c *Config) PathStyle() bool {
	if c.S3.PathStyle != nil {
		return *c.S3.PathStyle
	}
	return c.S3.Endpoint != ""
}

// Size is a byte count, written in TOML as an integer or as a string with
// a binary or decimal unit: "8MiB", "512KiB", "1GB".
type Size int64

// UnmarshalText parses a size string.
func (s *Size) UnmarshalText(b []byte) error {
	str := strings.TrimSpace(string(b))
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}, {"", 1}}
	for _, u := range units {
		num, ok := strings.CutSuffix(str, u.suffix)
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("size %q: want a number of bytes or a number with KiB, MiB, GiB, KB, MB or GB", str)
		}
		*s = Size(n * u.mult)
		return nil
	}
	return fmt.Errorf("size %q: want a number of bytes or a number with KiB, MiB, GiB, KB, MB or GB", str)
}
