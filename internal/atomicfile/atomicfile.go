// Package atomicfile is s3snap's one way to replace a file: the data goes
// to a temporary file in the same directory, which gets its mode (and
// owner) before it is renamed over the target, so a reader or a crash sees
// the old file or the whole new one, never half a file nor the data under
// the wrong mode or owner; on any error the temporary file is removed.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

type options struct {
	sync  bool
	owner *[2]int
}

// Option adjusts Write.
type Option func(*options)

// WithOwner gives the file uid and gid (before it is in place).
func WithOwner(uid, gid int) Option { return func(o *options) { o.owner = &[2]int{uid, gid} } }

// NoSync skips the fsync before the rename: for caches whose entries are
// verified when read, a crash may lose one but never makes it wrong.
func NoSync() Option { return func(o *options) { o.sync = false } }

// Write replaces path with data, mode perm.
func Write(path string, data []byte, perm os.FileMode, opts ...Option) (err error) {
	o := options{sync: true}
	for _, opt := range opts {
		opt(&o)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	if o.owner != nil {
		if err := f.Chown(o.owner[0], o.owner[1]); err != nil {
			return err
		}
	}
	// After the chown, which may clear setuid and setgid bits.
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if o.sync {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
