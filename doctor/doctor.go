// Package doctor checks a node's s3snap set-up piece by piece, as `s3snap
// doctor` reports it: the agent's config, containerd (running, version,
// s3snap's plugin loaded), containerd's config as containerd merges it with
// its imports (plugin, CRI snapshotter, snapshot annotations), hosts.toml
// files, the agent's ports (only root may bind them), socket, lazy FUSE
// server, mirror and health, the AWS credentials' source, each bucket
// (and, in lazy mode, one lazy index of each), and one timed blob fetch. Each failed check says
// what is wrong and how to fix it. It reads the agent's settings through
// agent/config and never links the agent or the snapshotter.
package doctor

import (
	"context"
	"fmt"
	"time"

	agentconfig "github.com/s3snap/s3snap/agent/config"
	"github.com/s3snap/s3snap/systemd"
)

// Status of one check.
type Status string

// Statuses, from best to worst.
const (
	OK   Status = "ok"
	Warn Status = "warn" // works, but not as it should
	Fail Status = "fail" // broken: pulls do not come from S3
	Skip Status = "skip" // not checked: something it needs failed
)

// Check is the outcome of one check.
type Check struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Report is every check, in order.
type Report struct {
	Status Status  `json:"status"` // the worst of the checks (skip counts as ok)
	Checks []Check `json:"checks"`
}

// Failed counts the failed checks.
func (r *Report) Failed() int {
	n := 0
	for _, c := range r.Checks {
		if c.Status == Fail {
			n++
		}
	}
	return n
}

// Options say where things are on the node.
type Options struct {
	AgentConfig       string // default agentconfig.DefaultConfigPath
	ContainerdConfig  string // default systemd.ContainerdCfg
	ContainerdAddress string // default /run/containerd/containerd.sock
	// Timeout bounds each network check (default 10s).
	Timeout time.Duration
}

// DefaultContainerdAddress is containerd's default gRPC socket.
const DefaultContainerdAddress = "/run/containerd/containerd.sock"

// run carries what earlier checks found to later ones.
type run struct {
	o      Options
	report *Report
	cfg    *agentconfig.Config
	ctr    *containerdConfig
}

func (r *run) add(c Check) {
	r.report.Checks = append(r.report.Checks, c)
	switch {
	case c.Status == Fail:
		r.report.Status = Fail
	case c.Status == Warn && r.report.Status == OK:
		r.report.Status = Warn
	}
}

func (r *run) skip(name, why string) { r.add(Check{Name: name, Status: Skip, Detail: why}) }

func (r *run) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, r.o.Timeout)
}

// Run runs every check and returns the report; it never stops at the
// first failure, so one run names every broken piece.
func Run(ctx context.Context, o Options) *Report {
	if o.AgentConfig == "" {
		o.AgentConfig = agentconfig.DefaultConfigPath
	}
	if o.ContainerdConfig == "" {
		o.ContainerdConfig = systemd.ContainerdCfg
	}
	if o.ContainerdAddress == "" {
		o.ContainerdAddress = DefaultContainerdAddress
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	r := &run{o: o, report: &Report{Status: OK}}
	r.agentConfig()
	r.ports()
	r.containerd(ctx)
	r.containerdConfig()
	r.hostsTOML()
	r.socket(ctx)
	r.lazyServer(ctx)
	r.mirror(ctx)
	r.health(ctx)
	r.s3(ctx)
	r.inflater()
	return r.report
}

// inflater reports which gzip decoder eager pulls get (a warning, not a
// failure: Go's own works, only slower).
func (r *run) inflater() {
	const name = "gzip inflater"
	if h := systemd.InflaterHint("/"); h != "" {
		r.add(Check{Name: name, Status: Warn, Detail: h})
		return
	}
	r.add(Check{Name: name, Status: OK, Detail: "igzip (ISA-L) on PATH: containerd and the agent inflate layers with it"})
}

func (r *run) agentConfig() {
	const name = "agent config"
	cfg, err := agentconfig.Load(r.o.AgentConfig)
	if err != nil {
		r.add(Check{Name: name, Status: Fail, Detail: err.Error(),
			Fix: "write it with `s3snap install --bucket BUCKET --registry HOST`, or fix the error above"})
		return
	}
	r.cfg = &cfg
	r.add(Check{Name: name, Status: OK, Detail: fmt.Sprintf("%s: %d registr%s mapped", r.o.AgentConfig, len(cfg.Registry), plural(len(cfg.Registry), "y", "ies"))})
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
