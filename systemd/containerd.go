package systemd

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/platforms"
	"github.com/pelletier/go-toml/v2"

	agentconfig "github.com/s3snap/s3snap/agent/config"
)

// Plugin sections s3snap sets, by config version.
const (
	criV2        = "io.containerd.grpc.v1.cri" // version 2 (containerd 1.7)
	criImagesV3  = "io.containerd.cri.v1.images"
	transferPlug = "io.containerd.transfer.v1.local"
)

type mergeOptions struct {
	agent      agentconfig.Config
	ctrVersion string // "1.7.27", "2.4.2" or "" (unknown)
	hostsDir   string // wanted config_path ("" keeps the config's)
	platform   string // of the unpack_config entries (default: this machine's)
}

type merged struct {
	data     []byte
	version  int
	hostsDir string
	warnings []string
}

// mergeContainerd returns containerd config cur with s3snap's settings set
// and everything else kept: the proxy plugin (with exports.root for
// kubelet's image GC and enable_remote_snapshot_annotations for the
// transfer service), the CRI image service's snapshotter (and, for
// containerd 1.7, its snapshot annotations), config_path for hosts.toml, and for containerd 2.1+ the
// transfer service's unpack_config (overlayfs kept, s3snap added). The
// output is canonical TOML, so merging it again gives the same bytes.
func mergeContainerd(cur []byte, o mergeOptions) (*merged, error) {
	m, ver, err := parseContainerd(cur)
	if err != nil {
		return nil, err
	}
	major, minor := splitVersion(o.ctrVersion)
	res := &merged{}
	switch {
	case ver == 0 && major == 1:
		ver = 2
	case ver == 0:
		ver = 3
	case ver == 1:
		return nil, fmt.Errorf("%w: config version 1 is not supported: migrate it first (`containerd config migrate`)", ErrInvalid)
	case ver >= 3 && major == 1:
		return nil, fmt.Errorf("%w: config version %d needs containerd 2.x, but containerd %s is installed", ErrInvalid, ver, o.ctrVersion)
	}
	if o.ctrVersion == "" {
		res.warnings = append(res.warnings, fmt.Sprintf("containerd version unknown (no binary found in the root): config version %d kept; give the version if containerd is 2.1 or newer", ver))
	}
	// The transfer service unpacks `ctr pull` (and, from 2.1, CRI) pulls.
	transfer := ver >= 3 || major > 2 || major == 2 && minor >= 1

	proxy := table(m, "proxy_plugins", agentconfig.PluginName)
	proxy["type"] = "snapshot"
	proxy["address"] = o.agent.Socket
	exports := table(proxy, "exports")
	exports["root"] = o.agent.Root
	exports["enable_remote_snapshot_annotations"] = "true"

	var cri, reg map[string]any
	if ver == 2 {
		cri = table(m, "plugins", criV2, "containerd")
		reg = table(m, "plugins", criV2, "registry")
		if _, ok := reg["mirrors"]; ok {
			return nil, fmt.Errorf("%w: [plugins.%q.registry.mirrors] is set, and containerd ignores config_path (hosts.toml) then: move the mirrors to hosts.toml files first", ErrInvalid, criV2)
		}
	} else {
		cri = table(m, "plugins", criImagesV3)
		reg = table(cri, "registry")
	}
	if s, _ := cri["snapshotter"].(string); s != "" && s != "overlayfs" && s != agentconfig.PluginName {
		res.warnings = append(res.warnings, fmt.Sprintf("CRI snapshotter was %q; s3snap replaces it (layers s3snap cannot serve are unpacked by containerd as usual)", s))
	}
	cri["snapshotter"] = agentconfig.PluginName
	// containerd 1.7's CRI, and 2.x's in its local pull mode, pass layer
	// labels to snapshotters only with this. Otherwise 2.x's CRI pulls
	// through the transfer service, which passes them for the proxy
	// plugin's enable_remote_snapshot_annotations; setting this there
	// would push the CRI back to its local pull mode.
	local, why := CRILocalPull(cri)
	if ver == 2 || local {
		cri["disable_snapshot_annotations"] = false
	}
	if ver >= 3 && local {
		res.warnings = append(res.warnings, "the CRI pulls in its local mode ("+why+"): snapshot annotations enabled for it")
	}
	res.hostsDir = setConfigPath(reg, o.hostsDir)

	if transfer {
		platform := o.platform
		if platform == "" {
			platform = platforms.Format(platforms.DefaultSpec())
		}
		tr := table(m, "plugins", transferPlug)
		entries, _ := tr["unpack_config"].([]any)
		// Setting unpack_config replaces containerd's default (overlayfs), so
		// overlayfs goes in too.
		for _, sn := range []string{"overlayfs", agentconfig.PluginName} {
			if !slices.ContainsFunc(entries, func(e any) bool {
				em, _ := e.(map[string]any)
				return em["snapshotter"] == sn && em["platform"] == platform
			}) {
				entries = append(entries, map[string]any{"platform": platform, "snapshotter": sn})
			}
		}
		tr["unpack_config"] = entries
	}
	res.version = ver
	res.data, err = encodeContainerd(m, ver)
	return res, err
}

// unmergeContainerd takes s3snap's settings out of cur: the proxy plugin,
// the CRI snapshotter (back to containerd's default) and s3snap's
// unpack_config entries. Settings that are harmless without s3snap
// (snapshot annotations, config_path) stay.
func unmergeContainerd(cur []byte, hostsDir string) (*merged, error) {
	m, ver, err := parseContainerd(cur)
	if err != nil {
		return nil, err
	}
	res := &merged{version: ver}
	if pp, ok := m["proxy_plugins"].(map[string]any); ok {
		delete(pp, agentconfig.PluginName)
		if len(pp) == 0 {
			delete(m, "proxy_plugins")
		}
	}
	plugins, _ := m["plugins"].(map[string]any)
	var cri, reg map[string]any
	if ver == 2 {
		c, _ := plugins[criV2].(map[string]any)
		cri, _ = c["containerd"].(map[string]any)
		reg, _ = c["registry"].(map[string]any)
	} else {
		cri, _ = plugins[criImagesV3].(map[string]any)
		reg, _ = cri["registry"].(map[string]any)
	}
	if cri != nil && cri["snapshotter"] == agentconfig.PluginName {
		delete(cri, "snapshotter")
	}
	if tr, ok := plugins[transferPlug].(map[string]any); ok {
		if entries, ok := tr["unpack_config"].([]any); ok {
			tr["unpack_config"] = slices.DeleteFunc(entries, func(e any) bool {
				em, _ := e.(map[string]any)
				return em["snapshotter"] == agentconfig.PluginName
			})
		}
	}
	res.hostsDir = hostsDir
	if res.hostsDir == "" {
		res.hostsDir = firstConfigPath(reg)
	}
	res.data, err = encodeContainerd(m, ver)
	return res, err
}

func parseContainerd(cur []byte) (map[string]any, int, error) {
	m := map[string]any{}
	if len(bytes.TrimSpace(cur)) == 0 {
		return m, 0, nil
	}
	if err := toml.Unmarshal(cur, &m); err != nil {
		return nil, 0, fmt.Errorf("%w: not valid TOML: %w", ErrInvalid, err)
	}
	v, ok := m["version"]
	if !ok {
		return nil, 0, fmt.Errorf("%w: no `version` key: this is a version 1 config (containerd 1.x's old format); migrate it first (`containerd config migrate`)", ErrInvalid)
	}
	n, ok := v.(int64)
	if !ok || n < 1 {
		return nil, 0, fmt.Errorf("%w: version = %v: want an integer", ErrInvalid, v)
	}
	delete(m, "version")
	return m, int(n), nil
}

// encodeContainerd writes m back, version first.
func encodeContainerd(m map[string]any, ver int) ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "version = %d\n\n", ver)
	enc := toml.NewEncoder(&b)
	enc.SetIndentTables(true)
	if err := enc.Encode(m); err != nil {
		return nil, fmt.Errorf("encode containerd config: %w", err)
	}
	return b.Bytes(), nil
}

// table returns the nested table at path in m, creating missing levels.
func table(m map[string]any, path ...string) map[string]any {
	for _, k := range path {
		next, ok := m[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	return m
}

// setConfigPath makes reg's config_path include want (first) and returns
// the directory hosts.toml files go in: want, else the config's first
// directory, else agentconfig.DefaultHostsDir.
func setConfigPath(reg map[string]any, want string) string {
	cur, _ := reg["config_path"].(string)
	dirs := filepath.SplitList(cur)
	switch {
	case want != "" && !slices.Contains(dirs, want):
		reg["config_path"] = strings.Join(append([]string{want}, dirs...), string(filepath.ListSeparator))
		return want
	case want != "":
		return want
	case len(dirs) > 0 && dirs[0] != "":
		return dirs[0]
	}
	reg["config_path"] = agentconfig.DefaultHostsDir
	return agentconfig.DefaultHostsDir
}

func firstConfigPath(reg map[string]any) string {
	cur, _ := reg["config_path"].(string)
	if dirs := filepath.SplitList(cur); len(dirs) > 0 && dirs[0] != "" {
		return dirs[0]
	}
	return agentconfig.DefaultHostsDir
}

var versionRE = regexp.MustCompile(`\bv?(\d+)\.(\d+)(\.\d+)?`)

// splitVersion parses "1.7.27" or "v2.4.2" into major and minor; 0, 0 if
// it can't.
func splitVersion(v string) (int, int) {
	sm := versionRE.FindStringSubmatch(v)
	if sm == nil {
		return 0, 0
	}
	major, _ := strconv.Atoi(sm[1])
	minor, _ := strconv.Atoi(sm[2])
	return major, minor
}

// containerdVersion is o.ContainerdVersion, else what the containerd
// binary in o.Root says, else "".
func containerdVersion(ctx context.Context, o Options) (string, error) {
	if o.ContainerdVersion != "" {
		if major, _ := splitVersion(o.ContainerdVersion); major < 1 {
			return "", fmt.Errorf("%w: containerd version %q: want MAJOR.MINOR, like 1.7 or 2.1", ErrInvalid, o.ContainerdVersion)
		}
		return strings.TrimPrefix(o.ContainerdVersion, "v"), nil
	}
	for _, p := range []string{"/usr/bin/containerd", "/usr/local/bin/containerd", "/bin/containerd"} {
		bin := filepath.Join(o.Root, p)
		if _, err := os.Stat(bin); err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		out, err := exec.CommandContext(cctx, bin, "--version").Output()
		cancel()
		if err != nil {
			continue // another architecture's binary in an image tree, say
		}
		// "containerd github.com/containerd/containerd/v2 v2.4.2 <commit>"
		for _, f := range strings.Fields(string(out)) {
			if strings.HasPrefix(f, "v") || f[0] >= '0' && f[0] <= '9' {
				if sm := versionRE.FindString(f); sm != "" && sm == f {
					return strings.TrimPrefix(f, "v"), nil
				}
			}
		}
	}
	return "", nil
}

// CRILocalPull reports whether containerd 2.x's CRI image service, with
// settings images (its plugins."io.containerd.cri.v1.images" table), pulls
// in its local mode rather than through the transfer service, and why:
// containerd falls back to it when a setting the transfer service lacks is
// used.
func CRILocalPull(images map[string]any) (bool, string) {
	if v, _ := images["use_local_image_pull"].(bool); v {
		return true, "use_local_image_pull = true"
	}
	for _, k := range []string{"discard_unpacked_layers", "image_pull_with_sync_fs"} {
		if v, _ := images[k].(bool); v {
			return true, k + " = true"
		}
	}
	if v, ok := images["max_concurrent_downloads"].(int64); ok && v != 3 {
		return true, fmt.Sprintf("max_concurrent_downloads = %d", v)
	}
	reg, _ := images["registry"].(map[string]any)
	for _, k := range []string{"mirrors", "configs", "auths"} {
		if m, _ := reg[k].(map[string]any); len(m) > 0 {
			return true, "registry." + k + " is set"
		}
	}
	return false, ""
}
