package untar

import (
	"archive/tar"
	"bytes"
	"os"
	"testing"
)

// FuzzApply unpacks arbitrary tar streams with archive.Apply and with
// Apply: both must fail, or both succeed with the same tree, and neither
// may write beside its root.
func FuzzApply(f *testing.F) {
	if os.Geteuid() != 0 {
		f.Skip("needs root: owners and devices")
	}
	seeds := [][]entry{
		{{name: "a/b/c", body: "x"}, {name: "a/l", typ: tar.TypeSymlink, link: "/"}, {name: "a/l/etc/f", body: "y"}},
		{{name: "f", body: "x"}, {name: "h", typ: tar.TypeLink, link: "f"}, {name: "f", body: "z"}},
		{{name: "d/", typ: tar.TypeDir, mode: 0o2755, gid: 3}, {name: "d/.wh..wh..opq"}, {name: "d/.wh.x"}, {name: "d/y", uid: 1}},
		{{name: "up", typ: tar.TypeSymlink, link: "../.."}, {name: "up/x", body: "x"}, {name: "up/", typ: tar.TypeDir}},
	}
	for _, s := range seeds {
		f.Add(layer(f, s...))
	}
	f.Fuzz(func(t *testing.T, tarball []byte) {
		// A sparse entry can declare gigabytes of holes in a few bytes:
		// both would write them all, which only makes the fuzzer slow.
		tr := tar.NewReader(bytes.NewReader(tarball))
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			if h.Size > 1<<20 {
				t.Skip("entry too big for fuzzing")
			}
		}
		applyBoth(t, tarball, 3)
	})
}
