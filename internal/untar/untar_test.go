package untar

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/archive"
	"golang.org/x/sys/unix"
)

// entry is one tar entry of a test layer.
type entry struct {
	name, link string
	typ        byte
	mode       int64
	uid, gid   int
	body       string
	size       int // of a generated body, when body is empty
	xattrs     map[string]string
	major      int64
}

func layer(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)
	for i, e := range entries {
		body := []byte(e.body)
		if e.size > 0 {
			body = bytes.Repeat([]byte{byte(i)}, e.size)
		}
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
			if typ == tar.TypeDir {
				mode = 0o755
			}
		}
		hdr := &tar.Header{
			Name: e.name, Linkname: e.link, Typeflag: typ, Mode: mode, Uid: e.uid, Gid: e.gid,
			ModTime: mtime.Add(time.Duration(i) * time.Minute), Format: tar.FormatPAX, Devmajor: e.major, Devminor: 3,
		}
		if typ == tar.TypeReg {
			hdr.Size = int64(len(body))
		}
		if len(e.xattrs) > 0 {
			hdr.PAXRecords = map[string]string{}
			for k, v := range e.xattrs {
				hdr.PAXRecords[paxXattr+k] = v
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Size > 0 {
			if _, err := tw.Write(body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// node is what a user can see of one path of an unpacked tree.
type node struct {
	Mode       fs.FileMode
	UID, GID   uint32
	Rdev       uint64
	Mtime      int64
	Content    string
	Link       string
	Xattrs     string
	LinkedWith string // the first path sharing its inode, for hard links
}

func snapshot(t testing.TB, root string) map[string]node {
	t.Helper()
	out := map[string]node{}
	inodes := map[uint64]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		n := node{Mode: fi.Mode(), UID: st.Uid, GID: st.Gid, Rdev: st.Rdev, Mtime: fi.ModTime().UnixNano(), Xattrs: xattrs(t, path)}
		if rel == "." || time.Since(fi.ModTime()) < time.Hour {
			n.Mtime = 0 // the root, implicit parents and whiteouts: the clock's
		}
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			n.Content = hex.EncodeToString(sum[:])
			if first, ok := inodes[st.Ino]; ok {
				n.LinkedWith = first
			} else {
				inodes[st.Ino] = rel
			}
		case fi.Mode()&fs.ModeSymlink != 0:
			n.Link, _ = os.Readlink(path)
		}
		out[rel] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func xattrs(t testing.TB, path string) string {
	sz, err := unix.Llistxattr(path, nil)
	if err != nil || sz == 0 {
		return ""
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(path, buf)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		v := make([]byte, 256)
		n, _ := unix.Lgetxattr(path, name, v)
		if n < 0 {
			n = 0
		}
		out = append(out, name+"="+string(v[:n]))
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// applyBoth unpacks tarball with archive.Apply and with Apply, each into
// an empty root inside its own directory, and fails unless both end the
// same way with the same trees, and nothing was written beside either root.
func applyBoth(t testing.TB, tarball []byte, workers int) (error, error) {
	t.Helper()
	ctx := context.Background()
	var roots [2]string
	var errs [2]error
	for i := range roots {
		outer := t.TempDir()
		roots[i] = filepath.Join(outer, "root")
		if err := os.Mkdir(roots[i], 0o755); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			_, errs[0] = archive.Apply(ctx, roots[0], bytes.NewReader(tarball), archive.WithConvertWhiteout(archive.OverlayConvertWhiteout))
		} else {
			errs[1] = Apply(ctx, roots[1], bytes.NewReader(tarball), WithWorkers(workers))
		}
		if es, _ := os.ReadDir(outer); len(es) != 1 {
			t.Fatalf("%d entries beside the root after unpacking (one is the root): something escaped", len(es))
		}
	}
	if (errs[0] == nil) != (errs[1] == nil) {
		t.Fatalf("archive.Apply: %v; untar.Apply: %v", errs[0], errs[1])
	}
	if errs[0] == nil {
		want, got := snapshot(t, roots[0]), snapshot(t, roots[1])
		for p, w := range want {
			if g, ok := got[p]; !ok {
				t.Errorf("%s: missing (want %+v)", p, w)
			} else if g != w {
				t.Errorf("%s:\n got %+v\nwant %+v", p, g, w)
			}
		}
		for p := range got {
			if _, ok := want[p]; !ok {
				t.Errorf("%s: extra", p)
			}
		}
	}
	return errs[0], errs[1]
}

func TestApplyMatchesArchiveApply(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: owners, devices and trusted xattrs")
	}
	many := []entry{{name: "many/", typ: tar.TypeDir}}
	for i := range 300 {
		many = append(many, entry{name: fmt.Sprintf("many/d%d/f%d", i%7, i), size: i * 37, uid: i % 3, mode: 0o600 + int64(i%2)*0o111})
	}
	tests := []struct {
		name    string
		entries []entry
		wantErr bool
	}{
		{name: "files dirs and modes", entries: []entry{
			{name: "bin/", typ: tar.TypeDir},
			{name: "bin/sh", body: "#!", mode: 0o755},
			{name: "bin/su", body: "su", mode: 0o4755},
			{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
			{name: "etc/", typ: tar.TypeDir, mode: 0o700, uid: 5, gid: 6},
			{name: "etc/shadow", body: "x", mode: 0o640, gid: 42},
			{name: "big", size: 5 << 20},
			{name: "empty"},
		}},
		{name: "implicit parents", entries: []entry{{name: "a/b/c/d.txt", body: "deep"}, {name: "a/b/e", body: "e"}}},
		{name: "setgid directory", entries: []entry{
			{name: "g/", typ: tar.TypeDir, mode: 0o2775, gid: 1234},
			{name: "g/root-owned", body: "r"},
			{name: "g/sub/", typ: tar.TypeDir},
			{name: "g/link", typ: tar.TypeSymlink, link: "root-owned"},
		}},
		{name: "xattrs", entries: []entry{
			{name: "d/", typ: tar.TypeDir, xattrs: map[string]string{"user.dir": "1"}},
			{name: "d/f", body: "f", xattrs: map[string]string{"user.a": "b", "security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", "trusted.evil": "y"}, uid: 7},
			{name: "d/l", typ: tar.TypeSymlink, link: "f", xattrs: map[string]string{"user.on-symlink": "x"}},
		}},
		{name: "whiteouts", entries: []entry{
			{name: "d/", typ: tar.TypeDir},
			{name: "d/.wh..wh..opq"},
			{name: "d/.wh.gone", uid: 3, gid: 4},
			{name: ".wh.top"},
		}},
		{name: "hard links", entries: []entry{
			{name: "f", body: "shared", mode: 0o700, uid: 9},
			{name: "g", typ: tar.TypeLink, link: "f", mode: 0o700, uid: 9},
			{name: "d/h", typ: tar.TypeLink, link: "./f"},
			{name: "s", typ: tar.TypeSymlink, link: "f"},
			{name: "s2", typ: tar.TypeLink, link: "s"},
		}},
		{name: "symlinked parent stays inside", entries: []entry{
			{name: "l", typ: tar.TypeSymlink, link: "/etc"},
			{name: "l/passwd", body: "inside"},
			{name: "up", typ: tar.TypeSymlink, link: "../../../.."},
			{name: "up/escaped", body: "inside too"},
			{name: "up/x/y/", typ: tar.TypeDir},
		}},
		{name: "names that climb", entries: []entry{
			{name: "../../evil", body: "x"},
			{name: "/abs/x", body: "y"},
			{name: "./", typ: tar.TypeDir, mode: 0o700},
			{name: "a/../../b", body: "z"},
		}},
		{name: "hard link out of the root", entries: []entry{{name: "h", typ: tar.TypeLink, link: "../../../etc/hostname"}}, wantErr: true},
		{name: "hard link through a symlink", entries: []entry{
			{name: "real/f", body: "target"},
			{name: "sym", typ: tar.TypeSymlink, link: "real"},
			{name: "h", typ: tar.TypeLink, link: "sym/f"},
		}},
		{name: "replaced entries", entries: []entry{
			{name: "x", body: "one"},
			{name: "x", body: "two"},
			{name: "y", body: "file"},
			{name: "y/", typ: tar.TypeDir},
			{name: "y/z", body: "in dir"},
			{name: "z/", typ: tar.TypeDir},
			{name: "z/child", body: "c"},
			{name: "z", body: "now a file"},
			{name: "w/", typ: tar.TypeDir, mode: 0o700},
			{name: "w/k", body: "kept"},
			{name: "w/", typ: tar.TypeDir, mode: 0o755, uid: 2},
			{name: "v", typ: tar.TypeSymlink, link: "x"},
			{name: "v/", typ: tar.TypeDir},
		}},
		{name: "devices", entries: []entry{
			{name: "dev/null", typ: tar.TypeChar, major: 1, mode: 0o666},
			{name: "dev/sda", typ: tar.TypeBlock, major: 8, mode: 0o660, gid: 6},
			{name: "dev/fifo", typ: tar.TypeFifo, mode: 0o600},
		}},
		{name: "file under a file", entries: []entry{{name: "f", body: "x"}, {name: "f/g", body: "y"}}, wantErr: true},
		{name: "whiteout of an entry of the same layer", entries: []entry{{name: "f", body: "x"}, {name: ".wh.f"}}, wantErr: true},
		{name: "empty whiteout", entries: []entry{{name: ".wh."}}, wantErr: true},
		{name: "whiteout of the parent", entries: []entry{{name: "d/.wh.."}}, wantErr: true},
		{name: "many files", entries: many},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, workers := range []int{1, 4} {
				_, err := applyBoth(t, layer(t, tc.entries...), workers)
				if (err != nil) != tc.wantErr {
					t.Fatalf("workers %d: err = %v, want error: %v", workers, err, tc.wantErr)
				}
			}
		})
	}
}

func TestApplyStopsOnTruncatedStream(t *testing.T) {
	tarball := layer(t, entry{name: "a", size: 1 << 20}, entry{name: "b", size: 10})
	for _, workers := range []int{1, 4} {
		root := t.TempDir()
		err := Apply(context.Background(), root, bytes.NewReader(tarball[:len(tarball)/2]), WithWorkers(workers))
		if err == nil {
			t.Fatalf("workers %d: a truncated layer unpacked without error", workers)
		}
	}
}

func TestApplyFilterSeesCleanNames(t *testing.T) {
	var seen []string
	filter := WithFilter(func(h *tar.Header) (bool, error) {
		seen = append(seen, h.Name)
		return h.Name != "skip", nil
	})
	root := t.TempDir()
	if err := Apply(context.Background(), root, bytes.NewReader(layer(t, entry{name: "./a//b/", typ: tar.TypeDir}, entry{name: "skip", body: "x"})), filter); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(seen, " "); got != "a/b skip" {
		t.Errorf("filter saw %q, want %q", got, "a/b skip")
	}
	if _, err := os.Lstat(filepath.Join(root, "skip")); !os.IsNotExist(err) {
		t.Errorf("a filtered entry was created (lstat: %v)", err)
	}
}
