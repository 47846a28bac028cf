package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/containerd/log"
	"github.com/spf13/cobra"

	"github.com/s3snap/s3snap/agent"
	agentconfig "github.com/s3snap/s3snap/agent/config"
	"github.com/s3snap/s3snap/lazy/fused"
)

const agentLong = `Run the node agent: a containerd snapshotter that fills image layers
straight from S3 (served over gRPC on a unix socket, registered in containerd
as a proxy plugin), a loopback registry mirror that answers manifests and
blobs from the bucket (and 404 for the rest, so containerd goes on to the
registry itself), and /metrics and /healthz on a loopback address.

It runs until SIGTERM or SIGINT, and tells systemd (Type=notify) when it is
ready. S3 credentials come from the AWS SDK's default chain (instance role,
IRSA, Pod Identity, environment, profile); the global --endpoint, --region,
--profile and --path-style flags do not apply: the config file's [s3] table
does.

The config file (TOML; unknown keys are errors):

  root   = "/var/lib/s3snap"            # snapshotter state (default)
  socket = "/run/s3snap/s3snap.sock"    # gRPC socket, 0600 (default)

  [mirror]
  address = "127.0.0.1:505"             # loopback only; a port below 1024, which
                                        # no other user can bind (default)
  spool_max_bytes = "2GiB"              # verified blobs on disk (default: 10% of root's fs, <= 4GiB);
                                        # a larger blob gets a 503 and comes from the registry
  max_concurrent_fetches = 8            # blobs read from S3 at once (default 8)

  [metrics]
  address = "127.0.0.1:506"             # /metrics, /healthz; loopback only (default)

  [s3]
  region = "us-east-1"                  # default: from the environment or instance
  # endpoint = "http://127.0.0.1:9000"  # S3-compatible server
  # path_style = true                   # default: true when endpoint is set
  # profile = "nodes"

  [fetch]
  part_size = "8MiB"                    # one ranged GET (default 8MiB)
  concurrency = 16                      # ranged GETs in flight per layer (default 16)

  # Images of this registry host are looked for under this bucket and
  # prefix (the prefix is taken as written: no probing).
  [lazy]
  enabled = false                       # mount indexed layers with FUSE, read on demand (default off)
  # server = "external"                 # the lazy FUSE server is run apart (s3snap agent
                                        # fused); default "agent": the agent starts it

  [[registry]]
  host  = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
  store = "s3://my-images/ecr"

containerd needs the proxy plugin, the transfer service's unpack_config,
for kubelet the CRI settings, and a hosts.toml per mapped registry putting
the mirror first; --print-containerd-config prints all of them for the
loaded config:

  [proxy_plugins.s3snap]
    type = "snapshot"
    address = "/run/s3snap/s3snap.sock"
    [proxy_plugins.s3snap.exports]
      root = "/var/lib/s3snap"
      enable_remote_snapshot_annotations = "true"

  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "s3snap"
    disable_snapshot_annotations = false
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "/etc/containerd/certs.d"

  # /etc/containerd/certs.d/123456789012.dkr.ecr.us-east-1.amazonaws.com/hosts.toml
  server = "https://123456789012.dkr.ecr.us-east-1.amazonaws.com"
  [host."http://127.0.0.1:505"]
    capabilities = ["pull", "resolve"]`

const agentExample = `  # Run under systemd (Type=notify)
  s3snap agent --config /etc/s3snap/config.toml

  # Check a config and print the containerd settings it needs
  s3snap agent --config /etc/s3snap/config.toml --print-containerd-config`

func newAgentCmd(g *globals) *cobra.Command {
	var (
		configPath  string
		printConfig bool
		hostsDir    string
	)
	cmd := &cobra.Command{
		Use:     "agent",
		Short:   "Run the node agent: containerd snapshotter and loopback mirror backed by S3",
		Long:    agentLong,
		Example: agentExample,
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := agentconfig.Load(configPath)
			if err != nil {
				return err
			}
			if printConfig {
				printContainerdConfig(g, cfg, hostsDir)
				return nil
			}
			if !cmd.Flags().Changed("log-level") {
				_ = log.SetLevel("info") // a daemon logs what it does
			}
			level := "" // the server's default (info), unless set
			if cmd.Flags().Changed("log-level") {
				level = g.logLevel
			}
			return agent.Run(cmd.Context(), cfg, agent.WithVersion(readBuildInfo().Version), agent.WithConfigPath(configPath, level))
		},
	}
	cmd.AddCommand(newAgentFusedCmd(g))
	f := cmd.Flags()
	f.StringVar(&configPath, "config", agentconfig.DefaultConfigPath, "agent config file (TOML)")
	f.BoolVar(&printConfig, "print-containerd-config", false, "print the containerd config and hosts.toml files the loaded config needs, and exit")
	f.StringVar(&hostsDir, "hosts-dir", agentconfig.DefaultHostsDir, "containerd registry config_path, for --print-containerd-config")
	return cmd
}

func printContainerdConfig(g *globals, cfg agentconfig.Config, hostsDir string) {
	w := g.stdout
	fmt.Fprintf(w, "# containerd config.toml (version 3), s3snap's part:\n\n%s", agentconfig.ContainerdConfig(cfg, agentconfig.ContainerdOptions{HostsDir: hostsDir, CRI: true}))
	for _, r := range cfg.Registry {
		fmt.Fprintf(w, "\n# %s\n%s", agentconfig.HostsTOMLPath(hostsDir, r.Host), agentconfig.HostsTOML(cfg, r.Host, ""))
	}
}

// newAgentFusedCmd is the lazy FUSE server the agent starts; run by hand
// only to stop it.
func newAgentFusedCmd(g *globals) *cobra.Command {
	var (
		configPath string
		stop       bool
		ifIdle     bool
	)
	cmd := &cobra.Command{
		Use:   "fused",
		Short: "Serve the agent's lazy FUSE mounts (started by the agent; --stop stops it)",
		Long: `Serve the lazy (FUSE) mounts of the agent whose config is given, in a process
of their own that outlives the agent: restarts, crashes and upgrades of the
agent do not interrupt running containers' reads. The agent starts it when
it needs it, detached; a running one is re-used by the next agent.

--stop asks the running server to unmount everything (detaching mounts in
use: running containers' lazy reads then fail) and exit; with --if-idle only
when it holds no mount.`,
		Hidden: true,
		Args:   exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := agentconfig.Load(configPath)
			if err != nil {
				return err
			}
			if stop {
				err := fused.NewClient(cfg.Root).Shutdown(cmd.Context(), ifIdle, 30*time.Second)
				if errors.Is(err, fused.ErrNotRunning) {
					fmt.Fprintln(g.stdout, "the lazy FUSE server is not running")
					return nil
				}
				return err
			}
			if !cmd.Flags().Changed("log-level") {
				_ = log.SetLevel("info")
			}
			return agent.RunFused(cmd.Context(), cfg, readBuildInfo().Version)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", agentconfig.DefaultConfigPath, "agent config file (TOML)")
	f.BoolVar(&stop, "stop", false, "stop the running server (unmounting every lazy layer) and exit")
	f.BoolVar(&ifIdle, "if-idle", false, "with --stop: only if it holds no mount")
	return cmd
}
