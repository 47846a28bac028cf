// Package mount serves a lazily pulled layer (package lazy: its index and
// verified chunk reads) as a read-only FUSE file system shaped as overlayfs
// expects a lower directory. It is the one package that speaks FUSE, so
// what only reads indexes (doctor, the CLI) never links go-fuse.
package mount

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"golang.org/x/sys/unix"

	"github.com/s3snap/s3snap/lazy"
)

var readErrors = promauto.NewCounter(prometheus.CounterOpts{
	Namespace: "s3snap", Subsystem: "lazy", Name: "read_errors_total",
	Help: "Reads of lazily mounted files that failed (chunk not fetched or failing verification): EIO, never data.",
})

// Mount presents layer l read-only at dir with FUSE, as overlayfs expects a
// lower directory: whiteouts as 0:0 character devices, opaque directories
// by xattr, owners, modes, times, links and xattrs as in the tar (implied
// directories as opts say, see WithImplicitDirs). It is mounted allow_other
// with default_permissions (the kernel checks modes), and everything is
// cached by the kernel for as long as it is mounted: the layer never
// changes. A read whose chunk cannot be fetched or fails verification
// returns EIO, never data. The tree is built and checked before anything
// is mounted.
func Mount(ctx context.Context, dir string, l *lazy.Layer, opts ...lazy.TreeOption) (*Mounted, error) {
	root, err := lazy.Tree(l.TOC(), opts...)
	if err != nil {
		return nil, err
	}
	forever := 24 * time.Hour
	fsOpts := &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther: true,
			FsName:     "s3snap:" + l.TOC().Layer.Encoded()[:12],
			Name:       "s3snap",
			// As root: mount(2) itself, never fusermount.
			DirectMountStrict: true,
			Options:           []string{"default_permissions", "ro"},
			// Requests as large as the kernel allows (1 MiB, max_pages
			// 256 since Linux 4.20; go-fuse caps it at the kernel's
			// limit): a chunk per request rather than an eighth.
			MaxWrite:     1 << 20,
			MaxReadAhead: 1 << 20,
			// Reads answer from memory, never from a file descriptor:
			// go-fuse's splice attempt only fails (a 1 MiB answer does
			// not fit the default pipe) and logs each time.
			DisableSplice: true,
		},
		EntryTimeout:    &forever,
		AttrTimeout:     &forever,
		NegativeTimeout: &forever,
		NullPermissions: true, // mode 0 (whiteouts, 000 files) stays 0
	}
	rawFS, err := newNodeFS(&rootNode{node{n: root, l: l, ctx: ctx}}, fsOpts)
	if err != nil {
		return nil, err
	}
	// As fs.Mount, with the inode tree (OnAdd) built above.
	srv, err := fuse.NewServer(rawFS, dir, &fsOpts.MountOptions)
	if err != nil {
		return nil, fmt.Errorf("fuse mount %s: %w", dir, err)
	}
	// NewServer has mounted and answered INIT. WaitMount is not called:
	// all it adds is go-fuse's poll probe, an open inside the new mount by
	// this very process, and a process must never wait on a mount it
	// serves (killed then, it hangs in D state for good). Nothing here
	// reads through its own mounts, so the probe has nothing to prevent.
	go srv.Serve()
	return &Mounted{dir: dir}, nil
}

// Mounted is a layer Mount presents; only Unmount is left to do with it.
// Its server's loops end by themselves when the kernel ends the mount.
type Mounted struct {
	dir string
}

// newNodeFS builds the go-fuse inode tree (rootNode.OnAdd runs here,
// before anything is mounted). go-fuse panics on names it cannot hold;
// Tree rejects those, and a panic still becomes an error, not a crash of
// the agent.
func newNodeFS(root *rootNode, opts *fs.Options) (rawFS fuse.RawFileSystem, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("layer %s: building its file system: %v: %w", root.l.TOC().Layer, r, lazy.ErrInvalidIndex)
		}
	}()
	return fs.NewNodeFS(root, opts), nil
}

// node is one file of the mounted layer.
type node struct {
	fs.Inode
	n   *lazy.Node
	l   *lazy.Layer
	ctx context.Context // for logging
}

// rootNode is the layer's root directory; it builds the tree. (Only the
// root: go-fuse calls OnAdd for every inode that has it.)
type rootNode struct{ node }

var (
	_ fs.NodeOnAdder       = (*rootNode)(nil)
	_ fs.NodeGetattrer     = (*node)(nil)
	_ fs.NodeGetxattrer    = (*node)(nil)
	_ fs.NodeListxattrer   = (*node)(nil)
	_ fs.NodeReadlinker    = (*node)(nil)
	_ fs.NodeOpener        = (*node)(nil)
	_ fs.NodeReader        = (*node)(nil)
	_ fs.NodeStatfser      = (*node)(nil)
	_ fs.NodeSetattrer     = (*node)(nil)
	_ fs.NodeSetxattrer    = (*node)(nil)
	_ fs.NodeRemovexattrer = (*node)(nil)
)

// OnAdd builds the whole tree at mount time, with persistent inodes so
// the kernel forgetting one never loses it. Hard links share an inode.
func (r *rootNode) OnAdd(ctx context.Context) {
	type dirInode struct {
		in *fs.Inode
		n  *lazy.Node
	}
	made := map[*lazy.Node]*fs.Inode{r.n: &r.Inode}
	stack := []dirInode{{&r.Inode, r.n}}
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, name := range d.n.Names() {
			c := d.n.Children[name]
			in, ok := made[c]
			if !ok {
				in = d.in.NewPersistentInode(ctx, &node{n: c, l: r.l, ctx: r.ctx}, fs.StableAttr{Mode: fileType(c.Entry.Type), Ino: c.Ino})
				made[c] = in
				if c.IsDir() {
					stack = append(stack, dirInode{in, c})
				}
			}
			d.in.AddChild(name, in, true)
		}
	}
}

func fileType(t lazy.Type) uint32 {
	switch t {
	case lazy.TypeDir:
		return syscall.S_IFDIR
	case lazy.TypeSymlink:
		return syscall.S_IFLNK
	case lazy.TypeChar:
		return syscall.S_IFCHR
	case lazy.TypeBlock:
		return syscall.S_IFBLK
	case lazy.TypeFifo:
		return syscall.S_IFIFO
	}
	return syscall.S_IFREG
}

func (r *node) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	e := &r.n.Entry
	a := &out.Attr
	a.Ino = r.n.Ino
	a.Mode = fileType(e.Type) | e.Mode
	a.Nlink = r.n.Nlink
	a.Owner = fuse.Owner{Uid: uint32(e.UID), Gid: uint32(e.GID)}
	switch e.Type {
	case lazy.TypeReg:
		a.Size = uint64(e.Size)
	case lazy.TypeSymlink:
		a.Size = uint64(len(e.Linkname))
	case lazy.TypeChar, lazy.TypeBlock:
		a.Rdev = uint32(unix.Mkdev(uint32(e.DevMajor), uint32(e.DevMinor)))
	case lazy.TypeDir:
		a.Size = 4096
	}
	a.Blksize = 4096
	a.Blocks = (a.Size + 511) / 512
	t := time.Unix(0, e.ModTime)
	a.SetTimes(&t, &t, &t)
	return fs.OK
}

func (r *node) Getxattr(_ context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	v, ok := r.n.Entry.Xattrs[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), fs.OK
}

func (r *node) Listxattr(_ context.Context, dest []byte) (uint32, syscall.Errno) {
	names := make([]string, 0, len(r.n.Entry.Xattrs))
	for k := range r.n.Entry.Xattrs {
		names = append(names, k)
	}
	sort.Strings(names)
	var b []byte
	for _, k := range names {
		b = append(append(b, k...), 0)
	}
	if len(dest) < len(b) {
		return uint32(len(b)), syscall.ERANGE
	}
	return uint32(copy(dest, b)), fs.OK
}

func (r *node) Readlink(context.Context) ([]byte, syscall.Errno) {
	if r.n.Entry.Type != lazy.TypeSymlink {
		return nil, syscall.EINVAL
	}
	return []byte(r.n.Entry.Linkname), fs.OK
}

func (r *node) Open(_ context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	// A layer that failed verification: without KEEP_CACHE the kernel
	// drops the file's cached pages at this open, so reads reach Read and
	// fail, even of a file read before the check.
	if r.l.Bad() != nil {
		return nil, 0, fs.OK
	}
	return nil, fuse.FOPEN_KEEP_CACHE, fs.OK
}

func (r *node) Read(_ context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	e := &r.n.Entry
	if e.Type != lazy.TypeReg {
		return nil, syscall.EINVAL
	}
	if off >= e.Size {
		return fuse.ReadResultData(nil), fs.OK
	}
	n := min(int64(len(dest)), e.Size-off)
	if _, err := r.l.ReadFile(dest[:n], e.Offset+off, e.Offset, e.Offset+e.Size); err != nil {
		log.G(r.ctx).WithError(err).WithField("file", e.Name).WithField("layer", r.l.TOC().Layer).Error("lazy read failed")
		readErrors.Inc()
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:n]), fs.OK
}

func (r *node) Statfs(_ context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.NameLen = 255
	out.Files = uint64(len(r.l.TOC().Entries))
	out.Blocks = uint64(r.l.TOC().StreamSize() / 4096)
	return fs.OK
}

// A read-only layer: every change is refused.
func (r *node) Setattr(context.Context, fs.FileHandle, *fuse.SetAttrIn, *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (r *node) Setxattr(context.Context, string, []byte, uint32) syscall.Errno { return syscall.EROFS }
func (r *node) Removexattr(context.Context, string) syscall.Errno              { return syscall.EROFS }

// Unmount unmounts the layer; when it is busy (a running container's
// overlay still uses it) it is detached instead, so it goes away once the
// last user does, served until then. It never waits for the server's
// loops (go-fuse's Unmount does, which hung a stop as long as a
// container held the mount).
func (m *Mounted) Unmount() error {
	err := unix.Unmount(m.dir, 0)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(m.dir, unix.MNT_DETACH)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", m.dir, err)
	}
	return nil
}
