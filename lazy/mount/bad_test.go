package mount

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/s3snap/s3snap/lazy"
)

// TestMountBadLayerIsEIO: once the layer is marked bad (it failed
// verification), its files read as EIO, also one read before, whose pages
// the kernel had cached.
func TestMountBadLayerIsEIO(t *testing.T) {
	needFUSE(t)
	b := build(t, 1<<20, reg("early", []byte("read before the check")), reg("late", []byte("never read")))
	l := b.layer(t)
	dir := t.TempDir()
	srv, err := Mount(context.Background(), dir, l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Error(err)
		}
	})
	if got, err := os.ReadFile(filepath.Join(dir, "early")); err != nil || string(got) != "read before the check" {
		t.Fatalf("read early: %q, %v", got, err)
	}
	l.MarkBad(lazy.ErrMismatch)
	for _, name := range []string{"early", "late"} {
		if got, err := os.ReadFile(filepath.Join(dir, name)); !errors.Is(err, syscall.EIO) {
			t.Errorf("read %s after the layer went bad: %q, %v; want EIO", name, got, err)
		}
	}
}
