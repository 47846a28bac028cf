package lazy

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// needFUSE skips without root and /dev/fuse, or fails under CI=true.
func needFUSE(t *testing.T) {
	t.Helper()
	_, err := os.Stat("/dev/fuse")
	if os.Geteuid() == 0 && err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("CI=true: a FUSE mount needs root and /dev/fuse")
	}
	t.Skip("skipping: a FUSE mount needs root and /dev/fuse")
}

func mount(t *testing.T, b built) string {
	t.Helper()
	dir := t.TempDir()
	srv, err := Mount(context.Background(), dir, b.layer(t))
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Error(err)
		}
	})
	return dir
}

// TestMountPresentsLayer reads a mounted layer through the kernel as
// overlayfs would: contents, modes, owners, links, whiteouts, xattrs.
func TestMountPresentsLayer(t *testing.T) {
	needFUSE(t)
	big := random(7, 3<<20)
	b := build(t, 1<<20,
		dir("etc"), reg("etc/.wh.gone", nil),
		dir("opq"), reg("opq/.wh..wh..opq", nil),
		tarEntry{name: "bin/tool", typ: tar.TypeReg, mode: 0o4750, data: []byte("#!/bin/sh\n")},
		// A hard link's header carries its file's attributes (tar writers
		// record them; containerd's applier applies them to the inode).
		tarEntry{name: "bin/alias", typ: tar.TypeLink, link: "bin/tool", mode: 0o4750},
		tarEntry{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
		tarEntry{name: "data/big", typ: tar.TypeReg, data: big, xattrs: map[string]string{"user.k": "v"}},
	)
	mnt := mount(t, b)

	got, err := os.ReadFile(filepath.Join(mnt, "data/big"))
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("data/big: %d bytes, %v", len(got), err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(mnt, "etc/gone"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("whiteout etc/gone: mode %o rdev %d, want a 0:0 char device", st.Mode, st.Rdev)
	}
	val := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(mnt, "opq"), OpaqueXattr, val); err != nil || string(val[:n]) != "y" {
		t.Errorf("opq %s: %q, %v", OpaqueXattr, val[:max(n, 0)], err)
	}
	if n, err := unix.Lgetxattr(filepath.Join(mnt, "data/big"), "user.k", val); err != nil || string(val[:n]) != "v" {
		t.Errorf("data/big user.k: %v", err)
	}
	var tool, alias unix.Stat_t
	if err := unix.Lstat(filepath.Join(mnt, "bin/tool"), &tool); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(filepath.Join(mnt, "bin/alias"), &alias); err != nil {
		t.Fatal(err)
	}
	if tool.Ino != alias.Ino || tool.Nlink != 2 {
		t.Errorf("hard link: inodes %d/%d nlink %d, want one inode with 2 links", tool.Ino, alias.Ino, tool.Nlink)
	}
	if tool.Mode&07777 != 0o4750 || tool.Uid != 1000 || tool.Gid != 1001 || tool.Mtim.Sec != 1700000000 {
		t.Errorf("bin/tool: mode %o owner %d:%d mtime %d", tool.Mode&07777, tool.Uid, tool.Gid, tool.Mtim.Sec)
	}
	if l, err := os.Readlink(filepath.Join(mnt, "lib")); err != nil || l != "usr/lib" {
		t.Errorf("lib -> %q, %v", l, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "new"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("create: %v, want EROFS", err)
	}
}

// TestMountCorruptChunkIsEIO: a damaged chunk reads as EIO, not data.
func TestMountCorruptChunkIsEIO(t *testing.T) {
	needFUSE(t)
	good := build(t, 1<<20, reg("bad", random(8, 2<<20)), reg("fine", []byte("fine")))
	bad := good
	bad.data = bytes.Clone(good.data)
	bad.data[good.toc.Chunks[0].Offset+100] ^= 0x80
	mnt := mount(t, bad)
	if got, err := os.ReadFile(filepath.Join(mnt, "bad")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read bad: %d bytes, %v; want EIO", len(got), err)
	}
	// "fine" shares chunk 1 with the end of "bad": still good.
	if got, err := os.ReadFile(filepath.Join(mnt, "fine")); err != nil || string(got) != "fine" {
		t.Errorf("read fine: %q, %v", got, err)
	}
}
