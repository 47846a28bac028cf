package integration

import (
	"archive/tar"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/continuity/sysx"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/testenv"
)

// treeImage is three layers that exercise what an unpack must get exactly
// right: directories a layer implies without holding them (they take the
// lower layer's mode, owner and xattrs), hard links, whiteouts, an opaque
// directory, xattrs, owners, setuid and device files.
func treeImage(t *testing.T) *testenv.Image {
	t.Helper()
	dir := func(name string, mode int64, uid, gid int, xattrs map[string]string) tarEnt {
		h := tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: mode, Uid: uid, Gid: gid}
		for k, v := range xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		return tarEnt{hdr: h}
	}
	file := func(name, data string, mode int64, uid, gid int) tarEnt {
		return tarEnt{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Uid: uid, Gid: gid, Size: int64(len(data))}, data: data}
	}
	l1, id1 := handLayer(t,
		dir("opt/", 0o750, 1000, 1000, map[string]string{"user.team": "blue"}),
		dir("opt/app/", 0o2775, 1000, 2000, nil),
		file("opt/app/old", "old", 0o644, 1000, 2000),
		file("etc/conf", "conf 1", 0o600, 5, 5),
		file("var/lib/data/x", "x", 0o644, 0, 0), // var, var/lib, var/lib/data implied
		tarEnt{hdr: tar.Header{Name: "usr/bin/sh", Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}},
		file("gone", "to be deleted", 0o644, 0, 0),
		dir("opq/", 0o755, 0, 0, nil),
		file("opq/a", "a", 0o644, 0, 0),
	)
	l2, id2 := handLayer(t,
		file("opt/app/bin/tool", "tool", 0o755, 0, 0), // opt, opt/app implied: from layer 1
		file("opt/app/old", "new", 0o644, 1000, 2000),
		tarEnt{hdr: tar.Header{Name: "opt/app/bin/old-link", Typeflag: tar.TypeLink, Linkname: "opt/app/old"}},
		tarEnt{hdr: tar.Header{Name: ".wh.gone", Typeflag: tar.TypeReg, Mode: 0o644}},
		tarEnt{hdr: tar.Header{Name: "opq/.wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o644}},
		tarEnt{hdr: tar.Header{Name: "opq/.wh..wh.plnk", Typeflag: tar.TypeReg, Mode: 0o644}}, // aufs bookkeeping: containerd makes a device of it
		file("opq/b", "b", 0o644, 0, 0),
		file("etc/conf", "conf 2", 0o640, 5, 5),
		tarEnt{hdr: tar.Header{Name: "dev/zero", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 5}},
		file("var/lib/data/y", "y", 0o644, 0, 0),
	)
	l3, id3 := handLayer(t,
		file("opt/app/bin/tool2", "tool2", 0o755, 0, 0),
		file("sbin/su", "su", 0o4755, 0, 0),
		file("home/u/.profile", "profile", 0o644, 1000, 1000),
		tarEnt{hdr: tar.Header{Name: "home/u/link-a", Typeflag: tar.TypeLink, Linkname: "home/u/.profile"}},
	)
	return testenv.ImageFromLayers(t, testenv.HostPlatform(), [][]byte{l1, l2, l3}, []digest.Digest{id1, id2, id3}, ocispec.ImageConfig{Cmd: []string{"/bin/true"}})
}

// layerDirs returns each layer's own directory, base layer first, of the
// image whose top chain ID is top, in snapshotter sn of the containerd
// behind env: a view's mounts name them.
func layerDirs(t *testing.T, h *hostileEnv, snapshotter, top string, layers int) []string {
	t.Helper()
	key := "treeview-" + snapshotter
	args := []string{"snapshots", "--snapshotter", snapshotter}
	out := h.ctrd.Ctr(t, append(args, "view", "--mounts", key, top)...)
	defer h.ctrd.CtrErr(t, append(args, "rm", key)...)
	if m := regexp.MustCompile(`lowerdir=([^ ,"]+)`).FindStringSubmatch(out); m != nil {
		dirs := strings.Split(m[1], ":")
		if len(dirs) != layers {
			t.Fatalf("view of %s has %d lower dirs, want %d: %s", top, len(dirs), layers, out)
		}
		for i, j := 0, len(dirs)-1; i < j; i, j = i+1, j-1 {
			dirs[i], dirs[j] = dirs[j], dirs[i]
		}
		return dirs
	}
	t.Fatalf("view of %s: no lowerdir in %q", top, out)
	return nil
}

// describeTree lists every entry under root with what overlayfs reads of
// it: type, mode, owner, size and content hash, link target, device,
// xattrs, and which entries are hard links of one another. Directory
// times are left out: a directory the layer implies gets the time of the
// unpack.
func describeTree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	firstPath := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		line := fmt.Sprintf("%s %s %o %d:%d", rel, fi.Mode().Type(), st.Mode&0o7777, st.Uid, st.Gid)
		switch {
		case fi.Mode().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" size=%d sha256=%x mtime=%d", fi.Size(), h.Sum(nil), fi.ModTime().Unix())
			if st.Nlink > 1 {
				if first, ok := firstPath[st.Ino]; ok {
					line += " hardlink-of=" + first
				} else {
					firstPath[st.Ino] = rel
				}
				line += fmt.Sprintf(" nlink=%d", st.Nlink)
			}
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case fi.Mode()&fs.ModeDevice != 0:
			line += fmt.Sprintf(" dev=%d:%d", unixMajor(st.Rdev), unixMinor(st.Rdev))
		}
		names, _ := sysx.LListxattr(p)
		sort.Strings(names)
		for _, n := range names {
			if strings.HasPrefix(n, "security.") {
				continue // the host's LSM labels, not the layer's
			}
			v, _ := sysx.LGetxattr(p, n)
			line += fmt.Sprintf(" xattr:%s=%q", n, v)
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return out
}

func unixMajor(dev uint64) uint64 { return (dev >> 8) & 0xfff }
func unixMinor(dev uint64) uint64 { return (dev & 0xff) | ((dev >> 12) & 0xfff00) }

// TestAgentTreeMatchesContainerd: the same multi-layer image unpacked by
// containerd's own overlayfs snapshotter, by the agent eagerly (from the
// layer blobs, and from the lazy indexes) and by the agent lazily gives, layer by layer, the same entries: names, types,
// modes, owners, xattrs, link targets, file contents, hard links,
// whiteouts and opaque directories.
func TestAgentTreeMatchesContainerd(t *testing.T) {
	im := treeImage(t)
	var diffIDs []digest.Digest
	for _, l := range im.Layers {
		diffIDs = append(diffIDs, digest.FromBytes(gunzip(t, l)))
	}
	top := identity.ChainID(diffIDs).String()

	eager := newHostileEnv(t, testenv.Containerd2, false)
	ref := eager.addIndexed(t, "tree/app", im)
	// containerd's own unpack, into its overlayfs snapshotter.
	eager.ctrd.Ctr(t, "images", "pull", "--hosts-dir", eager.agent.HostsDir, ref)
	want := layerDirs(t, eager, "overlayfs", top, len(im.Layers))

	if out, err := eager.pullErr(t, ref); err != nil {
		t.Fatalf("eager pull: %v\n%s", err, out)
	}
	if n := eager.provided(t); int(n) != len(im.Layers) {
		t.Fatalf("the eager agent provided %v layers, want %d", n, len(im.Layers))
	}
	gotEager := layerDirs(t, eager, "s3snap", top, len(im.Layers))

	// Eagerly again, from the layers' lazy indexes this time.
	ix := newHostileEnv(t, testenv.Containerd2, false)
	ref = ix.add(t, "tree/app", im, true)
	ix.index.ok(t, "index", "s3://"+ix.bucket+"/ecr/tree/app:v1")
	if out, err := ix.pullErr(t, ref); err != nil {
		t.Fatalf("eager pull from the index: %v\n%s", err, out)
	}
	if n := ix.agent.Metric(t, "s3snap_snapshotter_layers_unpacked_total", "source=index"); int(n) != len(im.Layers) {
		t.Fatalf("the agent unpacked %v layers from their index, want %d", n, len(im.Layers))
	}
	gotIndex := layerDirs(t, ix, "s3snap", top, len(im.Layers))

	lz := newHostileEnv(t, testenv.Containerd2, true)
	ref = lz.addIndexed(t, "tree/app", im)
	if out, err := lz.pullErr(t, ref); err != nil {
		t.Fatalf("lazy pull: %v\n%s", err, out)
	}
	if n := lz.agent.Metric(t, "s3snap_snapshotter_lazy_layers_total"); int(n) != len(im.Layers) {
		t.Fatalf("the lazy agent mounted %v layers, want %d", n, len(im.Layers))
	}
	gotLazy := layerDirs(t, lz, "s3snap", top, len(im.Layers))

	for i := range im.Layers {
		ref := describeTree(t, want[i])
		for _, got := range []struct {
			name string
			dir  string
		}{{"eager", gotEager[i]}, {"eager from the index", gotIndex[i]}, {"lazy", gotLazy[i]}} {
			if d := diffLines(ref, describeTree(t, got.dir)); d != "" {
				t.Errorf("layer %d: the agent's %s unpack differs from containerd's (- containerd, + agent):\n%s", i+1, got.name, d)
			}
		}
		if testing.Verbose() {
			t.Logf("layer %d:\n  %s", i+1, strings.Join(ref, "\n  "))
		}
	}
}

// diffLines lists the lines only in a (-) or only in b (+).
func diffLines(a, b []string) string {
	in := func(s []string) map[string]bool {
		m := map[string]bool{}
		for _, x := range s {
			m[x] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out []string
	for _, x := range a {
		if !mb[x] {
			out = append(out, "- "+x)
		}
	}
	for _, x := range b {
		if !ma[x] {
			out = append(out, "+ "+x)
		}
	}
	return strings.Join(out, "\n")
}
