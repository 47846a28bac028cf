package doctor

import (
	"strings"
	"testing"

	agentconfig "github.com/s3snap/s3snap/agent/config"
)

func TestPortsCheck(t *testing.T) {
	defer func(f func() int) { portStart = f }(portStart)
	for _, tc := range []struct {
		name            string
		mirror, metrics string
		start           int
		status          Status
		detail          string
	}{
		{"defaults", agentconfig.DefaultMirrorAddress, agentconfig.DefaultMetricsAddress, 1024, OK, "only root"},
		{"old mirror port", "127.0.0.1:5050", agentconfig.DefaultMetricsAddress, 1024, Warn, "mirror 127.0.0.1:5050: port 5050"},
		{"metrics unprivileged", agentconfig.DefaultMirrorAddress, "127.0.0.1:9100", 1024, Warn, "metrics 127.0.0.1:9100"},
		{"sysctl lowered", agentconfig.DefaultMirrorAddress, agentconfig.DefaultMetricsAddress, 0, Warn, "ip_unprivileged_port_start (0)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			portStart = func() int { return tc.start }
			cfg := agentconfig.Default()
			cfg.Mirror.Address, cfg.Metrics.Address = tc.mirror, tc.metrics
			r := &run{report: &Report{Status: OK}, cfg: &cfg}
			r.ports()
			c := r.report.Checks[0]
			if c.Status != tc.status || !strings.Contains(c.Detail, tc.detail) || tc.status == Warn && c.Fix == "" {
				t.Errorf("check = %+v, want %s with %q", c, tc.status, tc.detail)
			}
		})
	}
}
