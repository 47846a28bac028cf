package atomicfile

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		perm  os.FileMode
		opts  []Option
		owner int // -1: not checked
	}{
		{"mode kept narrow", 0o600, nil, -1},
		{"setgid survives the chown", 0o2750 | os.ModeSetgid, []Option{WithOwner(os.Getuid(), os.Getgid())}, os.Getuid()},
		{"no sync", 0o640, []Option{NoSync()}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := Write(p, []byte(tc.name), tc.perm, tc.opts...); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(p)
			if err != nil || string(b) != tc.name {
				t.Fatalf("read back %q, %v", b, err)
			}
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tc.perm.Perm() || (tc.perm&os.ModeSetgid != 0) != (fi.Mode()&os.ModeSetgid != 0) {
				t.Errorf("mode %v, want %v", fi.Mode(), tc.perm)
			}
			if tc.owner >= 0 && int(fi.Sys().(*syscall.Stat_t).Uid) != tc.owner {
				t.Errorf("owner %d, want %d", fi.Sys().(*syscall.Stat_t).Uid, tc.owner)
			}
		})
	}
	// A failed write leaves the old file and no temporary file behind.
	if err := Write(filepath.Join(dir, "missing-dir", "f"), []byte("x"), 0o600); err == nil {
		t.Error("write into a missing directory succeeded")
	}
	// The rename fails (a non-empty directory is in the way) after the
	// temporary file was written: it must not stay.
	busy := filepath.Join(dir, "busy")
	if err := os.MkdirAll(filepath.Join(busy, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Write(busy, []byte("x"), 0o600); err == nil {
		t.Error("replacing a non-empty directory succeeded")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %v, want only f and busy", names)
	}
}
