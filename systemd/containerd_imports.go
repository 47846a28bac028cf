package systemd

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pelletier/go-toml/v2"

	agentconfig "github.com/s3snap/s3snap/agent/config"
)

// maxContainerdImports bounds the files one containerd config may pull in
// through imports (globs included), so a loop or a huge glob ends.
const maxContainerdImports = 256

// ContainerdEffective is containerd's config as containerd itself sees it:
// the main file with every file its imports name merged in, in order.
type ContainerdEffective struct {
	// Config is the merged config, version key included.
	Config map[string]any
	// Version is the main file's config version.
	Version int
	// Imports are the imported files, node paths, in the order merged.
	Imports []string
	// setBy records, per dotted key path, the last file that set it.
	setBy map[string]string
	// daemonMajor is the containerd major version that reads it.
	daemonMajor int
}

// SetBy returns the file (a node path) whose value of the key at path is
// the effective one, "" if no file sets it.
func (e *ContainerdEffective) SetBy(path ...string) string {
	// A key a file removed (a whole table replaced) is its nearest
	// ancestor's doing.
	for n := len(path); n > 0; n-- {
		if f, ok := e.setBy[strings.Join(path[:n], "\x00")]; ok {
			return f
		}
	}
	return ""
}

// Lookup returns the effective value at path, nil if unset.
func (e *ContainerdEffective) Lookup(path ...string) any { return Lookup(e.Config, path...) }

// Lookup returns the value at path in the decoded TOML document m, nil if
// unset.
func Lookup(m map[string]any, path ...string) any {
	var v any = m
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// CRISnapshotterPath is where the CRI's snapshotter is set in a config of
// version ver.
func CRISnapshotterPath(ver int) []string {
	if ver == 2 {
		return []string{"plugins", criV2, "containerd", "snapshotter"}
	}
	return []string{"plugins", criImagesV3, "snapshotter"}
}

// LoadOption adjusts LoadContainerd.
type LoadOption func(*ContainerdEffective)

// WithDaemonMajor says which containerd will read the config (1 for 1.x,
// 2 for 2.x). Without it, a version 2 config is taken to be read by 1.x
// (what most nodes with one run) and a version 3 one by 2.x.
func WithDaemonMajor(major int) LoadOption {
	return func(e *ContainerdEffective) { e.daemonMajor = major }
}

// LoadContainerd reads containerd's config the way containerd's loader
// (cmd/containerd/server/config.LoadConfig) does: main (the bytes of the
// file at node path path) first, then each file its top-level imports
// names, then theirs, each file once. An import is relative to the
// directory of the file naming it, and with a '*' a glob. Later files win:
// tables merge key by key, any other value is replaced, and a proxy_plugins
// entry is replaced whole; containerd 1.x also replaces a plugins entry
// whole (its merge is per plugin, containerd/containerd#5837; 2.0 merges
// deeper). Files are read under root (an image tree, or "/"). A version 2
// file imported into a version 3 config is merged as it is: the daemon's
// plugin migrations are not repeated here.
func LoadContainerd(root, path string, main []byte, opts ...LoadOption) (*ContainerdEffective, error) {
	m, ver, err := parseContainerd(main)
	if err != nil {
		return nil, err
	}
	e := &ContainerdEffective{Config: map[string]any{}, Version: ver, setBy: map[string]string{}}
	for _, opt := range opts {
		opt(e)
	}
	if e.daemonMajor == 0 {
		e.daemonMajor = 2
		if ver == 2 {
			e.daemonMajor = 1
		}
	}
	loaded := map[string]bool{path: true}
	pending, err := resolveImports(root, path, m["imports"])
	if err != nil {
		return nil, err
	}
	e.merge(path, m)
	for len(pending) > 0 {
		p := pending[0]
		pending = pending[1:]
		if loaded[p] {
			continue
		}
		loaded[p] = true
		if len(e.Imports) == maxContainerdImports {
			return nil, fmt.Errorf("%w: more than %d imported files", ErrInvalid, maxContainerdImports)
		}
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			return nil, fmt.Errorf("%w: import %s: %w", ErrInvalid, p, err)
		}
		im := map[string]any{}
		if err := toml.Unmarshal(b, &im); err != nil {
			return nil, fmt.Errorf("%w: import %s: not valid TOML: %w", ErrInvalid, p, err)
		}
		next, err := resolveImports(root, p, im["imports"])
		if err != nil {
			return nil, err
		}
		e.Imports = append(e.Imports, p)
		e.merge(p, im)
		pending = append(pending, next...)
	}
	e.Config["version"] = int64(ver)
	return e, nil
}

// merge merges file's config src into e as containerd's mergeConfig does.
func (e *ContainerdEffective) merge(file string, src map[string]any) {
	for k, v := range src {
		switch k {
		case "version", "imports":
		case "proxy_plugins":
			pp, _ := v.(map[string]any)
			dst := table(e.Config, "proxy_plugins")
			for name, p := range pp {
				dst[name] = p // replaced whole
				e.record(file, []string{k, name}, p)
			}
		case "plugins":
			if e.daemonMajor >= 2 {
				e.Config[k] = e.mergeValue(file, []string{k}, e.Config[k], v)
				continue
			}
			pp, _ := v.(map[string]any)
			dst := table(e.Config, "plugins")
			for name, p := range pp {
				dst[name] = p // 1.x: a plugin's table replaced whole
				e.record(file, []string{k, name}, p)
			}
		default:
			e.Config[k] = e.mergeValue(file, []string{k}, e.Config[k], v)
		}
	}
}

func (e *ContainerdEffective) mergeValue(file string, path []string, dst, src any) any {
	sm, sok := src.(map[string]any)
	dm, dok := dst.(map[string]any)
	if !sok || !dok {
		e.record(file, path, src)
		return src
	}
	for k, v := range sm {
		dm[k] = e.mergeValue(file, append(path[:len(path):len(path)], k), dm[k], v)
	}
	return dm
}

// record notes file as the setter of path and of every key under it,
// forgetting keys under path that v replaced.
func (e *ContainerdEffective) record(file string, path []string, v any) {
	key := strings.Join(path, "\x00")
	for k := range e.setBy {
		if strings.HasPrefix(k, key+"\x00") {
			delete(e.setBy, k)
		}
	}
	e.setBy[key] = file
	if m, ok := v.(map[string]any); ok {
		for k, sub := range m {
			e.record(file, append(path[:len(path):len(path)], k), sub)
		}
	}
}

// resolveImports turns a file's imports into node paths, as containerd's
// resolveImports does: cleaned, relative to the file's directory, globbed
// when they hold '*'.
func resolveImports(root, parent string, v any) ([]string, error) {
	if v == nil {
		return nil, nil
	}
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("%w: %s: imports = %v: want a list of paths", ErrInvalid, parent, v)
	}
	var out []string
	for _, it := range list {
		p, ok := it.(string)
		if !ok {
			return nil, fmt.Errorf("%w: %s: imports entry %v: want a path", ErrInvalid, parent, it)
		}
		p = filepath.Clean(p)
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(parent), p)
		}
		if !strings.Contains(p, "*") {
			out = append(out, p)
			continue
		}
		matches, err := filepath.Glob(filepath.Join(root, p))
		if err != nil {
			return nil, fmt.Errorf("%w: %s: imports %q: %w", ErrInvalid, parent, p, err)
		}
		for _, m := range matches {
			rel, err := filepath.Rel(filepath.Join(root, "/"), m)
			if err != nil {
				return nil, err
			}
			out = append(out, "/"+filepath.ToSlash(rel))
		}
	}
	return out, nil
}

// importOverrides reads the merged config main as containerd will, its
// imports included, and names each of s3snap's settings a drop-in
// overrides: containerd would not use the agent, whatever the main file
// says.
func importOverrides(root, path string, main []byte, opts ...LoadOption) ([]string, error) {
	e, err := LoadContainerd(root, path, main, opts...)
	if err != nil {
		return nil, err
	}
	var out []string
	if key := CRISnapshotterPath(e.Version); e.Lookup(key...) != agentconfig.PluginName {
		out = append(out, fmt.Sprintf("%s sets the CRI's snapshotter to %q, overriding s3snap's in %s: kubelet pulls will not use the agent until it is removed there",
			e.SetBy(key...), e.Lookup(key...), path))
	}
	if by := e.SetBy("proxy_plugins", agentconfig.PluginName); by != path {
		out = append(out, fmt.Sprintf("%s replaces [proxy_plugins.%s] of %s: containerd reaches the snapshotter at %v",
			by, agentconfig.PluginName, path, e.Lookup("proxy_plugins", agentconfig.PluginName, "address")))
	}
	return out, nil
}
