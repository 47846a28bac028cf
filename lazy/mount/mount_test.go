package mount

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/continuity/sysx"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/s3snap/s3snap/lazy"
)

// The helpers below build a layer and its index in memory, as package
// lazy's own tests do.

type tarEntry struct {
	name, link string
	typ        byte
	data       []byte
	mode       int64
	xattrs     map[string]string
}

func reg(name string, data []byte) tarEntry {
	return tarEntry{name: name, typ: tar.TypeReg, data: data}
}
func dir(name string) tarEntry { return tarEntry{name: name, typ: tar.TypeDir, mode: 0o755} }

func random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

type built struct {
	toc  *lazy.TOC
	data []byte
}

// build indexes a gzip'd tar of entries in memory, the TOC round-tripped
// through its encoding as a reader gets it from the bucket.
func build(t testing.TB, chunk int64, entries ...tarEntry) built {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, e := range entries {
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: mode, Linkname: e.link, Size: int64(len(e.data)),
			ModTime: time.Unix(1700000000, 0), Uid: 1000, Gid: 1001, Format: tar.FormatPAX}
		for k, v := range e.xattrs {
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = map[string]string{}
			}
			hdr.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(raw.Bytes())
	_ = zw.Close()
	var data bytes.Buffer
	toc, err := lazy.Build(context.Background(), digest.FromBytes(gz.Bytes()), bytes.NewReader(gz.Bytes()), &data, lazy.WithChunkSize(chunk))
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	enc, err := toc.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := lazy.DecodeTOC(enc)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return built{toc: back, data: data.Bytes()}
}

func (b built) layer(t *testing.T) *lazy.Layer {
	cache, err := lazy.NewCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cache.Close)
	return lazy.NewLayer(b.toc, cache, func() (io.ReaderAt, error) { return bytes.NewReader(b.data), nil })
}

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

func xattrsOf(t *testing.T, p string) map[string][]byte {
	t.Helper()
	names, err := sysx.LListxattr(p)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, n := range names {
		v, err := sysx.LGetxattr(p, n)
		if err != nil {
			t.Fatal(err)
		}
		out[n] = v
	}
	return out
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
	if n, err := unix.Lgetxattr(filepath.Join(mnt, "opq"), lazy.OpaqueXattr, val); err != nil || string(val[:n]) != "y" {
		t.Errorf("opq %s: %q, %v", lazy.OpaqueXattr, val[:max(n, 0)], err)
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

// go-fuse panics on a name it cannot hold; Tree never makes one, and if it
// did, mounting would fail with an error before anything is mounted, not
// crash the agent.
func TestNodeFSPanicIsAnError(t *testing.T) {
	b := build(t, 1024, dir("d"), reg("d/a", []byte("aaa")))
	root, err := lazy.Tree(b.toc)
	if err != nil {
		t.Fatal(err)
	}
	root.Children[""] = &lazy.Node{Entry: lazy.Entry{Type: lazy.TypeChar}, Ino: 99, Nlink: 1}
	_, err = newNodeFS(&rootNode{node{n: root, l: b.layer(t), ctx: context.Background()}}, nil)
	if !errors.Is(err, lazy.ErrInvalidIndex) {
		t.Fatalf("a tree with an empty name: %v, want ErrInvalidIndex", err)
	}
}

// Mounted, an implied directory has the attributes WithImplicitDirs gives.
func TestMountImplicitDirs(t *testing.T) {
	needFUSE(t)
	b := build(t, 1024, reg("a/b/f", []byte("f")))
	if dirs := lazy.ImplicitDirs(b.toc); !reflect.DeepEqual(dirs, []string{"a", "a/b"}) {
		t.Fatalf("implicit dirs %q", dirs)
	}
	dir := t.TempDir()
	attrs := map[string]lazy.Entry{"a": {Mode: 0o2751, UID: 5, GID: 6, ModTime: 1600000000e9, Xattrs: map[string][]byte{"user.x": []byte("y"), "trusted.no": []byte("1")}}}
	srv, err := Mount(context.Background(), dir, b.layer(t), lazy.WithImplicitDirs(attrs))
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Error(err)
		}
	})
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "a"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&07777 != 0o2751 || st.Uid != 5 || st.Gid != 6 || st.Mtim.Sec != 1600000000 {
		t.Errorf("a: mode %o owner %d:%d mtime %d, want 2751 5:6 1600000000", st.Mode&07777, st.Uid, st.Gid, st.Mtim.Sec)
	}
	if x := xattrsOf(t, filepath.Join(dir, "a")); !reflect.DeepEqual(x, map[string][]byte{"user.x": []byte("y")}) {
		t.Errorf("a xattrs %q, want user.x only", x)
	}
	if err := unix.Lstat(filepath.Join(dir, "a/b"), &st); err != nil || st.Mode&07777 != 0o755 || st.Uid != 0 {
		t.Errorf("a/b: mode %o owner %d, %v; want 755 root", st.Mode&07777, st.Uid, err)
	}
}
