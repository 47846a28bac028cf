// Package systemd installs the node agent into a root file system, at AMI
// bake time or on a running node: the s3snap binary, its systemd units, its
// config file, s3snap's part of containerd's config.toml (merged into the
// user's, for containerd 1.7's config version 2 and 2.x's versions 3 and 4)
// and a hosts.toml per mapped registry putting the agent's mirror first.
//
// containerd's config is read as containerd reads it, the files its imports
// name merged in (LoadContainerd): a drop-in that overrides s3snap's
// settings is named in the install's warnings, and doctor checks the same
// merged view. The agent's settings come from agent/config, so installing
// links neither the agent nor the snapshotter.
//
// Every step compares before it writes, so running the installer twice
// changes nothing the second time; a file it replaces is backed up once, as
// <file>.pre-s3snap.
package systemd

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/log"

	agentconfig "github.com/s3snap/s3snap/agent/config"
)

// The unit files, as shipped in this directory.
//
//go:embed s3snap.service containerd-s3snap.conf
var units embed.FS

// Node paths of what Install writes (below Options.Root).
const (
	BinaryPath    = "/usr/local/bin/s3snap"
	UnitPath      = "/etc/systemd/system/s3snap.service"
	DropInPath    = "/etc/systemd/system/containerd.service.d/10-s3snap.conf"
	WantsLink     = "/etc/systemd/system/multi-user.target.wants/s3snap.service"
	ContainerdCfg = "/etc/containerd/config.toml"
	// BackupSuffix names the one copy kept of a file as it was before
	// s3snap first changed it.
	BackupSuffix = ".pre-s3snap"
)

// Options say what to install where.
type Options struct {
	// Root is the file system to install into: "/" on a node, or an image
	// tree being built (Packer, EC2 Image Builder). Paths written into
	// config files are node paths, never prefixed with Root.
	Root string
	// Binary is the s3snap executable to copy to BinaryPath (default: the
	// running one).
	Binary string
	// AgentConfigPath is the node path of the agent's config
	// (default agentconfig.DefaultConfigPath).
	AgentConfigPath string
	// Agent is the agent config to write. Nil keeps the one already at
	// AgentConfigPath (a re-run after upgrading the binary).
	Agent *AgentSettings
	// ContainerdConfig is the node path of containerd's config
	// (default ContainerdCfg).
	ContainerdConfig string
	// ContainerdVersion is "1.7", "2.1", ...; empty detects it from the
	// containerd binary in Root, else from the config's version.
	ContainerdVersion string
	// HostsDir is the node path of containerd's registry config_path. Empty
	// keeps the config's own (its first directory), else
	// agentconfig.DefaultHostsDir.
	HostsDir string
	// Upstreams maps a registry host to the server URL its hosts.toml falls
	// back to (default https://HOST).
	Upstreams map[string]string
	// DryRun reports what would change and writes nothing.
	DryRun bool
}

// Change is one file the installer created, updated, removed or left as it
// was.
type Change struct {
	Path   string `json:"path"`   // node path
	Action string `json:"action"` // created, updated, removed, unchanged, absent
	Backup string `json:"backup,omitempty"`
	Note   string `json:"note,omitempty"`
}

// Result is what an Install or Uninstall did.
type Result struct {
	ContainerdVersion string   `json:"containerd_version"`
	ConfigVersion     int      `json:"containerd_config_version"`
	HostsDir          string   `json:"hosts_dir"`
	Changes           []Change `json:"changes"`
	Warnings          []string `json:"warnings,omitempty"`
	// Hints are what would make the node faster, not what is wrong.
	Hints []string `json:"hints,omitempty"`
}

// Changed reports whether any file was (or, in a dry run, would be) written
// or removed.
func (r *Result) Changed() bool {
	for _, c := range r.Changes {
		if c.Action != "unchanged" && c.Action != "absent" {
			return true
		}
	}
	return false
}

// ErrInvalid is wrapped by errors about the options or the files found.
var ErrInvalid = errors.New("invalid install")

// ErrNoAgentConfig is returned when no agent settings are given and none
// are installed yet.
var ErrNoAgentConfig = fmt.Errorf("%w: no agent settings given and no agent config", ErrInvalid)

func (o *Options) defaults() error {
	if o.Root == "" {
		o.Root = "/"
	}
	if !filepath.IsAbs(o.Root) {
		abs, err := filepath.Abs(o.Root)
		if err != nil {
			return err
		}
		o.Root = abs
	}
	if o.AgentConfigPath == "" {
		o.AgentConfigPath = agentconfig.DefaultConfigPath
	}
	if o.ContainerdConfig == "" {
		o.ContainerdConfig = ContainerdCfg
	}
	for _, p := range []string{o.AgentConfigPath, o.ContainerdConfig} {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("%w: %q: a node path must be absolute", ErrInvalid, p)
		}
	}
	if o.HostsDir != "" && !filepath.IsAbs(o.HostsDir) {
		return fmt.Errorf("%w: hosts dir %q: must be absolute", ErrInvalid, o.HostsDir)
	}
	return nil
}

// Install writes everything the agent needs into Root. See the package doc.
func Install(ctx context.Context, o Options) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	fs := &tree{root: o.Root, dryRun: o.DryRun}
	res := &Result{}

	cfg, cfgText, err := agentConfig(fs, o)
	if err != nil {
		return nil, err
	}
	res.ContainerdVersion, err = containerdVersion(ctx, o)
	if err != nil {
		return nil, err
	}
	current, err := fs.read(o.ContainerdConfig)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	merged, err := mergeContainerd(current, mergeOptions{
		agent:      cfg,
		ctrVersion: res.ContainerdVersion,
		hostsDir:   o.HostsDir,
	})
	if err != nil {
		return nil, fmt.Errorf("containerd config %s: %w", o.ContainerdConfig, err)
	}
	res.ConfigVersion, res.HostsDir = merged.version, merged.hostsDir
	res.Warnings = append(res.Warnings, merged.warnings...)
	major, _ := splitVersion(res.ContainerdVersion)
	overrides, err := importOverrides(o.Root, o.ContainerdConfig, merged.data, WithDaemonMajor(major))
	if err != nil {
		return nil, fmt.Errorf("containerd config %s: %w", o.ContainerdConfig, err)
	}
	res.Warnings = append(res.Warnings, overrides...)
	if h := InflaterHint(o.Root); h != "" {
		res.Hints = append(res.Hints, h)
	}

	bin := o.Binary
	if bin == "" {
		if bin, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find the s3snap binary: %w", err)
		}
	}
	binData, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("read the s3snap binary: %w", err)
	}
	service, _ := units.ReadFile("s3snap.service")
	dropIn, _ := units.ReadFile("containerd-s3snap.conf")
	service = []byte(strings.ReplaceAll(string(service), agentconfig.DefaultConfigPath, o.AgentConfigPath))

	// A file that exists keeps its mode and owner; the binary is always
	// 0755. A new containerd config is 0600: only containerd (root) reads
	// it, and registry credentials are often added to it later.
	steps := []struct {
		path   string
		data   []byte
		mode   fileMode
		backup bool
	}{
		{BinaryPath, binData, fileMode{perm: 0o755}, false},
		{o.AgentConfigPath, []byte(cfgText), fileMode{perm: 0o600, keep: true}, true},
		{UnitPath, service, fileMode{perm: 0o644, keep: true}, true},
		{DropInPath, dropIn, fileMode{perm: 0o644, keep: true}, true},
		{o.ContainerdConfig, merged.data, fileMode{perm: 0o600, keep: true}, true},
	}
	for _, s := range steps {
		c, err := fs.write(s.path, s.data, s.mode, s.backup)
		if err != nil {
			return nil, err
		}
		res.Changes = append(res.Changes, c)
	}
	for _, r := range cfg.Registry {
		c, err := fs.write(agentconfig.HostsTOMLPath(merged.hostsDir, r.Host), hostsTOML(cfg, r.Host, o.Upstreams[r.Host]), fileMode{perm: 0o644, keep: true}, true)
		if err != nil {
			return nil, err
		}
		res.Changes = append(res.Changes, c)
	}
	// What `systemctl enable` does, without needing systemd to run (an
	// image tree has none).
	c, err := fs.symlink(WantsLink, UnitPath)
	if err != nil {
		return nil, err
	}
	res.Changes = append(res.Changes, c)
	if res.Changed() && !o.DryRun {
		reload(ctx, o.Root)
	}
	log.G(ctx).WithField("root", o.Root).WithField("changed", res.Changed()).Debug("install done")
	return res, nil
}

// Uninstall removes what Install wrote and takes s3snap's settings back
// out of containerd's config (keeping the user's). Backups are kept.
func Uninstall(ctx context.Context, o Options) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	fs := &tree{root: o.Root, dryRun: o.DryRun}
	res := &Result{}
	var hosts []string
	if b, err := fs.read(o.AgentConfigPath); err == nil {
		if cfg, err := agentconfig.Parse(b); err == nil {
			for _, r := range cfg.Registry {
				hosts = append(hosts, r.Host)
			}
		} else {
			res.Warnings = append(res.Warnings, fmt.Sprintf("agent config %s unreadable (%v): hosts.toml files left in place", o.AgentConfigPath, err))
		}
	}
	current, err := fs.read(o.ContainerdConfig)
	switch {
	case err == nil:
		out, err := unmergeContainerd(current, o.HostsDir)
		if err != nil {
			return nil, fmt.Errorf("containerd config %s: %w", o.ContainerdConfig, err)
		}
		res.ConfigVersion, res.HostsDir = out.version, out.hostsDir
		c, err := fs.write(o.ContainerdConfig, out.data, fileMode{perm: 0o600, keep: true}, true)
		if err != nil {
			return nil, err
		}
		res.Changes = append(res.Changes, c)
	case errors.Is(err, os.ErrNotExist):
		res.HostsDir = o.HostsDir
	default:
		return nil, err
	}
	if res.HostsDir == "" {
		res.HostsDir = agentconfig.DefaultHostsDir
	}
	for _, h := range hosts {
		c, err := fs.removeIfOurs(agentconfig.HostsTOMLPath(res.HostsDir, h), hostsMarker)
		if err != nil {
			return nil, err
		}
		res.Changes = append(res.Changes, c)
	}
	for _, p := range []string{WantsLink, DropInPath, UnitPath, o.AgentConfigPath, BinaryPath} {
		c, err := fs.remove(p)
		if err != nil {
			return nil, err
		}
		res.Changes = append(res.Changes, c)
	}
	if res.Changed() && !o.DryRun {
		reload(ctx, o.Root)
	}
	return res, nil
}
