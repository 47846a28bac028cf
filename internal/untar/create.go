package untar

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/continuity/fs"
	"golang.org/x/sys/unix"

	"github.com/s3snap/s3snap/internal/iox"
)

// create makes the entry hdr at path, whose parent exists (and has the
// setgid bit if parentSetgid), and sets its owner, xattrs, mode and times
// in archive.Apply's order: owner first (chown clears setuid bits and
// file capabilities), then xattrs, then the mode. With async a small
// regular file is read whole and left to a worker.
func (a *applier) create(hdr *tar.Header, tr io.Reader, path string, parentSetgid, async bool) error {
	rel := a.rel(path)
	mode := uint32(hdr.Mode & 0o7777)
	switch hdr.Typeflag {
	case tar.TypeDir:
		if !a.known[rel].isDir() {
			if err := unix.Mkdir(path, 0o700); err != nil && !(errors.Is(err, unix.EEXIST) && isDir(path)) {
				return &os.PathError{Op: "mkdir", Path: path, Err: err}
			}
		}
		if err := a.meta(path, hdr, parentSetgid, true); err != nil {
			return err
		}
		a.known[rel] = dirKind(mode&unix.S_ISGID != 0)
		a.dirs = append(a.dirs, hdr) // times last: files made in it change them
		return nil

	case tar.TypeReg: // (tar.Reader turns the old TypeRegA into TypeReg)
		a.known[rel] = other
		if async && a.jobs != nil && hdr.Size <= bufferedMax {
			if err := a.sem.Acquire(a.ctx, hdr.Size); err != nil {
				return err
			}
			data := iox.GetBuf(hdr.Size)
			if _, err := io.ReadFull(tr, *data); err != nil {
				iox.PutBuf(data)
				a.sem.Release(hdr.Size)
				return err
			}
			a.pending.Add(1)
			a.jobs <- job{path: path, hdr: hdr, data: data, parentSetgid: parentSetgid}
			return nil
		}
		return a.writeFile(path, hdr, tr, nil, parentSetgid)

	case tar.TypeSymlink:
		if err := unix.Symlink(hdr.Linkname, path); err != nil {
			return &os.PathError{Op: "symlink", Path: path, Err: err}
		}
		a.known[rel] = other
		if err := a.meta(path, hdr, parentSetgid, false); err != nil {
			return err
		}
		return setTimes(path, hdr)

	case tar.TypeLink:
		target, err := hardlinkTarget(a.root, hdr.Linkname)
		if err != nil {
			return err
		}
		if err := os.Link(target, path); err != nil {
			return err
		}
		a.known[rel] = other
		// The inode is the target's: its owner is not known, and it may be
		// a symlink, whose mode cannot change.
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		if err := os.Lchown(path, hdr.Uid, hdr.Gid); err != nil {
			return err
		}
		if err := a.meta(path, hdr, false, fi.Mode()&os.ModeSymlink == 0); err != nil {
			return err
		}
		return setTimes(path, hdr)

	case tar.TypeBlock, tar.TypeChar, tar.TypeFifo:
		if hdr.Devmajor < 0 || hdr.Devmajor > math.MaxUint32 || hdr.Devminor < 0 || hdr.Devminor > math.MaxUint32 {
			return fmt.Errorf("device number %d:%d out of range: %w", hdr.Devmajor, hdr.Devminor, ErrInvalidArchive)
		}
		ft := map[byte]uint32{tar.TypeBlock: unix.S_IFBLK, tar.TypeChar: unix.S_IFCHR, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		if err := unix.Mknod(path, mode|ft, int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))); err != nil {
			return &os.PathError{Op: "mknod", Path: path, Err: err}
		}
		a.known[rel] = other
		if err := a.meta(path, hdr, parentSetgid, true); err != nil {
			return err
		}
		return setTimes(path, hdr)

	case tar.TypeXGlobalHeader:
		return nil // PAX global headers are ignored, as archive.Apply does

	default:
		return fmt.Errorf("unhandled tar header type %d: %w", hdr.Typeflag, ErrInvalidArchive)
	}
}

// needChown reports whether a new node needs chown to get hdr's owner: it
// was made with the applier's own, or its parent's group if setgid.
func (a *applier) needChown(hdr *tar.Header, parentSetgid bool) bool {
	return hdr.Uid != a.euid || hdr.Gid != a.egid || parentSetgid
}

// meta sets a new node's owner and xattrs, and its mode if chmod, by path
// (never following a symlink at the end of it).
func (a *applier) meta(path string, hdr *tar.Header, parentSetgid, chmod bool) error {
	if a.needChown(hdr, parentSetgid) {
		if err := os.Lchown(path, hdr.Uid, hdr.Gid); err != nil {
			return err
		}
	}
	if err := setXattrs(hdr, func(k string, v []byte) error { return unix.Lsetxattr(path, k, v, 0) }); err != nil {
		return err
	}
	if chmod {
		if err := unix.Chmod(path, uint32(hdr.Mode&0o7777)); err != nil {
			return &os.PathError{Op: "chmod", Path: path, Err: err}
		}
	}
	return nil
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// writeFile creates the regular file hdr at path, which must not exist,
// with data, or else what r holds, and sets its metadata through its
// descriptor.
func (a *applier) writeFile(path string, hdr *tar.Header, r io.Reader, data []byte, parentSetgid bool) (retErr error) {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &os.PathError{Op: "create", Path: path, Err: err}
	}
	defer func() {
		if err := unix.Close(fd); err != nil && retErr == nil {
			retErr = &os.PathError{Op: "close", Path: path, Err: err}
		}
	}()
	w := fdWriter(fd)
	if r != nil {
		bp := copyBufs.Get().(*[]byte)
		_, err = io.CopyBuffer(w, struct{ io.Reader }{r}, *bp)
		copyBufs.Put(bp)
	} else {
		_, err = w.Write(data)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if a.needChown(hdr, parentSetgid) {
		if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
			return &os.PathError{Op: "chown", Path: path, Err: err}
		}
	}
	if err := setXattrs(hdr, func(k string, v []byte) error { return unix.Fsetxattr(fd, k, v, 0) }); err != nil {
		return err
	}
	if err := unix.Fchmod(fd, uint32(hdr.Mode&0o7777)); err != nil {
		return &os.PathError{Op: "chmod", Path: path, Err: err}
	}
	return setTimes(path, hdr)
}

type fdWriter int

func (w fdWriter) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Write(int(w), p[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

// setXattrs sets the entry's xattrs with set, skipping those archive.Apply
// skips: trusted.* (never from an archive), any the filesystem does not
// support, and user.* where the node type cannot hold them.
func setXattrs(hdr *tar.Header, set func(string, []byte) error) error {
	for key, value := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(key, paxXattr)
		if !ok || strings.HasPrefix(name, "trusted.") {
			continue
		}
		err := set(name, []byte(value))
		switch {
		case err == nil, errors.Is(err, unix.ENOTSUP):
		case errors.Is(err, unix.EPERM) && strings.HasPrefix(name, "user.") && hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeDir:
		default:
			return fmt.Errorf("set xattr %q: %w", name, err)
		}
	}
	return nil
}

var (
	minTime = time.Unix(0, 0)
	maxTime = time.Unix(0, math.MaxInt64)
)

// setTimes sets path's times from hdr as archive.Apply does: atime the
// later of the two, anything out of range the epoch.
func setTimes(path string, hdr *tar.Header) error {
	bound := func(t time.Time) time.Time {
		if t.Before(minTime) || t.After(maxTime) {
			return minTime
		}
		return t
	}
	atime := hdr.AccessTime
	if atime.Before(hdr.ModTime) {
		atime = hdr.ModTime
	}
	ts := []unix.Timespec{
		unix.NsecToTimespec(bound(atime).UnixNano()),
		unix.NsecToTimespec(bound(hdr.ModTime).UnixNano()),
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimes", Path: path, Err: err}
	}
	return nil
}

// dirTimes sets each directory's times, now that nothing more is made in
// them. One reached through a symlink, or replaced since, is found again as
// archive.Apply finds it.
func (a *applier) dirTimes() error {
	for _, hdr := range a.dirs {
		rel := strings.TrimPrefix(filepath.Clean("/"+hdr.Name), "/")
		path := filepath.Join(a.root, rel)
		if !a.known[rel].isDir() {
			p, err := fs.RootPath(a.root, hdr.Name)
			if err != nil {
				return err
			}
			path = p
		}
		if err := setTimes(path, hdr); err != nil {
			return err
		}
	}
	return nil
}

// hardlinkTarget resolves a hard link's target within root as archive.Apply
// does: its parent through symlinks, never out of the root.
func hardlinkTarget(root, linkname string) (string, error) {
	ppath, base := filepath.Split(linkname)
	ppath, err := fs.RootPath(root, ppath)
	if err != nil {
		return "", err
	}
	target := filepath.Join(ppath, base)
	if !strings.HasPrefix(target, root) {
		target = root
	}
	return target, nil
}

func isDir(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.IsDir()
}
