package doctor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	introspection "github.com/containerd/containerd/api/services/introspection/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"

	agentconfig "github.com/s3snap/s3snap/agent/config"
	"github.com/s3snap/s3snap/systemd"
)

const snapshotterType = "io.containerd.snapshotter.v1"

// dialUnix connects to a gRPC server on a unix socket.
func dialUnix(path string) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// containerd asks the running containerd its version and whether it
// loaded s3snap's proxy plugin.
func (r *run) containerd(ctx context.Context) {
	const name = "containerd"
	fix := "start containerd (systemctl start containerd); --containerd-address if it listens elsewhere"
	conn, err := dialUnix(r.o.ContainerdAddress)
	if err != nil {
		r.add(Check{Name: name, Status: Fail, Detail: err.Error(), Fix: fix})
		return
	}
	defer conn.Close()
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	v, err := versionapi.NewVersionClient(conn).Version(cctx, &emptypb.Empty{})
	if err != nil {
		r.add(Check{Name: name, Status: Fail, Detail: fmt.Sprintf("%s: %v", r.o.ContainerdAddress, err), Fix: fix})
		return
	}
	resp, err := introspection.NewIntrospectionClient(conn).Plugins(cctx, &introspection.PluginsRequest{
		Filters: []string{fmt.Sprintf("type==%s,id==%s", snapshotterType, agentconfig.PluginName)},
	})
	if err != nil {
		r.add(Check{Name: name, Status: Fail, Detail: fmt.Sprintf("containerd %s: list plugins: %v", v.Version, err), Fix: fix})
		return
	}
	detail := fmt.Sprintf("containerd %s at %s", v.Version, r.o.ContainerdAddress)
	switch {
	case len(resp.Plugins) == 0:
		r.add(Check{Name: name, Status: Fail, Detail: detail + ": no s3snap snapshotter plugin loaded",
			Fix: "add [proxy_plugins.s3snap] to containerd's config (s3snap install) and restart containerd"})
	case resp.Plugins[0].InitErr != nil:
		r.add(Check{Name: name, Status: Fail, Detail: detail + ": s3snap plugin failed: " + resp.Plugins[0].InitErr.GetMessage(),
			Fix: "check the proxy plugin's address in containerd's config, then restart containerd"})
	default:
		r.add(Check{Name: name, Status: OK, Detail: detail + ": s3snap snapshotter plugin loaded"})
	}
}

// containerdConfig is what doctor reads of containerd's config file.
type containerdConfig struct {
	version  int
	hostsDir string
}

// containerdConfig checks the config file registers the plugin at the
// agent's socket, makes it the CRI's snapshotter and lets layer labels
// (snapshot annotations) through, which the agent needs to find layers.
func (r *run) containerdConfig() {
	const name = "containerd config"
	b, err := os.ReadFile(r.o.ContainerdConfig)
	if err != nil {
		r.add(Check{Name: name, Status: Fail, Detail: err.Error(), Fix: "s3snap install"})
		return
	}
	// What containerd uses: the file and every drop-in its imports name.
	eff, err := systemd.LoadContainerd("/", r.o.ContainerdConfig, b)
	if err != nil {
		r.add(Check{Name: name, Status: Fail, Detail: fmt.Sprintf("%s: %v", r.o.ContainerdConfig, err), Fix: "fix the TOML, or restore " + r.o.ContainerdConfig + ".pre-s3snap"})
		return
	}
	m, ver := eff.Config, eff.Version
	c := &containerdConfig{version: ver}
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	addr, _ := systemd.Lookup(m, "proxy_plugins", agentconfig.PluginName, "address").(string)
	switch {
	case addr == "":
		add("no [proxy_plugins.s3snap]")
	case r.cfg != nil && addr != r.cfg.Socket:
		add("proxy_plugins.s3snap.address is %s but the agent listens on %s", addr, r.cfg.Socket)
	}
	var images map[string]any
	if ver == 2 {
		images, _ = systemd.Lookup(m, "plugins", "io.containerd.grpc.v1.cri", "containerd").(map[string]any)
		if v, ok := images["disable_snapshot_annotations"].(bool); !ok || v {
			add("snapshot annotations are disabled (plugins.\"io.containerd.grpc.v1.cri\".containerd.disable_snapshot_annotations must be false): the agent cannot see which layer containerd prepares")
		}
		c.hostsDir = firstDir(systemd.Lookup(m, "plugins", "io.containerd.grpc.v1.cri", "registry", "config_path"))
	} else {
		images, _ = systemd.Lookup(m, "plugins", "io.containerd.cri.v1.images").(map[string]any)
		if local, why := systemd.CRILocalPull(images); local {
			if v, ok := images["disable_snapshot_annotations"].(bool); !ok || v {
				add("snapshot annotations are disabled: the CRI pulls in its local mode (%s) and then needs plugins.\"io.containerd.cri.v1.images\".disable_snapshot_annotations = false", why)
			}
		}
		if v, _ := systemd.Lookup(m, "proxy_plugins", agentconfig.PluginName, "exports", "enable_remote_snapshot_annotations").(string); v != "true" {
			add("snapshot annotations are disabled (proxy_plugins.s3snap.exports.enable_remote_snapshot_annotations must be \"true\"): the agent cannot see which layer containerd prepares")
		}
		entries, _ := systemd.Lookup(m, "plugins", "io.containerd.transfer.v1.local", "unpack_config").([]any)
		if !slices.ContainsFunc(entries, func(e any) bool { em, _ := e.(map[string]any); return em["snapshotter"] == agentconfig.PluginName }) {
			add("no unpack_config entry for s3snap in plugins.\"io.containerd.transfer.v1.local\": the transfer service (ctr, CRI in 2.1+) cannot unpack into it")
		}
		c.hostsDir = firstDir(systemd.Lookup(m, "plugins", "io.containerd.cri.v1.images", "registry", "config_path"))
	}
	if s, _ := images["snapshotter"].(string); s != agentconfig.PluginName {
		add("the CRI's snapshotter is %q%s, not s3snap: kubelet pulls do not use the agent", s, setIn(eff, r.o.ContainerdConfig, systemd.CRISnapshotterPath(ver)...))
	}
	r.ctr = c
	if len(problems) > 0 {
		detail := r.o.ContainerdConfig + ":"
		for _, p := range problems {
			detail += "\n  - " + p
		}
		r.add(Check{Name: name, Status: Fail, Detail: detail, Fix: "s3snap install (merges the settings in), then restart containerd"})
		return
	}
	files := r.o.ContainerdConfig
	if n := len(eff.Imports); n > 0 {
		files += fmt.Sprintf(" and %d imported file(s)", n)
	}
	r.add(Check{Name: name, Status: OK, Detail: fmt.Sprintf("%s (version %d): s3snap registered, CRI snapshotter, annotations on", files, ver)})
}

// setIn names the imported file that set the key at path, if not main.
func setIn(eff *systemd.ContainerdEffective, main string, path ...string) string {
	if by := eff.SetBy(path...); by != "" && by != main {
		return " (set by " + by + ")"
	}
	return ""
}

func firstDir(v any) string {
	s, _ := v.(string)
	if dirs := filepath.SplitList(s); len(dirs) > 0 && dirs[0] != "" {
		return dirs[0]
	}
	return ""
}

// hostsTOML checks each mapped registry's hosts.toml puts the mirror first.
func (r *run) hostsTOML() {
	const name = "hosts.toml"
	if r.cfg == nil || r.ctr == nil {
		r.skip(name, "needs the agent config and containerd's config")
		return
	}
	dir := r.ctr.hostsDir
	if dir == "" {
		r.add(Check{Name: name, Status: Fail, Detail: "containerd's config sets no registry config_path: hosts.toml files are not read",
			Fix: "s3snap install (sets config_path = " + agentconfig.DefaultHostsDir + ")"})
		return
	}
	want := "http://" + r.cfg.Mirror.Address
	var bad []string
	for _, reg := range r.cfg.Registry {
		p := agentconfig.HostsTOMLPath(dir, reg.Host)
		b, err := os.ReadFile(p)
		if err != nil {
			bad = append(bad, err.Error())
			continue
		}
		m := map[string]any{}
		if err := toml.Unmarshal(b, &m); err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", p, err))
			continue
		}
		if systemd.Lookup(m, "host", want) == nil {
			bad = append(bad, fmt.Sprintf("%s: no [host.%q] (the agent's mirror)", p, want))
		}
	}
	if len(bad) > 0 {
		detail := ""
		for _, b := range bad {
			detail += "\n  - " + b
		}
		r.add(Check{Name: name, Status: Fail, Detail: detail[1:], Fix: "s3snap install (writes them)"})
		return
	}
	r.add(Check{Name: name, Status: OK, Detail: fmt.Sprintf("%d file(s) in %s put the mirror %s first", len(r.cfg.Registry), dir, r.cfg.Mirror.Address)})
}
