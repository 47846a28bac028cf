package rewrite

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/aymanbagabas/go-udiff"
	"github.com/containerd/log"
)

// Files expands paths: a file is taken as given (whatever its name), a
// directory is walked for *.yaml and *.yml files (hidden directories such as
// .git are not entered). The result is sorted and has no duplicates. A path
// that does not exist is an error, before anything is read.
func Files(paths []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			add(filepath.Clean(p))
			continue
		}
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			switch {
			case err != nil:
				return err
			case d.IsDir() && path != p && strings.HasPrefix(d.Name(), "."):
				return filepath.SkipDir
			case d.Type().IsRegular() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")):
				add(path)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("walk %s: %w", p, err)
		}
	}
	sort.Strings(out)
	return out, nil
}

// File rewrites the file at path, writing it (atomically, mode kept) only
// when write is set and something changed.
func (rw *Rewriter) File(ctx context.Context, path string, write bool) (*Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	res := rw.Rewrite(path, b)
	log.G(ctx).WithFields(log.Fields{"file": path, "status": res.Status, "changes": len(res.Changes)}).Debug("rewrite")
	if write && res.Status == StatusChanged {
		if err := writeAtomic(path, res.New); err != nil {
			return res, err
		}
	}
	return res, nil
}

// writeAtomic replaces path with b through a temporary file in the same
// directory and a rename, keeping the file's mode. A symlink is followed,
// so the link stays and its target is replaced.
func writeAtomic(path string, b []byte) error {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	f, err := os.CreateTemp(filepath.Dir(real), "."+filepath.Base(real)+".s3snap-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename, a no-op
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(fi.Mode().Perm()); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, real); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Diff is the unified diff from the old bytes to the new, "" if none.
func (r *Result) Diff() string {
	if r.Status != StatusChanged {
		return ""
	}
	a, b := filepath.ToSlash(r.Path), filepath.ToSlash(r.Path)
	if !filepath.IsAbs(r.Path) { // git's labels, for patch -p1
		a, b = "a/"+a, "b/"+b
	}
	return udiff.Unified(a, b, string(r.Old), string(r.New))
}
