package config

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containerd/platforms"
)

// PluginName is the name the snapshotter is registered under in
// containerd's proxy_plugins (and given to --snapshotter).
const PluginName = "s3snap"

// DefaultHostsDir is containerd's conventional registry config_path.
const DefaultHostsDir = "/etc/containerd/certs.d"

// ContainerdOptions shape the containerd config snippet.
type ContainerdOptions struct {
	// HostsDir is the registry config_path holding hosts.toml files
	// (default DefaultHostsDir).
	HostsDir string
	// CRI adds the CRI image service settings (kubelet pulls).
	CRI bool
	// Platform of the transfer service's unpack entries (default: this
	// machine's).
	Platform string
}

// ContainerdConfig returns the containerd 2.x (config version 3) snippet
// that registers the agent's snapshotter: the proxy plugin with
// exports.root (kubelet image GC reads disk usage there) and
// enable_remote_snapshot_annotations (the transfer service of containerd
// 2.1+ passes layer labels only then), unpack_config entries so the
// transfer service (ctr, containerd 2.1+) may unpack into it, and with CRI
// the CRI image service settings.
func ContainerdConfig(cfg Config, opts ContainerdOptions) string {
	if opts.HostsDir == "" {
		opts.HostsDir = DefaultHostsDir
	}
	if opts.Platform == "" {
		opts.Platform = platforms.Format(platforms.DefaultSpec())
	}
	var b strings.Builder
	fmt.Fprintf(&b, `[proxy_plugins.%[1]s]
  type = "snapshot"
  address = %[2]q
  [proxy_plugins.%[1]s.exports]
    root = %[3]q
    enable_remote_snapshot_annotations = "true"

# Setting unpack_config replaces the default, so overlayfs is listed too.
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = %[4]q
  snapshotter = "overlayfs"

[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = %[4]q
  snapshotter = %[1]q
`, PluginName, cfg.Socket, cfg.Root, opts.Platform)
	if opts.CRI {
		fmt.Fprintf(&b, `
[plugins."io.containerd.cri.v1.images"]
  snapshotter = %[1]q
  disable_snapshot_annotations = false

[plugins."io.containerd.cri.v1.images".registry]
  config_path = %[2]q
`, PluginName, opts.HostsDir)
	}
	return b.String()
}

// HostsTOML returns the hosts.toml for upstream registry host: the agent's
// mirror first (pull and resolve), then server, the registry itself
// (default https://host), which containerd falls back to for whatever the
// mirror answers 404 or 5xx.
func HostsTOML(cfg Config, host, server string) string {
	if server == "" {
		server = "https://" + host
	}
	return fmt.Sprintf(`server = %q

[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, server, cfg.Mirror.Address)
}

// HostsTOMLPath is where containerd looks for host's hosts.toml under
// hostsDir.
func HostsTOMLPath(hostsDir, host string) string {
	return filepath.Join(hostsDir, host, "hosts.toml")
}
