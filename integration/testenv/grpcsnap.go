package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	snapshotproxy "github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/log"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// AgentSnapshotters starts agents for containerd's snapshotter suite
// (core/snapshots/testsuite), whose constructor gets a context and a root
// but no *testing.T: each agent lives until the close func its New returns,
// not until a test ends, and is reached only through its gRPC socket, as
// containerd's proxy plugin reaches it.
type AgentSnapshotters struct {
	bin  string
	cfg  string // config.toml text without root and socket
	env  []string
	name string
}

// NewAgentSnapshotters checks the agent can run here (root, the S3 server)
// and prepares configs for opts (Extra and Registries are used; ConfigPath
// is not). bin is an s3snap binary (S3snapBinary builds one).
func NewAgentSnapshotters(t testing.TB, bin string, opts AgentOptions) *AgentSnapshotters {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "the agent's overlay snapshotter needs root")
	}
	if opts.S3 == nil {
		t.Fatal("NewAgentSnapshotters: AgentOptions.S3 is required")
	}
	var b strings.Builder
	// Port 0 on two loopback addresses: agents started in parallel never
	// race for a port, and the suite needs neither server.
	fmt.Fprintf(&b, "[mirror]\naddress = \"127.0.0.1:0\"\n\n[metrics]\naddress = \"127.0.0.2:0\"\n\n[s3]\nregion = %q\nendpoint = %q\npath_style = true\n",
		opts.S3.Region, opts.S3.Endpoint)
	for host, st := range opts.Registries {
		fmt.Fprintf(&b, "\n[[registry]]\nhost = %q\nstore = %q\n", host, st)
	}
	b.WriteString("\n" + opts.Extra + "\n")
	return &AgentSnapshotters{bin: bin, cfg: b.String(), env: agentEnv(opts), name: "s3snap"}
}

// New starts an agent whose snapshotter root is root and returns a client
// over its socket, and a func that closes the client and stops the agent
// (SIGTERM), failing if the agent did not exit cleanly. Its signature is
// testsuite.SnapshotterFunc. The agent's log goes to ctx's logger (the
// suite's test log) when it stops.
func (a *AgentSnapshotters) New(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	// Config, socket and log live outside root, in a short path: unix
	// socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "agent-")
	if err != nil {
		return nil, nil, err
	}
	socket := filepath.Join(dir, "run", "s3snap.sock")
	cfgPath := filepath.Join(dir, "config.toml")
	cfg := fmt.Sprintf("root = %q\nsocket = %q\n\n%s", root, socket, a.cfg)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		removeAll(dir)
		return nil, nil, err
	}
	logPath := filepath.Join(dir, "agent.log")
	logf, err := os.Create(logPath)
	if err != nil {
		removeAll(dir)
		return nil, nil, err
	}
	cmd := exec.Command(a.bin, "agent", "--config", cfgPath, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), a.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		removeAll(dir)
		return nil, nil, fmt.Errorf("start agent: %w", err)
	}
	// exited is closed when the agent has exited, with its status in waitErr.
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	var conn *grpc.ClientConn
	closeFn := func() error {
		var errs []error
		if conn != nil {
			errs = append(errs, conn.Close())
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		stopErr := func() error {
			select {
			case <-exited:
				return waitErr
			case <-time.After(10 * time.Second):
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-exited
				return errors.New("did not stop within 10s of SIGTERM")
			}
		}()
		logf.Close()
		if stopErr != nil {
			errs = append(errs, fmt.Errorf("agent: %w; log:\n%s", stopErr, tail(logPath, 40)))
		} else {
			log.G(ctx).Debugf("agent log:\n%s", tail(logPath, 40))
		}
		removeAll(dir)
		return errors.Join(errs...)
	}
	if err := waitSocket(socket, exited, 30*time.Second); err != nil {
		return nil, nil, errors.Join(fmt.Errorf("agent socket: %w; log:\n%s", err, tail(logPath, 40)), closeFn())
	}
	log.G(ctx).WithField("startup", time.Since(start)).Debug("agent serving")
	conn, err = grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, errors.Join(fmt.Errorf("dial agent: %w", err), closeFn())
	}
	return snapshotproxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), a.name), closeFn, nil
}

// waitSocket waits until the agent's socket accepts connections (the file
// appears at bind, a moment before listen: a connection then is refused;
// one accepted before the gRPC server serves waits in the backlog) or the
// agent exits.
func waitSocket(socket string, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, err := net.DialTimeout("unix", socket, time.Second); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("agent exited before serving")
		case <-deadline.C:
			return fmt.Errorf("not there after %s", timeout)
		case <-tick.C:
		}
	}
}
