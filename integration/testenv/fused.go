package testenv

import (
	"bytes"
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/s3snap/s3snap/lazy/fused"
)

// cleanupFused stops the agent's lazy FUSE server when the test ends,
// after the agent (cleanups run last first): it outlives the agent by
// design, so no test would stop it otherwise.
func (a *Agent) cleanupFused(t testing.TB) {
	t.Cleanup(func() {
		a.StopFused(t)
		if t.Failed() {
			t.Logf("lazy FUSE server log (last 40 lines):\n%s", tail(fused.LogPath(a.Root), 40))
		}
	})
}

// FusedPID is the running lazy FUSE server's process ID, 0 if none runs.
func (a *Agent) FusedPID() int {
	b, err := os.ReadFile(fused.PIDPath(a.Root))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

// StopFused stops the agent's lazy FUSE server as an operator would
// (`s3snap agent fused --stop`), killing it if that fails, and detaches
// any lazy mount left under the root.
func (a *Agent) StopFused(t testing.TB) {
	t.Helper()
	pid := a.FusedPID()
	if pid != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
		out, err := RunErr(ctx, S3snapBinary(t), "agent", "fused", "--stop", "--config", a.ConfigPath)
		cancel()
		if err != nil {
			t.Errorf("s3snap agent fused --stop: %v\n%s", err, out)
			a.KillFused(t)
		}
	}
	for _, m := range LazyMountPoints(a.Root) {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
}

// KillFused SIGKILLs the lazy FUSE server, as a crash or the OOM killer
// would, and waits until it is gone.
func (a *Agent) KillFused(t testing.TB) {
	t.Helper()
	pid := a.FusedPID()
	if pid == 0 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("lazy FUSE server %d still there 10s after SIGKILL (state %s)", pid, ProcState(pid))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ProcState is a process's state letter from /proc/<pid>/stat (R, S, D,
// Z, ...), "" if it is gone.
func ProcState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	// The name, in parentheses, may hold spaces: the state follows the last ')'.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return string(b[i+2])
	}
	return ""
}

// LazyMountPoints lists the FUSE mounts of lazy layers under dir.
func LazyMountPoints(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		_, rest, ok := strings.Cut(line, " - ")
		if ok && len(f) > 4 && strings.HasPrefix(f[4], dir+"/") && strings.HasPrefix(rest, "fuse.s3snap ") {
			out = append(out, f[4])
		}
	}
	return out
}

// StartFused runs the agent's lazy FUSE server as a process of the test's
// own, as a second container of a DaemonSet's pod would ([lazy] server =
// "external"), and waits until it answers.
func (a *Agent) StartFused(t testing.TB) *Process {
	t.Helper()
	p := Start(t, "s3snap-fused", a.env, a.bin, "agent", "fused", "--config", a.ConfigPath, "--log-level", "debug")
	WaitFor(t, p, 30*time.Second, "lazy FUSE server", func() bool {
		_, err := fused.NewClient(a.Root).Info(context.Background())
		return err == nil
	})
	return p
}
