package systemd

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"

	agentconfig "github.com/s3snap/s3snap/agent/config"
)

// AgentSettings are the installer's flags for the agent's config file.
// Empty fields take the agent's defaults.
type AgentSettings struct {
	Bucket     string
	Prefix     string
	Registries []string // registry hosts whose images live in the bucket
	Region     string
	Endpoint   string
	Root       string // snapshotter state dir
	Socket     string
	Mirror     string // mirror host:port
	Metrics    string // metrics host:port
	// Lazy turns on lazy (FUSE) mounts of layers that have an index.
	Lazy bool
}

// render writes the settings as a commented config file.
func (s AgentSettings) render() string {
	var b strings.Builder
	b.WriteString("# s3snap node agent config, written by `s3snap install`.\n# See `s3snap agent --help` for every setting.\n\n")
	kv := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, "%s = %q\n", k, v)
		}
	}
	kv("root", s.Root)
	kv("socket", s.Socket)
	if s.Mirror != "" {
		b.WriteString("\n[mirror]\n")
		kv("address", s.Mirror)
	}
	if s.Metrics != "" {
		b.WriteString("\n[metrics]\n")
		kv("address", s.Metrics)
	}
	if s.Lazy {
		b.WriteString("\n# Layers with a lazy-pull index (s3snap index) are mounted with FUSE and\n# read on demand.\n[lazy]\nenabled = true\n")
	}
	b.WriteString("\n# Credentials come from the AWS SDK's default chain (the instance role).\n[s3]\n")
	kv("region", s.Region)
	kv("endpoint", s.Endpoint)
	store := "s3://" + s.Bucket
	if p := strings.Trim(s.Prefix, "/"); p != "" {
		store += "/" + p
	}
	for _, h := range s.Registries {
		fmt.Fprintf(&b, "\n[[registry]]\nhost = %q\nstore = %q\n", h, store)
	}
	return b.String()
}

// agentConfig returns the agent config to install and its file's text:
// rendered from o.Agent, or else the one already installed.
func agentConfig(t *tree, o Options) (agentconfig.Config, string, error) {
	if o.Agent != nil {
		if o.Agent.Bucket == "" {
			return agentconfig.Config{}, "", fmt.Errorf("%w: no bucket", ErrInvalid)
		}
		if len(o.Agent.Registries) == 0 {
			return agentconfig.Config{}, "", fmt.Errorf("%w: no registry host", ErrInvalid)
		}
		text := o.Agent.render()
		cfg, err := agentconfig.Parse([]byte(text))
		if err != nil {
			return agentconfig.Config{}, "", fmt.Errorf("%w: agent config: %w", ErrInvalid, err)
		}
		return cfg, text, nil
	}
	b, err := t.read(o.AgentConfigPath)
	if errors.Is(err, fs.ErrNotExist) {
		return agentconfig.Config{}, "", fmt.Errorf("%w at %s", ErrNoAgentConfig, o.AgentConfigPath)
	}
	if err != nil {
		return agentconfig.Config{}, "", err
	}
	cfg, err := agentconfig.Parse(b)
	if err != nil {
		return agentconfig.Config{}, "", fmt.Errorf("installed agent config %s: %w", o.AgentConfigPath, err)
	}
	return cfg, string(b), nil
}

// hostsMarker marks a hosts.toml s3snap wrote (uninstall removes only those).
const hostsMarker = "# Written by s3snap install"

func hostsTOML(cfg agentconfig.Config, host, server string) []byte {
	return []byte(hostsMarker + ": the agent's loopback mirror first, then the registry.\n" + agentconfig.HostsTOML(cfg, host, server))
}
