package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	agentconfig "github.com/s3snap/s3snap/agent/config"
	"github.com/s3snap/s3snap/systemd"
)

const installLong = `Install the node agent: run once at AMI bake time (or on a live node).

It writes, below --root ("/" on a node; an image tree in Packer or EC2 Image
Builder):

  /usr/local/bin/s3snap                       this binary
  /etc/s3snap/config.toml                     the agent's config, from the flags
  /etc/systemd/system/s3snap.service          the agent's unit (Type=notify,
                                              Before=containerd.service), enabled
  /etc/systemd/system/containerd.service.d/10-s3snap.conf
                                              containerd starts the agent with it
  /etc/containerd/config.toml                 s3snap's settings merged into yours
  <config_path>/<registry host>/hosts.toml    the loopback mirror first, then the
                                              registry

containerd's config keeps every setting it had: s3snap adds its proxy plugin,
makes it the CRI snapshotter with snapshot annotations enabled, sets
config_path if unset, and for containerd 2.1+ adds the transfer service's
unpack_config (overlayfs kept). A config with version = 2 (containerd 1.7)
gets the 1.7 keys, version 3 or 4 (containerd 2.x) the 2.x ones. The
containerd version is read from the containerd binary in the root, or given
with --containerd-version. The file is rewritten as canonical TOML (comments
are not kept); the original is saved once as config.toml.pre-s3snap, as is
any file s3snap replaces. A file it rewrites keeps its mode and owner (a
config.toml holding registry credentials at 0600 stays 0600); a config.toml
it creates is 0600.

Running it again changes nothing (no file is rewritten, no new backup); run
without --bucket it keeps the installed agent config, so upgrading is
"copy the new binary, run s3snap install". --uninstall takes it all out again,
s3snap's keys out of containerd's config, and restores replaced hosts.toml
files. In the live root it runs 'systemctl daemon-reload' after a change;
restart containerd (or reboot) to apply.`

const installExample = `  # At AMI bake time, into the image being built
  s3snap install --root /mnt/image --bucket my-images --prefix ecr \
    --registry 123456789012.dkr.ecr.us-east-1.amazonaws.com

  # On a running node, then apply
  s3snap install --bucket my-images --registry 123456789012.dkr.ecr.us-east-1.amazonaws.com
  systemctl restart containerd

  # The bucket's region and an S3-compatible endpoint go into the agent's [s3]
  s3snap install --bucket images --registry registry.example.com \
    --region us-east-1 --endpoint http://127.0.0.1:9000

  # What would change, as JSON
  s3snap install --dry-run -o json --bucket my-images --registry public.ecr.aws

  # Take it out again
  s3snap install --uninstall`

func newInstallCmd(g *globals) *cobra.Command {
	var (
		o          systemd.Options
		s          systemd.AgentSettings
		registries []string
		uninstall  bool
	)
	cmd := &cobra.Command{
		Use:     "install",
		Short:   "Install the agent's systemd units and config, and merge containerd's config",
		Long:    installLong,
		Example: installExample,
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Upstreams = map[string]string{}
			for _, r := range registries {
				host, server, _ := strings.Cut(r, "=")
				if host == "" {
					return usagef("--registry %q: want HOST or HOST=https://SERVER", r)
				}
				if server != "" && !strings.HasPrefix(server, "https://") && !strings.HasPrefix(server, "http://") {
					return usagef("--registry %q: the server must be an http:// or https:// URL", r)
				}
				s.Registries = append(s.Registries, host)
				if server != "" {
					o.Upstreams[host] = server
				}
			}
			f := cmd.Flags()
			given := s.Bucket != "" || len(s.Registries) > 0
			if !uninstall && given {
				if s.Bucket == "" || len(s.Registries) == 0 {
					return usagef("give both --bucket and --registry (or neither, to keep the installed agent config)")
				}
				// The global --region and --endpoint go into the agent's [s3].
				s.Region, s.Endpoint = g.region, g.endpoint
				o.Agent = &s
			}
			if uninstall && (given || f.Changed("prefix")) {
				return usagef("--uninstall takes no --bucket, --prefix or --registry")
			}
			run := systemd.Install
			if uninstall {
				run = systemd.Uninstall
			}
			res, err := run(cmd.Context(), o)
			if errors.Is(err, systemd.ErrNoAgentConfig) {
				return usagef("%w: give --bucket and --registry", err)
			}
			if err != nil {
				return err
			}
			if g.json() {
				return writeJSON(g.stdout, res)
			}
			w := g.stdout
			for _, c := range res.Changes {
				line := fmt.Sprintf("%-10s %s", c.Action, c.Path)
				if c.Backup != "" {
					line += "  (was saved as " + c.Backup + ")"
				}
				if c.Note != "" {
					line += "  (" + c.Note + ")"
				}
				fmt.Fprintln(w, line)
			}
			for _, warn := range res.Warnings {
				fmt.Fprintln(g.stderr, "warning:", warn)
			}
			for _, h := range res.Hints {
				fmt.Fprintln(g.stderr, "hint:", h)
			}
			if res.ContainerdVersion == "" && !uninstall {
				fmt.Fprintln(g.stderr, "hint: pass --containerd-version if containerd is 2.1 or newer")
			}
			verb := "installed"
			if uninstall {
				verb = "uninstalled"
			}
			switch {
			case !res.Changed():
				fmt.Fprintf(w, "nothing to do: s3snap is already %s in %s\n", verb, o.Root)
			case o.DryRun:
				fmt.Fprintln(w, "dry run: nothing written")
			default:
				fmt.Fprintf(w, "s3snap %s in %s (containerd %s, config version %d, hosts.toml in %s)\n",
					verb, o.Root, orUnknown(res.ContainerdVersion), res.ConfigVersion, res.HostsDir)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Root, "root", "/", "install into this root file system (an image tree at bake time)")
	f.BoolVar(&uninstall, "uninstall", false, "remove what install wrote and s3snap's settings from containerd's config")
	f.BoolVar(&o.DryRun, "dry-run", false, "report what would change and write nothing")
	f.StringVar(&s.Bucket, "bucket", "", "bucket holding the images")
	f.StringVar(&s.Prefix, "prefix", "", "key prefix of the store in the bucket")
	f.StringArrayVar(&registries, "registry", nil, "registry host whose images are in the bucket (repeatable); HOST=https://SERVER sets the upstream hosts.toml falls back to")
	f.StringVar(&s.Socket, "socket", "", "agent gRPC socket (default "+agentconfig.DefaultSocket+")")
	f.StringVar(&s.Root, "state-dir", "", "agent state directory (default "+agentconfig.DefaultRoot+")")
	f.StringVar(&s.Mirror, "mirror-address", "", "loopback mirror address (default "+agentconfig.DefaultMirrorAddress+")")
	f.StringVar(&s.Metrics, "metrics-address", "", "loopback metrics address (default "+agentconfig.DefaultMetricsAddress+")")
	f.BoolVar(&s.Lazy, "lazy", false, "turn on lazy (FUSE) mounts for layers indexed by 's3snap index'")
	f.StringVar(&o.AgentConfigPath, "config", agentconfig.DefaultConfigPath, "where the agent's config goes (node path)")
	f.StringVar(&o.ContainerdConfig, "containerd-config", systemd.ContainerdCfg, "containerd's config (node path)")
	f.StringVar(&o.ContainerdVersion, "containerd-version", "", "containerd version, e.g. 1.7 or 2.1 (default: ask the containerd binary in the root)")
	f.StringVar(&o.HostsDir, "hosts-dir", "", "containerd registry config_path for the hosts.toml files (default: the config's, else "+agentconfig.DefaultHostsDir+")")
	f.StringVar(&o.Binary, "binary", "", "s3snap binary to install (default: this one)")
	return cmd
}

func orUnknown(s string) string {
	if s == "" {
		return "version unknown"
	}
	return s
}
