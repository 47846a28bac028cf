package server

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/lazy/fused"
	"github.com/s3snap/s3snap/store"
)

// layerTOC builds a small layer's index and keeps its TOC under root as
// the agent does; it returns the layer and TOC digests.
func layerTOC(t *testing.T, root string, files ...string) (layer, toc digest.Digest) {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, name := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(name))}); err != nil {
			t.Fatal(err)
		}
		_, _ = tw.Write([]byte(name))
	}
	_ = tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(raw.Bytes())
	_ = zw.Close()
	layer = digest.FromBytes(gz.Bytes())
	built, err := lazy.Build(context.Background(), layer, bytes.NewReader(gz.Bytes()), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := built.Encode()
	if err != nil {
		t.Fatal(err)
	}
	toc = digest.FromBytes(enc)
	dir := filepath.Join(root, "lazy", "toc")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, toc.Encoded()), enc, 0o600); err != nil {
		t.Fatal(err)
	}
	return layer, toc
}

// serve runs a server on a fresh root until the test ends.
func serve(t *testing.T) (root string, c *fused.Client, wait func() error) {
	t.Helper()
	return serveWith(t, func(string) []*store.Store { return nil })
}

// serveWith is serve with the stores of every registry host.
func serveWith(t *testing.T, stores StoreFunc) (root string, c *fused.Client, wait func() error) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
	root = t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var serveErr error
	stopped := make(chan struct{})
	go func() {
		serveErr = Serve(ctx, root, stores, WithVersion("test"))
		close(stopped)
	}()
	c = fused.NewClient(root)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.Info(ctx); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server does not answer")
		}
		time.Sleep(10 * time.Millisecond)
	}
	wait = func() error {
		select {
		case <-stopped:
			return serveErr
		case <-time.After(10 * time.Second):
			return errors.New("the server did not stop")
		}
	}
	t.Cleanup(func() {
		cancel()
		if err := wait(); err != nil {
			t.Error(err)
		}
	})
	return root, c, wait
}

// ls lists dir from another process: a process must never read a mount
// it serves.
func ls(t *testing.T, dir string) string {
	t.Helper()
	out, err := exec.Command("ls", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("ls %s: %v\n%s", dir, err, out)
	}
	return strings.Join(strings.Fields(string(out)), " ")
}

func TestMountListUnmount(t *testing.T) {
	root, c, _ := serve(t)
	ctx := context.Background()
	layer, toc := layerTOC(t, root, "a", "b")
	other, otherTOC := layerTOC(t, root, "c")
	dir := filepath.Join(root, "snapshots", "1", "fs")
	m := fused.Mount{Name: "chain", Dir: dir, Layer: layer, TOC: toc, Host: "registry.example"}

	if err := c.Mount(ctx, m); err != nil {
		t.Fatal(err)
	}
	if got := ls(t, dir); got != "a b" {
		t.Errorf("mounted layer lists %q, want \"a b\"", got)
	}
	// Idempotent: the same mount is kept, not mounted twice.
	if err := c.Mount(ctx, m); err != nil {
		t.Fatal(err)
	}
	states, err := c.List(ctx)
	if err != nil || len(states) != 1 || !states[0].Mounted || states[0].Layer != layer || states[0].Inodes != 2 {
		t.Fatalf("List = %+v, %v; want the one mount", states, err)
	}
	if mounts := lazyMountPoints(); !mounts[dir] || len(mounts) == 0 {
		t.Errorf("mountinfo has no lazy mount at %s", dir)
	}
	// Another layer at the same place replaces it.
	m2 := m
	m2.Layer, m2.TOC = other, otherTOC
	if err := c.Mount(ctx, m2); err != nil {
		t.Fatal(err)
	}
	if got := ls(t, dir); got != "c" {
		t.Errorf("remounted layer lists %q, want \"c\"", got)
	}
	if err := c.Shutdown(ctx, true, time.Second); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Shutdown if idle with a mount: %v, want refused", err)
	}
	for range 2 { // idempotent
		if err := c.Unmount(ctx, dir); err != nil {
			t.Fatal(err)
		}
	}
	if states, _ := c.List(ctx); len(states) != 0 {
		t.Errorf("after Unmount List = %+v", states)
	}
	if isMounted(dir) {
		t.Errorf("%s still mounted", dir)
	}
}

func TestMountRefused(t *testing.T) {
	root, c, _ := serve(t)
	ctx := context.Background()
	layer, toc := layerTOC(t, root, "a")
	other, _ := layerTOC(t, root, "b")
	dir := filepath.Join(root, "snapshots", "2", "fs")
	damaged, _ := layerTOC(t, root, "d")
	bad := digest.FromString("not the toc")
	if err := os.WriteFile(filepath.Join(root, "lazy", "toc", bad.Encoded()), []byte("something else"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		m    fused.Mount
		want string
	}{
		{"outside the snapshots", fused.Mount{Dir: filepath.Join(root, "elsewhere", "fs"), Layer: layer, TOC: toc}, "not a snapshot directory"},
		{"not a snapshot's fs", fused.Mount{Dir: filepath.Join(root, "snapshots", "2"), Layer: layer, TOC: toc}, "not a snapshot directory"},
		{"dot dot", fused.Mount{Dir: root + "/snapshots/../../etc/fs", Layer: layer, TOC: toc}, "not a snapshot directory"},
		{"no such toc", fused.Mount{Dir: dir, Layer: layer, TOC: digest.FromString("none")}, "no such file"},
		{"toc not by its digest", fused.Mount{Dir: dir, Layer: damaged, TOC: bad}, "is not"},
		{"toc of another layer", fused.Mount{Dir: dir, Layer: other, TOC: toc}, "describes"},
		{"toc of another diff ID", fused.Mount{Dir: dir, Layer: layer, TOC: toc, DiffID: digest.FromString("other")}, "names diff ID"},
		{"malformed digest", fused.Mount{Dir: dir, Layer: "sha256:xyz", TOC: toc}, "layer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Mount(ctx, tc.m)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Mount = %v, want an error saying %q", err, tc.want)
			}
			if len(lazyMountPoints()) != 0 && isMounted(tc.m.Dir) {
				t.Errorf("%s mounted", tc.m.Dir)
			}
		})
	}
	if err := c.Unmount(ctx, "/etc/fs"); err == nil {
		t.Error("Unmount outside the snapshots: no error")
	}
}

// TestShutdown: asked to, the server unmounts everything and exits.
func TestShutdown(t *testing.T) {
	root, c, wait := serve(t)
	ctx := context.Background()
	layer, toc := layerTOC(t, root, "a")
	dir := filepath.Join(root, "snapshots", "3", "fs")
	if err := c.Mount(ctx, fused.Mount{Dir: dir, Layer: layer, TOC: toc}); err != nil {
		t.Fatal(err)
	}
	if err := c.Shutdown(ctx, false, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := wait(); err != nil {
		t.Errorf("Serve = %v", err)
	}
	if isMounted(dir) {
		t.Errorf("%s still mounted after shutdown", dir)
	}
	if _, err := c.Info(ctx); !errors.Is(err, fused.ErrNotRunning) {
		t.Errorf("Info after shutdown = %v, want ErrNotRunning", err)
	}
}

// TestOneServerPerRoot: a second server on the same root fails at once.
func TestOneServerPerRoot(t *testing.T) {
	root, _, _ := serve(t)
	err := Serve(context.Background(), root, func(string) []*store.Store { return nil })
	if !errors.Is(err, ErrRunning) {
		t.Errorf("second Serve = %v, want ErrRunning", err)
	}
}

// TestOtherUserRefused: even with the socket's modes loosened, a process
// of another user gets no answer (SO_PEERCRED).
func TestOtherUserRefused(t *testing.T) {
	if os.Getenv("FUSED_TEST_DIAL") != "" {
		_, err := fused.NewClient(os.Getenv("FUSED_TEST_DIAL")).Info(context.Background())
		if err == nil {
			os.Exit(3)
		}
		os.Exit(0)
	}
	root, _, _ := serve(t)
	for _, p := range []string{filepath.Dir(root), root, fused.Dir(root)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(fused.SocketPath(root), 0o666); err != nil {
		t.Fatal(err)
	}
	// The test binary, where that user may run it.
	bin, err := os.MkdirTemp("", "fused-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(bin)
	exe, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "server.test"), exe, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "server.test"), "-test.run", "^TestOtherUserRefused$")
	cmd.Env = append(os.Environ(), "FUSED_TEST_DIAL="+root)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 3 {
		t.Fatalf("another user's process got an answer:\n%s", out)
	}
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/var/lib/s3snap/snapshots/1/fs", "/var/lib/s3snap/snapshots/1/fs"},
		{`/data/my\040root/snapshots/1/fs`, "/data/my root/snapshots/1/fs"},
		{`/a\011b\012c\134d`, "/a\tb\nc\\d"},
		{`/trailing\04`, `/trailing\04`},
		{`/not\999octal`, `/not\999octal`},
	} {
		if got := unescapeMountinfo(tc.in); got != tc.want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
