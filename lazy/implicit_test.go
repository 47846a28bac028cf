package lazy

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/continuity/fs"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("CI=true: owners and trusted xattrs need root")
	}
	t.Skip("skipping: owners and trusted xattrs need root")
}

// lowerDirAttrs is what the snapshotter does for WithImplicitDirs, as
// containerd's mkparent does: each implied directory is looked up in the
// lower layers, topmost first; the first that has the path decides: a
// directory gives its attributes, anything else none.
func lowerDirAttrs(t *testing.T, lowers, dirs []string) map[string]Entry {
	t.Helper()
	attrs := map[string]Entry{}
	for _, d := range dirs {
		for _, lower := range lowers {
			p, err := fs.RootPath(lower, d)
			if err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); errors.Is(err, unix.ENOENT) {
				continue
			} else if err != nil {
				t.Fatal(err)
			}
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				attrs[d] = Entry{Mode: st.Mode & 07777, UID: int(st.Uid), GID: int(st.Gid), ModTime: st.Mtim.Nano(), Xattrs: xattrsOf(t, p)}
			}
			break
		}
	}
	return attrs
}

func xattrsOf(t *testing.T, p string) map[string][]byte {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatalf("listxattr %s: %v", p, err)
	}
	var x map[string][]byte
	for _, k := range strings.Split(string(buf[:n]), "\x00") {
		if k == "" {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, k, v)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, k, err)
		}
		if x == nil {
			x = map[string][]byte{}
		}
		x[k] = v[:m]
	}
	return x
}

type lowerDir struct {
	name     string
	mode     uint32 // 0: a regular file
	uid, gid int
	xattrs   map[string]string
	symlink  string
}

func makeLower(t *testing.T, dirs ...lowerDir) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range dirs {
		p := filepath.Join(root, d.name)
		var err error
		switch {
		case d.symlink != "":
			err = os.Symlink(d.symlink, p)
		case d.mode == 0:
			err = os.WriteFile(p, []byte("file"), 0o644)
		default:
			if err = os.Mkdir(p, 0o700); err == nil {
				if err = os.Lchown(p, d.uid, d.gid); err == nil {
					err = unix.Chmod(p, d.mode) // after chown, which may clear setgid
				}
			}
			for k, v := range d.xattrs {
				if err == nil {
					err = unix.Lsetxattr(p, k, []byte(v), 0)
				}
			}
			if err == nil {
				err = os.Chtimes(p, time.Unix(1600000000, 0), time.Unix(1600000000, 0))
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// The tree with WithImplicitDirs is what containerd's own unpack into an
// overlay upper directory makes of the same layer over the same lower
// layers: directories the layer implies take the topmost lower layer's
// mode, owner and xattrs (not trusted.*), one replaced there by a file
// or found nowhere is root's 0755, symlinks in the lower layers are
// followed, and a directory entry after its implied creation adds its
// xattrs to the copied ones.
func TestTreeMatchesContainerdUnpack(t *testing.T) {
	needRoot(t)
	top := makeLower(t,
		lowerDir{name: "a", mode: unix.S_ISGID | unix.S_ISVTX | 0o775, uid: 123, gid: 456, xattrs: map[string]string{"user.k": "v", "trusted.t": "1"}},
		lowerDir{name: "a/b", mode: 0o710, uid: 7, gid: 8},
		lowerDir{name: "n"}, // a file over the bottom layer's directory n
		lowerDir{name: "sd", mode: 0o701, uid: 9, gid: 9},
		lowerDir{name: "s", symlink: "sd"},
		lowerDir{name: "q", mode: 0o777, uid: 3, gid: 3, xattrs: map[string]string{"user.low": "1"}},
	)
	bottom := makeLower(t,
		lowerDir{name: "a", mode: 0o700, uid: 1, gid: 1},
		lowerDir{name: "m", mode: unix.S_ISGID | unix.S_ISVTX | 0o751, uid: 11, gid: 12, xattrs: map[string]string{"user.m": "2", "trusted.m": "x"}},
		lowerDir{name: "n", mode: 0o700, uid: 2, gid: 2},
	)
	lowers := []string{top, bottom}
	blob, _ := layerBlob(t,
		reg("a/b/c/file", []byte("f")),
		tarEntry{name: "a/b/c/link", typ: tar.TypeLink, link: "a/b/c/file"},
		reg("m/y", []byte("y")),
		reg("n/x", []byte("x")),
		reg("s/x", []byte("x")),
		reg("z/.wh.w", nil),
		reg("o/.wh..wh..opq", nil),
		reg("q/r", []byte("r")),
		tarEntry{name: "q", typ: tar.TypeDir, mode: 0o700, xattrs: map[string]string{"user.e": "1"}},
		tarEntry{name: "lnk", typ: tar.TypeSymlink, link: "a/b"},
	)

	upper := t.TempDir()
	ds, err := compression.DecompressStream(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := archive.Apply(context.Background(), upper, ds, archive.WithConvertWhiteout(archive.OverlayConvertWhiteout), archive.WithParents(lowers)); err != nil {
		t.Fatalf("containerd apply: %v", err)
	}
	ds.Close()

	b := buildBlob(t, blob)
	dirs := ImplicitDirs(b.toc)
	want := []string{"a", "a/b", "a/b/c", "m", "n", "o", "q", "s", "z"}
	if !reflect.DeepEqual(dirs, want) {
		t.Errorf("implicit dirs %q, want %q", dirs, want)
	}
	root, err := Tree(b.toc, WithImplicitDirs(lowerDirAttrs(t, lowers, dirs)))
	if err != nil {
		t.Fatal(err)
	}
	compareTree(t, upper, root)

	// Without lower layers' attributes: root's 0755, as containerd does
	// for a directory it finds nowhere.
	plain, err := Tree(b.toc)
	if err != nil {
		t.Fatal(err)
	}
	if e := find(t, plain, "a").Entry; e.Mode != 0o755 || e.UID != 0 || e.Xattrs != nil {
		t.Errorf("a without lower attributes: %+v", e)
	}
}

// buildBlob indexes a layer blob in memory.
func buildBlob(t *testing.T, blob []byte) built {
	t.Helper()
	var data bytes.Buffer
	toc, err := Build(context.Background(), digest.FromBytes(blob), bytes.NewReader(blob), &data, WithChunkSize(1024))
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	enc, err := toc.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeTOC(enc)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return built{toc: back, data: data.Bytes(), blob: blob}
}

// compareTree checks every file of dir against the tree and back: type,
// mode, owner, link count, xattrs, link target, device.
func compareTree(t *testing.T, dir string, root *Node) {
	t.Helper()
	seen := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		seen[rel] = true
		n := root
		for _, part := range strings.Split(rel, "/") {
			if n = n.Children[part]; n == nil {
				t.Errorf("%s: in containerd's unpack, not in the tree", rel)
				return nil
			}
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := n.Entry
		if got := typeBits(e.Type); got != st.Mode&unix.S_IFMT {
			t.Errorf("%s: type %o, containerd %o", rel, got, st.Mode&unix.S_IFMT)
		}
		if e.Mode != st.Mode&07777 || uint32(e.UID) != st.Uid || uint32(e.GID) != st.Gid {
			t.Errorf("%s: mode %o owner %d:%d, containerd %o %d:%d", rel, e.Mode, e.UID, e.GID, st.Mode&07777, st.Uid, st.Gid)
		}
		if uint64(n.Nlink) != st.Nlink {
			t.Errorf("%s: %d links, containerd %d", rel, n.Nlink, st.Nlink)
		}
		if x := xattrsOf(t, p); !reflect.DeepEqual(e.Xattrs, x) && len(e.Xattrs)+len(x) > 0 {
			t.Errorf("%s: xattrs %q, containerd %q", rel, e.Xattrs, x)
		}
		// Implied directories' times are "now" in containerd's unpack
		// (creating files in them changes them), whiteouts' too.
		if (e.Type == TypeReg || e.Type == TypeSymlink) && e.ModTime != st.Mtim.Nano() {
			t.Errorf("%s: mtime %d, containerd %d", rel, e.ModTime, st.Mtim.Nano())
		}
		if e.Type == TypeSymlink {
			if l, _ := os.Readlink(p); l != e.Linkname {
				t.Errorf("%s: -> %q, containerd -> %q", rel, e.Linkname, l)
			}
		}
		if (e.Type == TypeChar || e.Type == TypeBlock) && uint64(unix.Mkdev(uint32(e.DevMajor), uint32(e.DevMinor))) != st.Rdev {
			t.Errorf("%s: device %d:%d, containerd %d", rel, e.DevMajor, e.DevMinor, st.Rdev)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var walk func(p string, n *Node)
	walk = func(p string, n *Node) {
		for name, c := range n.Children {
			cp := filepath.Join(p, name)
			if !seen[cp] {
				t.Errorf("%s: in the tree, not in containerd's unpack", cp)
			}
			walk(cp, c)
		}
	}
	walk("", root)
}

// Tree builds the nodes' attributes without touching the TOC's: opaque
// markers and merged xattrs go to copies, so building it twice (Validate
// does once) gives the same tree and the TOC encodes as before.
func TestTreeLeavesTOCAlone(t *testing.T) {
	b := build(t, 1024, tarEntry{name: "d", typ: tar.TypeDir, mode: 0o755, xattrs: map[string]string{"user.a": "1"}},
		reg("d/.wh..wh..opq", nil), tarEntry{name: "d", typ: tar.TypeDir, mode: 0o700, xattrs: map[string]string{"user.b": "2"}})
	before, err := b.toc.Encode()
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		root, err := Tree(b.toc, WithImplicitDirs(map[string]Entry{"d": {Mode: 0o777, Xattrs: map[string][]byte{"user.low": nil}}}))
		if err != nil {
			t.Fatal(err)
		}
		want := map[string][]byte{"user.a": []byte("1"), "user.b": []byte("2"), OpaqueXattr: []byte("y")}
		if d := find(t, root, "d"); !reflect.DeepEqual(d.Entry.Xattrs, want) || d.Entry.Mode != 0o700 {
			t.Errorf("d: mode %o xattrs %q, want 700 %q", d.Entry.Mode, d.Entry.Xattrs, want)
		}
	}
	if after, _ := b.toc.Encode(); !bytes.Equal(before, after) {
		t.Error("building the tree changed the toc")
	}
	if dirs := ImplicitDirs(b.toc); len(dirs) != 0 {
		t.Errorf("implicit dirs %q, want none", dirs)
	}
}

// typeBits is the S_IFMT bits of an entry type.
func typeBits(t Type) uint32 {
	switch t {
	case TypeDir:
		return unix.S_IFDIR
	case TypeSymlink:
		return unix.S_IFLNK
	case TypeChar:
		return unix.S_IFCHR
	case TypeBlock:
		return unix.S_IFBLK
	case TypeFifo:
		return unix.S_IFIFO
	}
	return unix.S_IFREG
}
