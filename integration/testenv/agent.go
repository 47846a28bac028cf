package testenv

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	agentconfig "github.com/s3snap/s3snap/agent/config"
)

// Agent is an `s3snap agent` a test started as a subprocess, with its own
// root, socket, mirror and metrics addresses. Never share one between two
// containerds: its snapshots belong to one.
type Agent struct {
	*Process
	Dir         string // private directory holding everything below
	ConfigPath  string // the generated config.toml
	Config      agentconfig.Config
	Root        string // snapshotter state
	Socket      string // snapshotter gRPC socket
	MirrorAddr  string // 127.0.0.1:port
	MetricsAddr string // 127.0.0.1:port
	HostsDir    string // containerd registry config_path (hosts.toml dirs)
	env         []string
	t           testing.TB
	bin         string // the s3snap binary it runs
}

// AgentOptions configure StartAgent.
type AgentOptions struct {
	// S3 is the server the stores live on (required).
	S3 *S3Env
	// Registries maps upstream registry hosts to s3://bucket[/prefix].
	Registries map[string]string
	// Extra is appended to the generated config.toml (a [fetch] table, say).
	Extra string
	// Env is added to the agent's environment (NOTIFY_SOCKET, say).
	Env []string
	// ConfigPath, if set, is a config file to run with instead of a
	// generated one (Registries and Extra are ignored).
	ConfigPath string
}

// StartAgent builds s3snap (once per test binary), writes a config for
// opts and runs `s3snap agent`, waiting until it serves. It needs root (the
// overlay snapshotter mounts).
func StartAgent(t testing.TB, opts AgentOptions) *Agent {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "the agent's overlay snapshotter needs root")
	}
	if opts.S3 == nil {
		t.Fatal("StartAgent: AgentOptions.S3 is required")
	}
	bin := S3snapBinary(t)
	// A short base dir: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeAll(dir) })
	a := &Agent{
		Dir:         dir,
		ConfigPath:  filepath.Join(dir, "config.toml"),
		Root:        filepath.Join(dir, "root"),
		Socket:      filepath.Join(dir, "run", "s3snap.sock"),
		MirrorAddr:  FreeAddr(t),
		MetricsAddr: FreeAddr(t),
		HostsDir:    filepath.Join(dir, "certs.d"),
		t:           t,
	}
	if opts.ConfigPath != "" {
		cfg, err := agentconfig.Load(opts.ConfigPath)
		if err != nil {
			t.Fatal(err)
		}
		a.ConfigPath, a.Config, a.Root, a.Socket = opts.ConfigPath, cfg, cfg.Root, cfg.Socket
		a.MirrorAddr, a.MetricsAddr, a.HostsDir = cfg.Mirror.Address, cfg.Metrics.Address, ""
		a.env = agentEnv(opts)
		a.cleanupFused(t)
		a.start(t, bin)
		return a
	}
	var b strings.Builder
	fmt.Fprintf(&b, "root = %q\nsocket = %q\n\n[mirror]\naddress = %q\n\n[metrics]\naddress = %q\n\n[s3]\nregion = %q\nendpoint = %q\npath_style = true\n",
		a.Root, a.Socket, a.MirrorAddr, a.MetricsAddr, opts.S3.Region, opts.S3.Endpoint)
	for host, st := range opts.Registries {
		fmt.Fprintf(&b, "\n[[registry]]\nhost = %q\nstore = %q\n", host, st)
	}
	b.WriteString("\n" + opts.Extra + "\n")
	if err := os.WriteFile(a.ConfigPath, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if a.Config, err = agentconfig.Load(a.ConfigPath); err != nil {
		t.Fatalf("generated agent config: %v", err)
	}
	a.env = agentEnv(opts)
	a.cleanupFused(t)
	a.start(t, bin)
	return a
}

// agentEnv gives the agent the test server's credentials and nothing else
// of the caller's AWS settings.
func agentEnv(opts AgentOptions) []string {
	env := []string{
		"AWS_ACCESS_KEY_ID=" + opts.S3.AccessKey, "AWS_SECRET_ACCESS_KEY=" + opts.S3.SecretKey,
		"AWS_REGION=" + opts.S3.Region, "AWS_EC2_METADATA_DISABLED=true", "AWS_PROFILE=", "AWS_ENDPOINT_URL=",
	}
	return append(env, opts.Env...)
}

// start runs the agent, which lives until the test that called StartAgent
// ends (even when a subtest restarts it); t is the one waiting for it.
func (a *Agent) start(t testing.TB, bin string) {
	t.Helper()
	a.bin = bin
	a.Process = Start(a.t, "s3snap-agent", a.env, bin, "agent", "--config", a.ConfigPath, "--log-level", "debug")
	WaitFor(t, a.Process, 30*time.Second, "agent mirror at "+a.MirrorAddr, func() bool {
		_, err := os.Stat(a.Socket)
		return err == nil && answers("http://"+a.MirrorAddr+"/v2/") && answers("http://"+a.MetricsAddr+"/metrics")
	})
}

// Restart stops the agent (SIGTERM) and starts it again with the same
// config and state. The new process, too, is stopped when the test that
// started the agent ends.
func (a *Agent) Restart(t testing.TB) {
	t.Helper()
	a.Stop()
	a.start(t, a.bin)
}

// Upgrade stops the agent (SIGTERM) and starts bin, another s3snap build,
// on the same config and state; later restarts run bin too.
func (a *Agent) Upgrade(t testing.TB, bin string) {
	t.Helper()
	a.Stop()
	a.start(t, bin)
}

// ContainerdConfig writes a hosts.toml for upstreamHost under HostsDir
// (the agent's mirror first, then the upstream itself, over plain http for
// a 127.0.0.1 or localhost upstream) and returns the containerd config
// snippet that uses the agent: its proxy plugin, unpack_config, and the
// CRI settings with config_path = HostsDir. Pass the snippet as
// ContainerdOptions.Extra and HostsDir to ctr's --hosts-dir.
func (a *Agent) ContainerdConfig(upstreamHost string) string {
	t := a.t
	t.Helper()
	server := "https://" + upstreamHost
	if strings.HasPrefix(upstreamHost, "127.0.0.1:") || strings.HasPrefix(upstreamHost, "localhost:") {
		server = "http://" + upstreamHost
	}
	path := agentconfig.HostsTOMLPath(a.HostsDir, upstreamHost)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(agentconfig.HostsTOML(a.Config, upstreamHost, server)), 0o644); err != nil {
		t.Fatal(err)
	}
	return agentconfig.ContainerdConfig(a.Config, agentconfig.ContainerdOptions{HostsDir: a.HostsDir, CRI: true})
}

// ContainerdConfigFor is ContainerdConfig for containerd version (see
// ContainerdVersions). For Containerd17 it is the version 2 snippet s3snap
// install merges for 1.7 (systemd/containerd-1.7.toml): the proxy plugin, and
// the CRI's snapshotter, snapshot annotations (1.7's CRI passes layer labels
// only with them) and config_path. 1.7 has no unpack_config to set: its ctr
// unpacks locally.
func (a *Agent) ContainerdConfigFor(version, upstreamHost string) string {
	t := a.t
	t.Helper()
	snippet := a.ContainerdConfig(upstreamHost)
	if version != Containerd17 {
		return snippet
	}
	return fmt.Sprintf(`[proxy_plugins.%[1]s]
  type = "snapshot"
  address = %[2]q
  [proxy_plugins.%[1]s.exports]
    root = %[3]q
    enable_remote_snapshot_annotations = "true"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = %[1]q
  disable_snapshot_annotations = false

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = %[4]q
`, agentconfig.PluginName, a.Config.Socket, a.Config.Root, a.HostsDir)
}

// Metric returns the sum of the agent's metric name over the series whose
// labels include every label given as "key=value".
func (a *Agent) Metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + a.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("agent metrics: %v", err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		series, value, ok := strings.Cut(line, " ")
		if strings.HasPrefix(line, "#") || !ok {
			continue
		}
		metric, lbls, _ := strings.Cut(series, "{")
		if metric != name {
			continue
		}
		match := true
		for _, l := range labels {
			k, v, _ := strings.Cut(l, "=")
			if !strings.Contains(lbls, k+`="`+v+`"`) {
				match = false
			}
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(value), 64); match && err == nil {
			sum += f
		}
	}
	return sum
}

// Health returns the agent's /healthz status code and body.
func (a *Agent) Health(t testing.TB) (int, agentconfig.Health) {
	t.Helper()
	resp, err := http.Get("http://" + a.MetricsAddr + "/healthz")
	if err != nil {
		t.Fatalf("agent healthz: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var h agentconfig.Health
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatalf("agent healthz body %q: %v", b, err)
	}
	return resp.StatusCode, h
}

var s3snapBin struct {
	once sync.Once
	path string
	err  error
}

// S3snapBinary builds ./cmd/s3snap once per test binary and returns its
// path.
func S3snapBinary(t testing.TB) string {
	t.Helper()
	root := moduleRoot(t)
	s3snapBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "s3snap-bin-")
		if err != nil {
			s3snapBin.err = err
			return
		}
		path := filepath.Join(dir, "s3snap")
		if out, err := RunErr(context.Background(), "go", "build", "-C", root, "-o", path, "./cmd/s3snap"); err != nil {
			s3snapBin.err = fmt.Errorf("go build ./cmd/s3snap: %w\n%s", err, out)
			return
		}
		s3snapBin.path = path
	})
	if s3snapBin.err != nil {
		t.Fatal(s3snapBin.err)
	}
	return s3snapBin.path
}

// S3snapBinaryVersion builds ./cmd/s3snap as version (-X main.version),
// a build other than S3snapBinary's, to upgrade an agent to.
func S3snapBinaryVersion(t testing.TB, version string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s3snap")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := RunErr(ctx, "go", "build", "-C", moduleRoot(t), "-ldflags", "-X main.version="+version, "-o", path, "./cmd/s3snap"); err != nil {
		t.Fatalf("go build ./cmd/s3snap (version %s): %v\n%s", version, err, out)
	}
	return path
}
