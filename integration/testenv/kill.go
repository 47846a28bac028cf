package testenv

import (
	"syscall"
	"testing"
	"time"
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
	a.start(t, a.bin)
}

// KillWithin sends SIGKILL to the process alone and fails t unless it is
// gone within d: a process stuck in the kernel (state D, waiting on a
// FUSE mount whose server died with it) never goes.
func (p *Process) KillWithin(t testing.TB, d time.Duration) {
	t.Helper()
	if p.cmd.Process == nil || p.cmd.ProcessState != nil {
		return
	}
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(pid, syscall.SIGKILL)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s (pid %d) still there %s after SIGKILL, state %q", p.Name, pid, d, ProcState(pid))
	}
}
