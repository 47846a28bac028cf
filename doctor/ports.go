package doctor

import (
	"fmt"
	"strings"

	"github.com/s3snap/s3snap/mirror"
)

// portStart is the lowest port any local user may bind (a variable so
// tests can lower it).
var portStart = mirror.UnprivilegedPortStart

// ports warns when the mirror or metrics address is a port any local user
// may bind: while the agent is down (a restart, an upgrade, a crash) such
// a user could answer containerd's tag lookups in the mirror's place, or
// keep the agent from starting.
func (r *run) ports() {
	const name = "agent ports"
	if r.cfg == nil {
		r.skip(name, "needs the agent config")
		return
	}
	start := portStart()
	var bad []string
	for _, a := range []struct{ what, addr string }{{"mirror", r.cfg.Mirror.Address}, {"metrics", r.cfg.Metrics.Address}} {
		if err := mirror.CheckPrivileged(a.addr, start); err != nil {
			bad = append(bad, a.what+" "+err.Error())
		}
	}
	if len(bad) > 0 {
		fix := fmt.Sprintf("use ports below 1024 (the defaults: [mirror] address = %q, [metrics] address = %q; s3snap install --mirror-address/--metrics-address)",
			"127.0.0.1:505", "127.0.0.1:506")
		if start < 1024 {
			fix += fmt.Sprintf(", and raise net.ipv4.ip_unprivileged_port_start (now %d) back to 1024", start)
		}
		r.add(Check{Name: name, Status: Warn, Detail: strings.Join(bad, "; "), Fix: fix})
		return
	}
	r.add(Check{Name: name, Status: OK, Detail: fmt.Sprintf("mirror %s and metrics %s: below net.ipv4.ip_unprivileged_port_start (%d), only root can bind them",
		r.cfg.Mirror.Address, r.cfg.Metrics.Address, start)})
}
