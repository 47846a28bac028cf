package systemd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/containerd/log"

	"github.com/s3snap/s3snap/internal/atomicfile"
)

// tree reads and writes node paths below a root, comparing before writing.
type tree struct {
	root   string
	dryRun bool
}

func (t *tree) host(p string) string { return filepath.Join(t.root, p) }

func (t *tree) read(p string) ([]byte, error) { return os.ReadFile(t.host(p)) }

// fileMode says what mode a file tree.write makes gets.
type fileMode struct {
	// perm is the mode of a new file, and of a replaced one unless keep.
	perm os.FileMode
	// keep makes a file that exists keep its mode and owner: a config
	// the user made 0600 (it may hold registry credentials) stays 0600.
	keep bool
}

// write makes node path p hold data with mode m. An existing file with
// other content is first copied to p+BackupSuffix (same mode and owner)
// when backup is set and no such copy exists yet (the first backup is the
// user's original: later runs must not replace it with s3snap's own
// output).
func (t *tree) write(p string, data []byte, m fileMode, backup bool) (Change, error) {
	c := Change{Path: p}
	h := t.host(p)
	old, err := os.ReadFile(h)
	mode, owner := m.perm, (*fileOwner)(nil)
	switch {
	case err == nil:
		fi, err := os.Stat(h)
		if err != nil {
			return c, fmt.Errorf("stat %s: %w", p, err)
		}
		if m.keep {
			mode, owner = fi.Mode().Perm(), ownerOf(fi)
		}
		if bytes.Equal(old, data) && fi.Mode().Perm() == mode {
			c.Action = "unchanged"
			return c, nil
		}
		c.Action = "updated"
		if backup && !bytes.Equal(old, data) {
			b := h + BackupSuffix
			if _, err := os.Lstat(b); errors.Is(err, fs.ErrNotExist) {
				c.Backup = p + BackupSuffix
				if !t.dryRun {
					if err := writeAtomic(b, old, fi.Mode().Perm(), ownerOf(fi)); err != nil {
						return c, fmt.Errorf("back up %s: %w", p, err)
					}
				}
			}
		}
	case errors.Is(err, fs.ErrNotExist):
		c.Action = "created"
	default:
		return c, fmt.Errorf("read %s: %w", p, err)
	}
	if t.dryRun {
		return c, nil
	}
	if err := os.MkdirAll(filepath.Dir(h), 0o755); err != nil {
		return c, fmt.Errorf("write %s: %w", p, err)
	}
	if err := writeAtomic(h, data, mode, owner); err != nil {
		return c, fmt.Errorf("write %s: %w", p, err)
	}
	return c, nil
}

// fileOwner is a file's numeric owner and group.
type fileOwner struct{ uid, gid int }

// ownerOf returns fi's owner (nil where the platform has none).
func ownerOf(fi os.FileInfo) *fileOwner {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return &fileOwner{int(st.Uid), int(st.Gid)}
	}
	return nil
}

// writeAtomic writes data to path with mode and owner (if not nil) through
// atomicfile: a reader (or a crash) never sees half a file, nor the data
// under another mode or owner.
func writeAtomic(path string, data []byte, mode os.FileMode, owner *fileOwner) error {
	var opts []atomicfile.Option
	if owner != nil {
		opts = append(opts, atomicfile.WithOwner(owner.uid, owner.gid))
	}
	return atomicfile.Write(path, data, mode, opts...)
}

// symlink makes node path p a symlink to target (a node path).
func (t *tree) symlink(p, target string) (Change, error) {
	c := Change{Path: p}
	h := t.host(p)
	cur, err := os.Readlink(h)
	switch {
	case err == nil && cur == target:
		c.Action = "unchanged"
		return c, nil
	case err == nil:
		c.Action = "updated"
	case errors.Is(err, fs.ErrNotExist):
		c.Action = "created"
	default:
		return c, fmt.Errorf("%s: exists and is not a symlink: %w", p, err)
	}
	if t.dryRun {
		return c, nil
	}
	if err := os.MkdirAll(filepath.Dir(h), 0o755); err != nil {
		return c, err
	}
	if c.Action == "updated" {
		if err := os.Remove(h); err != nil {
			return c, err
		}
	}
	if err := os.Symlink(target, h); err != nil {
		return c, fmt.Errorf("link %s: %w", p, err)
	}
	return c, nil
}

// remove deletes node path p (a file or symlink), then its directory if
// that is left empty.
func (t *tree) remove(p string) (Change, error) {
	c := Change{Path: p, Action: "removed"}
	h := t.host(p)
	if _, err := os.Lstat(h); errors.Is(err, fs.ErrNotExist) {
		c.Action = "absent"
		return c, nil
	}
	if t.dryRun {
		return c, nil
	}
	if err := os.Remove(h); err != nil {
		return c, fmt.Errorf("remove %s: %w", p, err)
	}
	// Only an empty directory goes: os.Remove refuses anything else.
	_ = os.Remove(filepath.Dir(h))
	return c, nil
}

// removeIfOurs removes p only if it holds marker (s3snap wrote it).
func (t *tree) removeIfOurs(p, marker string) (Change, error) {
	b, err := t.read(p)
	if errors.Is(err, fs.ErrNotExist) {
		return Change{Path: p, Action: "absent"}, nil
	}
	if err != nil {
		return Change{Path: p}, err
	}
	if !bytes.Contains(b, []byte(marker)) {
		return Change{Path: p, Action: "unchanged", Note: "not written by s3snap: kept"}, nil
	}
	// The file s3snap replaced, if any, comes back, with its mode and owner.
	if bak, err := t.read(p + BackupSuffix); err == nil {
		c := Change{Path: p, Action: "updated", Note: "restored from " + p + BackupSuffix}
		fi, err := os.Stat(t.host(p + BackupSuffix))
		if err != nil {
			return c, err
		}
		if !t.dryRun {
			if err := writeAtomic(t.host(p), bak, fi.Mode().Perm(), ownerOf(fi)); err != nil {
				return c, err
			}
			if err := os.Remove(t.host(p + BackupSuffix)); err != nil {
				return c, err
			}
		}
		return c, nil
	}
	return t.remove(p)
}

// reload asks a running systemd to re-read its units when installing into
// the live root; an image tree (or a machine without systemd) needs none.
func reload(ctx context.Context, root string) {
	if root != "/" {
		return
	}
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return
	}
	if out, err := exec.CommandContext(ctx, "systemctl", "daemon-reload").CombinedOutput(); err != nil {
		log.G(ctx).WithError(err).WithField("output", string(out)).Warn("systemctl daemon-reload failed")
	}
}
