package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	agentconfig "github.com/s3snap/s3snap/agent/config"
	"github.com/s3snap/s3snap/doctor"
	"github.com/s3snap/s3snap/systemd"
)

const doctorLong = `Check this node's s3snap set-up, piece by piece, and say what is broken and
how to fix it:

  agent config        /etc/s3snap/config.toml parses and validates
  agent ports         the mirror and metrics ports are below 1024 (below
                      net.ipv4.ip_unprivileged_port_start), so no other
                      user can take them while the agent is down (warning)
  containerd          running; its version; s3snap's proxy plugin loaded
  containerd config   the plugin at the agent's socket, s3snap as the CRI's
                      snapshotter, snapshot annotations enabled (1.7:
                      disable_snapshot_annotations = false; 2.x:
                      enable_remote_snapshot_annotations and unpack_config)
  hosts.toml          each mapped registry's file puts the mirror first
  agent socket        the snapshotter socket answers (and is 0600)
  mirror              the loopback mirror answers /v2/
  agent health        the agent's /healthz: it reaches its buckets
  aws credentials     where the SDK's default chain found credentials (never
                      the secret)
  bucket ...          each store's bucket lists (s3:ListBucket)
  lazy index ...      with [lazy] enabled: one lazy-pull index of each store is
                      found and read (fails if S3 denies it: lazy mode would
                      never engage; warns if the bucket has none)
  blob fetch          one layer fetched, digest-verified and timed

Every check runs even after one fails, so one run names every broken piece.
Exit code: 0 when nothing failed (warnings allowed), 1 when a check failed.`

const doctorExample = `  s3snap doctor
  s3snap doctor -o json | jq '.checks[] | select(.status != "ok")'`

func newDoctorCmd(g *globals) *cobra.Command {
	var o doctor.Options
	cmd := &cobra.Command{
		Use:     "doctor",
		Short:   "Check the node's agent, containerd, config and bucket access",
		Long:    doctorLong,
		Example: doctorExample,
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep := doctor.Run(cmd.Context(), o)
			if g.json() {
				if err := writeJSON(g.stdout, rep); err != nil {
					return err
				}
			} else {
				printDoctor(g, rep)
			}
			if n := rep.Failed(); n > 0 {
				return fmt.Errorf("%d check(s) failed (listed above)", n)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.AgentConfig, "config", agentconfig.DefaultConfigPath, "the agent's config")
	f.StringVar(&o.ContainerdConfig, "containerd-config", systemd.ContainerdCfg, "containerd's config")
	f.StringVar(&o.ContainerdAddress, "containerd-address", doctor.DefaultContainerdAddress, "containerd's gRPC socket")
	f.DurationVar(&o.Timeout, "timeout", 10*time.Second, "time limit of each network check")
	return cmd
}

func printDoctor(g *globals, rep *doctor.Report) {
	w := g.stdout
	for _, c := range rep.Checks {
		st := strings.ToUpper(string(c.Status))
		if c.Status == doctor.OK {
			st = "ok"
		}
		detail := strings.ReplaceAll(c.Detail, "\n", "\n"+strings.Repeat(" ", 27))
		fmt.Fprintf(w, "%-5s %-20s %s\n", st, c.Name, detail)
		if c.Fix != "" && (c.Status == doctor.Fail || c.Status == doctor.Warn) {
			fmt.Fprintf(w, "%27sfix: %s\n", "", c.Fix)
		}
	}
	switch rep.Status {
	case doctor.Fail:
		fmt.Fprintln(w, "\nunhealthy: pulls fall back to the registry (see FAIL above)")
	case doctor.Warn:
		fmt.Fprintln(w, "\nworking, with warnings")
	default:
		fmt.Fprintln(w, "\nhealthy")
	}
}
