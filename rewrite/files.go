package rewrite

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/log"

	"github.com/s3snap/s3snap/internal/atomicfile"
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
	return atomicfile.Write(real, b, fi.Mode().Perm())
}

// Diff is the unified diff from the old bytes to the new, "" if none.
// Edits never add or remove a line break, so line i of the old file is
// line i of the new one and the hunks are the runs of changed lines with
// three lines of context.
func (r *Result) Diff() string {
	if r.Status != StatusChanged {
		return ""
	}
	a, b := splitLines(r.Old), splitLines(r.New)
	if len(a) != len(b) {
		return "" // cannot happen: see above
	}
	name := filepath.ToSlash(r.Path)
	var out strings.Builder
	if filepath.IsAbs(r.Path) {
		fmt.Fprintf(&out, "--- %s\n+++ %s\n", name, name)
	} else { // git's labels, for patch -p1
		fmt.Fprintf(&out, "--- a/%s\n+++ b/%s\n", name, name)
	}
	const context = 3
	for i := 0; i < len(a); {
		if a[i] == b[i] {
			i++
			continue
		}
		// A hunk: from context lines before the first change to context
		// lines after the last change that is no further than 2*context
		// unchanged lines from the one before.
		first, last := i, i
		for j := i + 1; j < len(a) && j <= last+2*context+1; j++ {
			if a[j] != b[j] {
				last = j
			}
		}
		lo, hi := max(first-context, 0), min(last+context+1, len(a))
		fmt.Fprintf(&out, "@@ -%d,%d +%d,%d @@\n", lo+1, hi-lo, lo+1, hi-lo)
		for k := lo; k < hi; {
			if a[k] == b[k] {
				writeLine(&out, ' ', a[k])
				k++
				continue
			}
			end := k
			for end < hi && a[end] != b[end] {
				end++
			}
			for _, l := range a[k:end] {
				writeLine(&out, '-', l)
			}
			for _, l := range b[k:end] {
				writeLine(&out, '+', l)
			}
			k = end
		}
		i = hi
	}
	return out.String()
}

// splitLines splits b after each newline; the last line may lack one.
func splitLines(b []byte) []string {
	var lines []string
	for len(b) > 0 {
		n := bytes.IndexByte(b, '\n') + 1
		if n == 0 {
			n = len(b)
		}
		lines = append(lines, string(b[:n]))
		b = b[n:]
	}
	return lines
}

func writeLine(w *strings.Builder, prefix byte, l string) {
	w.WriteByte(prefix)
	w.WriteString(l)
	if !strings.HasSuffix(l, "\n") {
		w.WriteString("\n\\ No newline at end of file\n")
	}
}
