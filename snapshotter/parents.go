package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/continuity/sysx"
	"golang.org/x/sys/unix"

	"github.com/s3snap/s3snap/lazy"
)

// Implicit parents. A layer may hold "a/b/file" without an entry for "a"
// or "a/b". containerd's overlay applier creates such directories with the
// mode, owner and xattrs of the same directory in the lower layers
// (archive.WithParents), so that the merged view keeps them; without that
// they would become root 0755 and hide the lower layer's. Layers here are
// unpacked before their parent exists (prefetch), so the attributes are
// copied when the layer is committed, from the parent chain's directories,
// with the same rules: the topmost lower layer that has the path decides;
// if it holds a non-directory there, the default stays; "trusted.*"
// xattrs are not copied. Times are left alone: containerd's copy is undone
// by the files created inside the directory anyway. A lazy layer is not
// unpacked: its implicit directories get the same attributes in its tree
// (implicitDirAttrs).

// maxDirs bounds the directories a layer's unpack keeps track of: a
// hostile layer of millions of directories is refused, not held in memory.
const maxDirs = 1 << 20

// maxPathLen is PATH_MAX: no longer name can be created.
const maxPathLen = 4096

// dirRecorder watches a layer's tar entries go by and works out its
// implicit directories: ancestors of entries that have no entry of their
// own. Only directory names are kept, so memory follows the directory
// count, which is bounded.
type dirRecorder struct {
	explicit  map[string]struct{} // directory entries
	ancestors map[string]struct{} // parents of any entry
}

func newDirRecorder() *dirRecorder {
	return &dirRecorder{explicit: map[string]struct{}{}, ancestors: map[string]struct{}{}}
}

// add records one entry by its name as archive.Apply cleans it.
func (r *dirRecorder) add(name string, isDir bool) error {
	if len(name) > maxPathLen {
		// containerd's applier fails on it too (ENAMETOOLONG); refused
		// before the walk up its parents, which grows with its depth.
		return fmt.Errorf("entry name of %d bytes: more than %d", len(name), maxPathLen)
	}
	name = entryName(name)
	if name == "" {
		return nil
	}
	if isDir {
		r.explicit[name] = struct{}{}
	}
	for d := path.Dir(name); d != "."; d = path.Dir(d) {
		if _, ok := r.ancestors[d]; ok {
			break // and so are its own parents
		}
		r.ancestors[d] = struct{}{}
	}
	if len(r.explicit)+len(r.ancestors) > maxDirs {
		return fmt.Errorf("layer has more than %d directories", maxDirs)
	}
	return nil
}

// implicit returns the implicit directories, parents before children.
func (r *dirRecorder) implicit() []string {
	dirs := make([]string, 0, len(r.ancestors))
	for d := range r.ancestors {
		if _, ok := r.explicit[d]; !ok {
			dirs = append(dirs, d)
		}
	}
	sort.Slice(dirs, func(i, j int) bool {
		if di, dj := strings.Count(dirs[i], "/"), strings.Count(dirs[j], "/"); di != dj {
			return di < dj
		}
		return dirs[i] < dirs[j]
	})
	return dirs
}

// entryName is a tar entry's name relative to the layer root, the way
// archive.Apply resolves it: "" for the root and for names that climb out.
func entryName(name string) string {
	c := filepath.Clean("/" + name)
	if c == "/" {
		return ""
	}
	return c[1:]
}

// lowersPrefix names the short-lived views lowerDirs makes.
const lowersPrefix = "s3snap-lowers-"

// lowerDirs returns the directories of the parent chain topmost first, as
// an overlay mount on top of parent would stack them. A view is made to
// ask the overlay snapshotter (it alone knows the directories) and removed.
func lowerDirs(ctx context.Context, sn snapshots.Snapshotter, parent string) ([]string, error) {
	if parent == "" {
		return nil, nil
	}
	key := lowersPrefix + uniquePart()
	mounts, err := sn.View(ctx, key, parent)
	if err != nil {
		return nil, fmt.Errorf("view parent %s: %w", parent, err)
	}
	defer removeSnapshot(ctx, sn, key)
	return mountLowers(mounts)
}

// mountLowers reads the lower directories out of a view's mounts.
func mountLowers(mounts []mount.Mount) ([]string, error) {
	if len(mounts) != 1 {
		return nil, fmt.Errorf("unexpected view mounts %v", mounts)
	}
	m := mounts[0]
	if m.Type == "bind" {
		return []string{m.Source}, nil
	}
	for _, o := range m.Options {
		if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
			return strings.Split(v, ":"), nil
		}
	}
	return nil, fmt.Errorf("view mount %v has no lowerdir", m)
}

// lowerDir finds name (a clean relative path) in lowers, topmost first,
// resolving symlinks inside each lower root as containerd does. ok is
// false when the topmost one that has the path holds a non-directory, or
// none has it.
func lowerDir(lowers []string, name string) (string, os.FileInfo, bool, error) {
	for _, l := range lowers {
		p, err := fs.RootPath(l, name)
		if err != nil {
			return "", nil, false, err
		}
		fi, err := os.Lstat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", nil, false, err
		}
		if !fi.IsDir() {
			return "", nil, false, nil // replaced: keep the default
		}
		return p, fi, true, nil
	}
	return "", nil, false, nil
}

// inheritDirs gives each implicit directory of the unpacked layer in root
// the owner, mode and xattrs of the same directory in lowers.
func inheritDirs(root string, implicit, lowers []string) error {
	if len(lowers) == 0 {
		return nil
	}
	for _, name := range implicit {
		src, fi, ok, err := lowerDir(lowers, name)
		if err != nil {
			return fmt.Errorf("implicit directory %s: %w", name, err)
		}
		dst, err := fs.RootPath(root, name)
		if err != nil {
			return err
		}
		if dst != filepath.Join(root, name) {
			continue // reached through a symlink of this layer: not ours to change
		}
		if dfi, err := os.Lstat(dst); err != nil || !dfi.IsDir() {
			continue // whited out or replaced later in the layer
		}
		if !ok {
			// A default directory. containerd made it after its parent
			// had the lower layer's attributes, so the kernel gave it the
			// group of a setgid parent; here the parent got them later.
			if err := setgidGroup(dst); err != nil {
				return fmt.Errorf("implicit directory %s: %w", name, err)
			}
			continue
		}
		if err := copyDirAttrs(dst, src, fi); err != nil {
			return fmt.Errorf("implicit directory %s: %w", name, err)
		}
	}
	return nil
}

// setgidGroup gives dir its parent's group if the parent is setgid, as
// mkdir(2) would have.
func setgidGroup(dir string) error {
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Dir(dir), &st); err != nil {
		return err
	}
	if st.Mode&unix.S_ISGID == 0 {
		return nil
	}
	return os.Lchown(dir, -1, int(st.Gid))
}

func copyDirAttrs(dst, src string, fi os.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("stat %s: no unix attributes", src)
	}
	if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if err := unix.Chmod(dst, st.Mode&07777); err != nil {
		return fmt.Errorf("chmod %s: %w", dst, err)
	}
	attrs, err := sysx.LListxattr(src)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil
		}
		return fmt.Errorf("list xattrs of %s: %w", src, err)
	}
	for _, a := range attrs {
		if strings.HasPrefix(a, "trusted.") {
			continue
		}
		v, err := sysx.LGetxattr(src, a)
		if err != nil {
			if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ENODATA) {
				continue
			}
			return fmt.Errorf("get xattr %s of %s: %w", a, src, err)
		}
		if err := unix.Lsetxattr(dst, a, v, 0); err != nil {
			return fmt.Errorf("set xattr %s on %s: %w", a, dst, err)
		}
	}
	return nil
}

// parentLowers returns the lower directories of parent for a commit; a
// parent that is not a snapshot yields none (its Commit fails anyway).
func parentLowers(ctx context.Context, sn snapshots.Snapshotter, parent string) ([]string, error) {
	if parent == "" {
		return nil, nil
	}
	if _, err := sn.Stat(ctx, parent); err != nil {
		return nil, err
	}
	return lowerDirs(ctx, sn, parent)
}

// implicitDirAttrs looks up, in the parent chain, the directories toc's
// layer implies without holding them, as containerd's applier does (see
// above): the attributes to give them in the lazy tree.
func implicitDirAttrs(ctx context.Context, sn snapshots.Snapshotter, parent string, toc *lazy.TOC) (map[string]lazy.Entry, error) {
	names := lazy.ImplicitDirs(toc)
	if len(names) == 0 || parent == "" {
		return nil, nil
	}
	lowers, err := parentLowers(ctx, sn, parent)
	if err != nil {
		return nil, fmt.Errorf("parent %s: %w", parent, err)
	}
	explicit := map[string]*lazy.Entry{}
	for i := range toc.Entries {
		if e := &toc.Entries[i]; e.Type == lazy.TypeDir {
			explicit[e.Name] = e
		}
	}
	out := map[string]lazy.Entry{}
	for _, name := range names {
		p, fi, ok, err := lowerDir(lowers, name)
		if err != nil {
			return nil, fmt.Errorf("implicit directory %s: %w", name, err)
		}
		if !ok {
			// A default directory, in the group of a setgid parent as
			// mkdir(2) makes it under containerd's applier.
			e := lazy.Entry{Name: name, Type: lazy.TypeDir, Mode: 0o755}
			parent, found := out[path.Dir(name)]
			if !found {
				if x := explicit[path.Dir(name)]; x != nil {
					parent, found = *x, true
				}
			}
			if found && parent.Mode&unix.S_ISGID != 0 {
				e.GID = parent.GID
			}
			out[name] = e
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			continue
		}
		e := lazy.Entry{Name: name, Type: lazy.TypeDir, Mode: st.Mode & 07777, UID: int(st.Uid), GID: int(st.Gid), ModTime: fi.ModTime().UnixNano()}
		if attrs, err := sysx.LListxattr(p); err == nil {
			for _, a := range attrs {
				if strings.HasPrefix(a, "trusted.") {
					continue
				}
				if v, err := sysx.LGetxattr(p, a); err == nil {
					if e.Xattrs == nil {
						e.Xattrs = map[string][]byte{}
					}
					e.Xattrs[a] = v
				}
			}
		}
		out[name] = e
	}
	return out, nil
}
