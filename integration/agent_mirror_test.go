package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/store"
)

// TestAgentMirror runs `s3snap agent` with a real containerd: an image in
// the bucket is resolved and fetched through the agent's mirror without a
// single request to the registry, an image only in the registry still pulls
// (fallback), and the agent's endpoints are locked down.
func TestAgentMirror(t *testing.T) {
	e := testenv.S3(t)
	ctx := context.Background()
	bucket := e.NewBucket(t)
	st := store.New(e.Client(t), bucket, store.WithPrefix("mirror"))
	reg := testenv.StartFSRegistry(t)
	upstream := reg.Addr

	inBucket := testenv.RunnableImage(t, []testenv.File{{Name: "data/a", Data: bytes.Repeat([]byte("s3snap"), 50000)}})
	d := testenv.PutImage(t, st, "team/app", inBucket)
	if err := st.Tag(ctx, "team/app", "v1", d); err != nil {
		t.Fatal(err)
	}
	testenv.PushToRegistry(t, upstream, "team/app", "v1", inBucket)
	onlyUpstream := testenv.NewImage(t, testenv.HostPlatform(), []testenv.File{{Name: "only", Data: []byte("upstream")}})
	testenv.PushToRegistry(t, upstream, "team/other", "v1", onlyUpstream)

	notifications := listenNotify(t)
	a := testenv.StartAgent(t, testenv.AgentOptions{
		S3:         e,
		Registries: map[string]string{upstream: "s3://" + bucket + "/mirror"},
		Env:        []string{"NOTIFY_SOCKET=" + notifications.LocalAddr().String()},
	})
	c := testenv.StartContainerd(t, testenv.ContainerdOptions{Extra: a.ContainerdConfig(upstream)})
	pull := func(ref string) string {
		return c.Ctr(t, "images", "pull", "--hosts-dir", a.HostsDir, "--snapshotter", "s3snap", ref)
	}

	t.Run("image in the bucket comes from the mirror", func(t *testing.T) {
		pull(upstream + "/team/app:v1")
		if hits := a.Metric(t, "s3snap_mirror_lookups_total", "kind=manifest", "result=hit"); hits < 1 {
			t.Errorf("mirror manifest hits = %v, want at least 1", hits)
		}
		if n := registryRequests(t, reg, "/v2/team/app/"); n != 0 {
			t.Errorf("the registry got %d requests for team/app, want 0: all of it is in the bucket", n)
		}
		out := c.Ctr(t, "images", "ls", "-q")
		if !strings.Contains(out, upstream+"/team/app:v1") {
			t.Errorf("image not listed after pull:\n%s", out)
		}
		run := c.Ctr(t, "run", "--rm", "--snapshotter", "s3snap", upstream+"/team/app:v1", "agent-mirror-run", "/hello", "/data/a")
		want := fmt.Sprintf("%x  /data/a", sha256.Sum256(bytes.Repeat([]byte("s3snap"), 50000)))
		if !strings.Contains(run, "hello from s3snap") || !strings.Contains(run, want) {
			t.Errorf("container output lacks %q:\n%s", want, run)
		}
	})

	t.Run("image only upstream falls back", func(t *testing.T) {
		before := a.Metric(t, "s3snap_mirror_lookups_total", "kind=manifest", "result=miss")
		pull(upstream + "/team/other:v1")
		if misses := a.Metric(t, "s3snap_mirror_lookups_total", "kind=manifest", "result=miss"); misses <= before {
			t.Errorf("mirror manifest misses %v -> %v: containerd did not ask the mirror first", before, misses)
		}
		if n := registryRequests(t, reg, "/v2/team/other/manifests/"); n == 0 {
			t.Error("the registry served no manifest for team/other: the fallback did not happen")
		}
	})

	t.Run("mirror and metrics listen on loopback only", func(t *testing.T) {
		for _, addr := range []string{a.MirrorAddr, a.MetricsAddr} {
			if !strings.HasPrefix(addr, "127.0.0.1:") {
				t.Errorf("listening on %s", addr)
			}
			_, port, _ := net.SplitHostPort(addr)
			for _, ip := range hostIPs(t) {
				if conn, err := net.Dial("tcp", net.JoinHostPort(ip, port)); err == nil {
					conn.Close()
					t.Errorf("port %s answers on %s", port, ip)
				}
			}
		}
		bad := filepath.Join(t.TempDir(), "bad.toml")
		writeFile(t, bad, []byte("[mirror]\naddress = \"0.0.0.0:5050\"\n[[registry]]\nhost = \"r\"\nstore = \"s3://b\"\n"))
		out, err := testenv.RunErr(ctx, testenv.S3snapBinary(t), "agent", "--config", bad)
		if err == nil || !strings.Contains(out, "not a loopback IP address") {
			t.Errorf("agent with mirror on 0.0.0.0: err %v, output:\n%s", err, out)
		}
	})

	t.Run("socket is 0600 in a 0700 directory", func(t *testing.T) {
		fi, err := os.Lstat(a.Socket)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
			t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
		}
		di, err := os.Stat(filepath.Dir(a.Socket))
		if err != nil || di.Mode().Perm() != 0o700 {
			t.Errorf("socket directory mode %v (%v), want 0700", di.Mode(), err)
		}
	})

	t.Run("sd_notify", func(t *testing.T) {
		if got := readNotify(t, notifications); got != "READY=1" {
			t.Errorf("first notification %q, want READY=1", got)
		}
		a.Stop()
		if got := readNotify(t, notifications); got != "STOPPING=1" {
			t.Errorf("notification on SIGTERM %q, want STOPPING=1", got)
		}
		if _, err := os.Stat(a.Socket); !os.IsNotExist(err) {
			t.Errorf("socket left behind after a clean stop: %v", err)
		}
		a.Restart(t)
		if got := readNotify(t, notifications); got != "READY=1" {
			t.Errorf("after restart %q, want READY=1", got)
		}
	})

	t.Run("healthz", func(t *testing.T) {
		code, h := a.Health(t)
		if code != http.StatusOK || h.Status != "ok" || len(h.Stores) != 1 || !h.Stores[0].Layout {
			t.Fatalf("healthz = %d %+v, want 200 ok with the store's layout found", code, h)
		}
		c := e.Client(t)
		testenv.EmptyBucket(ctx, c, bucket)
		if _, err := c.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: &bucket}); err != nil {
			t.Fatal(err)
		}
		code, h = a.Health(t)
		if code != http.StatusServiceUnavailable || h.Status != "fail" || len(h.Stores) != 1 ||
			h.Stores[0].OK || !strings.Contains(h.Stores[0].Error, bucket) || h.Stores[0].Registry != upstream {
			t.Errorf("healthz with the bucket gone = %d %+v, want 503 naming the store", code, h)
		}
	})
}

// listenNotify listens where systemd would for sd_notify messages.
func listenNotify(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readNotify(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no sd_notify message: %v", err)
	}
	return strings.TrimSpace(string(buf[:n]))
}

// registryRequests counts the requests containerd made to the registry
// (its access log lines with containerd's user agent) for paths starting
// with path.
func registryRequests(t *testing.T, reg *testenv.Registry, path string) int {
	t.Helper()
	b, err := os.ReadFile(reg.Log)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		// Access log: 127.0.0.1 - - [date] "GET /v2/... HTTP/1.1" 200 182 "" "containerd/2.4.2"
		if strings.Contains(line, " "+path) && strings.Contains(line, " HTTP/1.1\" ") && strings.Contains(line, `"containerd/`) {
			n++
		}
	}
	return n
}

// hostIPs returns this machine's non-loopback IPv4 addresses.
func hostIPs(t *testing.T) []string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			ips = append(ips, n.IP.String())
		}
	}
	return ips
}
