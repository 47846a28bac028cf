package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Process is a server a test started; it is stopped when the test ends.
type Process struct {
	Name string
	Log  string // path of its combined stdout/stderr
	cmd  *exec.Cmd
}

// Start runs bin with args as a server in its own process group, logging to a
// file in the test's temp dir, and stops it (SIGTERM, then SIGKILL) at cleanup.
func Start(t testing.TB, name string, env []string, bin string, args ...string) *Process {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &Process{Name: name, Log: logPath, cmd: cmd}
	t.Cleanup(func() {
		p.Stop()
		f.Close()
		if t.Failed() {
			t.Logf("%s log (last 40 lines):\n%s", name, tail(logPath, 40))
		}
	})
	return p
}

// Stop terminates the process group and waits for it.
func (p *Process) Stop() {
	if p.cmd.Process == nil || p.cmd.ProcessState != nil {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// Exited reports whether the process has already died.
func (p *Process) Exited() bool {
	return p.cmd.ProcessState != nil || syscall.Kill(p.cmd.Process.Pid, 0) != nil
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// FreeAddr returns a free 127.0.0.1 TCP address.
func FreeAddr(t testing.TB) string {
	t.Helper()
	given.Lock()
	defer given.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		// The kernel may hand a just-closed port out again: never give one
		// address twice in a test binary (a mirror and its metrics, say).
		if !given.addrs[addr] {
			given.addrs[addr] = true
			return addr
		}
	}
}

var given = struct {
	sync.Mutex
	addrs map[string]bool
}{addrs: map[string]bool{}}

// WaitFor polls ok until it returns true, failing t after timeout.
func WaitFor(t testing.TB, p *Process, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if ok() {
			return
		}
		if p != nil && p.Exited() {
			t.Fatalf("%s exited while waiting for %s:\n%s", p.Name, what, tail(p.Log, 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if p != nil {
		t.Fatalf("timed out waiting for %s; %s log:\n%s", what, p.Name, tail(p.Log, 40))
	}
	t.Fatalf("timed out waiting for %s", what)
}

// Registry is a CNCF Distribution registry a test started.
type Registry struct {
	*Process
	Addr string // host:port on 127.0.0.1
}

// StartS3Registry starts a stock Distribution registry whose s3 storage driver
// points at bucket and prefix on the environment's S3 server: the proof that
// what s3snap writes is Distribution's own layout.
func StartS3Registry(t testing.TB, e *S3Env, bucket, prefix string) *Registry {
	t.Helper()
	root := ""
	if prefix != "" {
		root = "/" + strings.Trim(prefix, "/")
	}
	storage := fmt.Sprintf(`  s3:
    accesskey: %s
    secretkey: %s
    region: %s
    regionendpoint: %s
    forcepathstyle: true
    bucket: %s
    rootdirectory: %q
  redirect:
    disable: true
`, e.AccessKey, e.SecretKey, e.Region, e.Endpoint, bucket, root)
	return startRegistry(t, storage)
}

// StartFSRegistry starts a registry on a private filesystem directory.
func StartFSRegistry(t testing.TB) *Registry {
	t.Helper()
	return startRegistry(t, fmt.Sprintf("  filesystem:\n    rootdirectory: %s\n", t.TempDir()))
}

// StartAuthRegistry starts a registry on the filesystem directory root that
// wants HTTP basic auth from the htpasswd file (bcrypt entries; the registry
// re-reads the file when it changes).
func StartAuthRegistry(t testing.TB, root, htpasswd string) *Registry {
	t.Helper()
	auth := fmt.Sprintf("auth:\n  htpasswd:\n    realm: s3snap-test\n    path: %s\n", htpasswd)
	return startRegistryAuth(t, fmt.Sprintf("  filesystem:\n    rootdirectory: %s\n", root), auth)
}

func startRegistry(t testing.TB, storage string) *Registry {
	t.Helper()
	return startRegistryAuth(t, storage, "")
}

func startRegistryAuth(t testing.TB, storage, auth string) *Registry {
	t.Helper()
	bin := Bin(t, "registry")
	addr := FreeAddr(t)
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n%s  delete:\n    enabled: true\nhttp:\n  addr: %s\n%s", storage, addr, auth)
	path := filepath.Join(t.TempDir(), "registry.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := Start(t, "registry", []string{"OTEL_TRACES_EXPORTER=none"}, bin, "serve", path)
	WaitFor(t, p, 15*time.Second, "registry at "+addr, func() bool { return answers("http://" + addr + "/v2/") })
	return &Registry{Process: p, Addr: addr}
}

// Run runs a command to completion and returns its combined output, failing t
// on a non-zero exit.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := RunErr(context.Background(), name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// RunErr runs a command and returns its combined output and error.
func RunErr(ctx context.Context, name string, args ...string) (string, error) {
	var buf bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	return buf.String(), err
}
