package fused

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/log"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// maxLogBytes is the size past which a server's log is rotated when the
// next server starts.
const maxLogBytes = 16 << 20

// ErrNotRunning means no server answers on the root's socket.
var ErrNotRunning = errors.New("the lazy FUSE server is not running")

// Client talks to the server of one agent root. Its methods are the
// agent's snapshotter.Mounter.
type Client struct {
	root string
	http *http.Client
}

// NewClient returns a client of root's server; it connects per request.
func NewClient(root string) *Client {
	sock := SocketPath(root)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return dialPeer(ctx, sock) },
		// A request never waits on a connection the server closed meanwhile.
		DisableKeepAlives: true,
	}
	return &Client{root: root, http: &http.Client{Transport: tr}}
}

// Timeouts of one request: a server that hangs must not hang the agent
// (its start, its Usage answers) for long; a mount builds the layer's
// tree first, which takes longer for huge layers.
const (
	queryTimeout = 10 * time.Second
	mountTimeout = 2 * time.Minute
)

// Root is the agent root whose server this client talks to.
func (c *Client) Root() string { return c.root }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	timeout := queryTimeout
	if path == "/v1/mount" {
		timeout = mountTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://fused"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("%w: %w", ErrNotRunning, err)
		}
		return fmt.Errorf("lazy FUSE server: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("lazy FUSE server: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("lazy FUSE server: %s", strings.TrimSpace(string(b)))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// Info reports the running server; ErrNotRunning when none answers.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var i Info
	err := c.do(ctx, http.MethodGet, "/v1/info", nil, &i)
	return i, err
}

// Mount mounts m. It is idempotent: the same layer through the same TOC
// mounted at m.Dir is kept, anything else there replaced. On error nothing
// is mounted at m.Dir.
func (c *Client) Mount(ctx context.Context, m Mount) error {
	return c.do(ctx, http.MethodPost, "/v1/mount", m, nil)
}

// Unmount unmounts the lazy mount at dir (detached while in use); none
// there is no error.
func (c *Client) Unmount(ctx context.Context, dir string) error {
	return c.do(ctx, http.MethodPost, "/v1/unmount?dir="+url.QueryEscape(dir), nil, nil)
}

// List reports every mount the server holds.
func (c *Client) List(ctx context.Context) ([]State, error) {
	var s []State
	err := c.do(ctx, http.MethodGet, "/v1/mounts", nil, &s)
	return s, err
}

// Shutdown asks the server to unmount everything and exit; with ifIdle,
// only if it holds no mount (an error otherwise). It returns once the
// server is gone (or after timeout).
func (c *Client) Shutdown(ctx context.Context, ifIdle bool, timeout time.Duration) error {
	info, err := c.Info(ctx)
	if err != nil {
		return err
	}
	q := ""
	if ifIdle {
		q = "?if_idle=1"
	}
	if err := c.do(ctx, http.MethodPost, "/v1/shutdown"+q, nil, nil); err != nil {
		return err
	}
	// It stops answering once every mount is gone; then the process exits.
	deadline := time.Now().Add(timeout)
	for {
		_, err := c.Info(ctx)
		gone := errors.Is(err, ErrNotRunning) && (info.PID == os.Getpid() || syscall.Kill(info.PID, 0) != nil)
		if gone {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lazy FUSE server (pid %d) still running after %s", info.PID, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Gather returns the server's metrics (the layers' reads and fetches
// happen there).
func (c *Client) Gather(ctx context.Context) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://fused/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(io.LimitReader(resp.Body, 16<<20))
}

// Start runs `exe args...` as the server, detached: its own session (so
// neither a signal to the agent's process group nor the agent's death
// reaches it), stdin from /dev/null, output appended to LogPath. It waits
// until the server answers, or fails with its log's tail.
func (c *Client) Start(ctx context.Context, exe string, args []string, env []string) (Info, error) {
	if err := os.MkdirAll(Dir(c.root), 0o700); err != nil {
		return Info{}, fmt.Errorf("fused: %w", err)
	}
	// One earlier log is kept: the file must not grow for ever.
	if fi, err := os.Stat(LogPath(c.root)); err == nil && fi.Size() > maxLogBytes {
		_ = os.Rename(LogPath(c.root), LogPath(c.root)+".1")
	}
	out, err := os.OpenFile(LogPath(c.root), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return Info{}, fmt.Errorf("fused log: %w", err)
	}
	defer out.Close()
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr, cmd.Env = out, out, env
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return Info{}, fmt.Errorf("start lazy FUSE server: %w", err)
	}
	exited := make(chan struct{})
	// Reaped here while the agent lives; after, by whoever adopts it.
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		info, err := c.Info(ctx)
		if err == nil {
			log.G(ctx).WithFields(log.Fields{"pid": info.PID, "version": info.Version, "log": LogPath(c.root)}).Info("lazy FUSE server started")
			return info, nil
		}
		select {
		case <-exited:
			// Lost a race with another start: use the one that won.
			if info, err := c.Info(ctx); err == nil {
				return info, nil
			}
			return Info{}, fmt.Errorf("lazy FUSE server exited at start (%s): %s", cmd.ProcessState, tailFile(LogPath(c.root), 2048))
		case <-ctx.Done():
			return Info{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return Info{}, fmt.Errorf("lazy FUSE server did not answer within 15s: %s", tailFile(LogPath(c.root), 2048))
		}
	}
}

// Ensure connects to the running server or starts one (Start). A running
// server of another version than want is replaced when it holds no
// mount; otherwise it is kept, as its mounts would break.
func (c *Client) Ensure(ctx context.Context, want, exe string, args, env []string) (Info, error) {
	info, err := c.Info(ctx)
	if err == nil && info.Version == want {
		return info, nil
	}
	if err == nil {
		if info.Mounts > 0 {
			log.G(ctx).WithFields(log.Fields{"running": info.Version, "agent": want, "mounts": info.Mounts, "pid": info.PID}).
				Warn("lazy FUSE server of another version holds mounts: keeping it; the new version takes over when it has none, at an agent start")
			return info, nil
		}
		if err := c.Shutdown(ctx, true, 10*time.Second); err != nil {
			log.G(ctx).WithError(err).Warn("lazy FUSE server of another version did not stop: keeping it")
			return info, nil
		}
		log.G(ctx).WithFields(log.Fields{"old": info.Version, "new": want}).Info("replacing the idle lazy FUSE server with this version's")
	}
	return c.Start(ctx, exe, args, env)
}

func tailFile(path string, n int64) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if int64(len(b)) > n {
		b = b[int64(len(b))-n:]
	}
	return strings.TrimSpace(string(b))
}
