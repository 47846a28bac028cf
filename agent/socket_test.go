package agent

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestListenSocket(t *testing.T) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "sock-") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "run", "s.sock")

	l, err := listenSocket(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode())
	}
	if fi, _ := os.Stat(filepath.Dir(path)); fi.Mode().Perm() != 0o700 {
		t.Errorf("socket dir mode %v, want 0700", fi.Mode())
	}

	t.Run("live socket is left alone", func(t *testing.T) {
		if _, err := listenSocket(ctx, path); err == nil || !strings.Contains(err.Error(), "already running") {
			t.Errorf("second listen = %v, want an already-running error", err)
		}
	})

	t.Run("stale socket is replaced", func(t *testing.T) {
		l.(*net.UnixListener).SetUnlinkOnClose(false) // as after a crash
		l.Close()
		if _, err := os.Lstat(path); err != nil {
			t.Fatalf("stale socket not left behind: %v", err)
		}
		l2, err := listenSocket(ctx, path)
		if err != nil {
			t.Fatalf("listen over a stale socket: %v", err)
		}
		l2.Close()
	})

	t.Run("a file that is not a socket is kept", func(t *testing.T) {
		file := filepath.Join(dir, "run", "file")
		if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := listenSocket(ctx, file); err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Errorf("listen over a regular file = %v", err)
		}
		if b, _ := os.ReadFile(file); string(b) != "keep" {
			t.Error("regular file was touched")
		}
	})

	t.Run("loose directory is tightened", func(t *testing.T) {
		loose := filepath.Join(dir, "loose")
		if err := os.Mkdir(loose, 0o755); err != nil {
			t.Fatal(err)
		}
		l, err := listenSocket(ctx, filepath.Join(loose, "s.sock"))
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
		if fi, _ := os.Stat(loose); fi.Mode().Perm() != 0o700 {
			t.Errorf("dir mode %v, want 0700", fi.Mode())
		}
	})

	t.Run("shared directory keeps its mode", func(t *testing.T) {
		shared := filepath.Join(dir, "shared")
		if err := os.Mkdir(shared, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(shared, "other"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		l, err := listenSocket(ctx, filepath.Join(shared, "s.sock"))
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
		if fi, _ := os.Stat(shared); fi.Mode().Perm() != 0o755 {
			t.Errorf("shared dir mode changed to %v", fi.Mode())
		}
	})
}
