package integration

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	agentconfig "github.com/s3snap/s3snap/agent/config"
	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/mirror"
)

// privilegedAddrs returns n distinct free 127.0.0.1 addresses on ports
// below 1024 (needs root), as the agent's defaults are.
func privilegedAddrs(t *testing.T, n int) []string {
	t.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []string
	off := rand.IntN(400) // tests running at once pick different ports
	for i := 0; i < 400 && len(out) < n; i++ {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", 600+(off+i)%400))
		if err != nil {
			continue
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	if len(out) < n {
		t.Fatalf("found %d free ports from 600 to 999, want %d (not root?)", len(out), n)
	}
	return out
}

// bindProbeEnv makes the test binary, run again, only try to bind the
// address it names and report the result (see TestBindProbe).
const bindProbeEnv = "S3SNAP_BIND_PROBE"

// TestBindProbe is not a test: run by TestAgentPortsNotBindableByUsers as
// another user, it tries to listen on $S3SNAP_BIND_PROBE and prints "bound"
// or the error.
func TestBindProbe(t *testing.T) {
	addr := os.Getenv(bindProbeEnv)
	if addr == "" {
		t.Skip("helper process for TestAgentPortsNotBindableByUsers")
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	l.Close()
	fmt.Println("bound")
}

// TestAgentPortsNotBindableByUsers: while the agent is down, a local user
// other than root (nobody) cannot listen on its default mirror and metrics
// addresses, so cannot answer containerd's tag lookups in its place; the
// same user can bind an unprivileged port, which is what doctor and the
// agent warn about.
func TestAgentPortsNotBindableByUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Unavailable(t, "running a process as another user needs root")
	}
	if start := mirror.UnprivilegedPortStart(); start <= 506 {
		t.Fatalf("net.ipv4.ip_unprivileged_port_start is %d here: any user may bind the agent's ports (this is what doctor warns about)", start)
	}
	// The test binary, where another user may run it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "bindprobe-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	probe := filepath.Join(dir, "probe.test")
	copyFile(t, self, probe, 0o755)
	bindAs := func(uid uint32, addr string) string {
		cmd := exec.Command(probe, "-test.run=^TestBindProbe$")
		cmd.Env = []string{bindProbeEnv + "=" + addr}
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("bind probe as uid %d: %v\n%s", uid, err, out)
		}
		return string(out)
	}
	const nobody = 65534
	for _, addr := range []string{agentconfig.DefaultMirrorAddress, agentconfig.DefaultMetricsAddress} {
		if out := bindAs(nobody, addr); !strings.Contains(out, "permission denied") {
			t.Errorf("nobody listening on %s: %q, want permission denied", addr, out)
		}
	}
	if out := bindAs(nobody, testenv.FreeAddr(t)); !strings.Contains(out, "bound") {
		t.Errorf("nobody on an unprivileged port: %q, want bound (the probe cannot tell otherwise)", out)
	}
	// root, as the agent runs, may.
	for _, addr := range privilegedAddrs(t, 1) {
		if out := bindAs(0, addr); !strings.Contains(out, "bound") {
			t.Errorf("root listening on %s: %q", addr, out)
		}
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
