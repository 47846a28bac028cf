package testenv

import (
	"syscall"
	"testing"
)

// Pid is the process's ID (its process group's too).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Kill sends SIGKILL to the process alone (not its group: a crash kills
// the one process) and waits for it.
func (p *Process) Kill() {
	if p.cmd.Process == nil || p.cmd.ProcessState != nil {
		return
	}
	_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL)
	_ = p.cmd.Wait()
}

// StartAgain starts an agent whose process died (Kill) on the same config
// and state, as systemd's Restart=always would.
func (a *Agent) StartAgain(t testing.TB) {
	t.Helper()
	a.start(t, S3snapBinary(t))
}
