package rewrite

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

var update = flag.Bool("update", false, "rewrite the *.golden files from the current output")

const (
	ecr    = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
	mirror = "registry.example.com/mirror"
)

func newRewriter(t *testing.T, opts ...Option) *Rewriter {
	t.Helper()
	rw, err := New(ecr, mirror, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return rw
}

// fixtures are the files in testdata, with what a run should make of them.
var fixtures = []struct {
	file    string
	status  Status
	changes int // references rewritten
	warns   int
}{
	{"deployment.yaml", StatusChanged, 5, 0},
	{"cronjob.yaml", StatusChanged, 2, 0},
	{"statefulset.yaml", StatusChanged, 1, 0},
	{"pod-ephemeral.yaml", StatusChanged, 2, 0},
	{"values.yaml", StatusChanged, 7, 0},
	{"kustomization.yaml", StatusChanged, 3, 0},
	{"multi-doc.yaml", StatusChanged, 3, 1}, // the escaped scalar is left, with a warning
	{"flow.yaml", StatusChanged, 3, 0},
	{"crlf.yaml", StatusChanged, 1, 0},
	{"config.yaml", StatusSkipped, 0, 0}, // YAML of another kind
	{"chart/templates/deployment.yaml", StatusSkipped, 0, 0},
	{"not-yaml.yml", StatusSkipped, 0, 0},
}

// TestGolden: every ECR reference in an image field is rewritten, nothing
// else changes (the output is compared byte for byte with a golden file,
// and every changed line is one that held a rewritten reference), and a
// second run changes nothing.
func TestGolden(t *testing.T) {
	rw := newRewriter(t)
	for _, fx := range fixtures {
		t.Run(fx.file, func(t *testing.T) {
			path := filepath.Join("testdata", fx.file)
			in, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			res := rw.Rewrite(path, in)
			if res.Status != fx.status || len(res.Changes) != fx.changes || len(res.Warnings) != fx.warns {
				t.Errorf("status %s (%s), %d changes, %d warnings; want %s, %d, %d\nchanges: %+v\nwarnings: %+v",
					res.Status, res.Reason, len(res.Changes), len(res.Warnings), fx.status, fx.changes, fx.warns, res.Changes, res.Warnings)
			}
			if !bytes.Equal(res.Old, in) {
				t.Error("Rewrite changed its input")
			}
			golden := path + ".golden"
			if *update {
				if err := os.WriteFile(golden, res.New, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if !bytes.Equal(res.New, want) {
				t.Errorf("output differs from %s:\n%s", golden, res.Diff())
			}
			if fx.status != StatusChanged && !bytes.Equal(res.New, in) {
				t.Errorf("a %s file was changed", fx.status)
			}
			checkOnlyReferenceLines(t, in, res.New)
			if fx.status == StatusChanged {
				checkNoECRImages(t, res.New, fx.warns)
			}

			again := rw.Rewrite(path, res.New)
			if again.Status == StatusChanged || !bytes.Equal(again.New, res.New) || len(again.Changes) != 0 {
				t.Errorf("second run: %s, %+v\n%s", again.Status, again.Changes, again.Diff())
			}
		})
	}
}

// checkOnlyReferenceLines: line counts match and each line that differs
// held the ECR host before and the mirror after (or a pinned digest).
func checkOnlyReferenceLines(t *testing.T, in, out []byte) {
	t.Helper()
	a, b := bytes.Split(in, []byte("\n")), bytes.Split(out, []byte("\n"))
	if len(a) != len(b) {
		t.Fatalf("%d lines became %d", len(a), len(b))
	}
	for i := range a {
		if bytes.Equal(a[i], b[i]) {
			continue
		}
		if !(bytes.Contains(a[i], []byte(ecr)) && bytes.Contains(b[i], []byte("registry.example.com"))) && !bytes.Contains(b[i], []byte("sha256:")) {
			t.Errorf("line %d changed and is not a reference:\n-%s\n+%s", i+1, a[i], b[i])
		}
	}
}

// checkNoECRImages: no image field of the output (image, *Image, Helm
// blocks, kustomize names) still names the ECR registry, except the
// allowed ones left with a warning.
func checkNoECRImages(t *testing.T, out []byte, allowed int) {
	t.Helper()
	docs, err := parse(out)
	if err != nil {
		t.Fatal(err)
	}
	left := 0
	var visit func(n *yaml.Node, key string)
	visit = func(n *yaml.Node, key string) {
		switch n.Kind {
		case yaml.ScalarNode:
			imageish := isImageKey(key) || key == "repository" || key == "registry" || key == "name" || key == "newName"
			if imageish && strings.HasPrefix(n.Value, ecr+"/") || (key == "registry" && n.Value == ecr) {
				left++
				if left > allowed {
					t.Errorf("line %d: %s: %s still names the ECR registry", n.Line, key, n.Value)
				}
			}
		case yaml.MappingNode:
			if k := lookup(n, "kind"); k != nil && k.Value == "ConfigMap" {
				return // its data is not an image field
			}
			for i := 0; i+1 < len(n.Content); i += 2 {
				visit(n.Content[i+1], n.Content[i].Value)
			}
		default:
			for _, c := range n.Content {
				visit(c, key)
			}
		}
	}
	for _, d := range docs {
		visit(d, "")
	}
}

// TestFiles: directories are walked for *.yaml/*.yml (not hidden ones),
// files are taken whatever their name, a missing path is an error.
func TestFiles(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"a.yaml", "b.yml", "c.txt", "sub/d.yaml", ".git/e.yaml", "Chart.lock"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte("a: 1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Files([]string{dir, filepath.Join(dir, "c.txt"), filepath.Join(dir, "a.yaml")})
	if err != nil {
		t.Fatal(err)
	}
	var rel []string
	for _, p := range got {
		r, _ := filepath.Rel(dir, p)
		rel = append(rel, r)
	}
	if want := "a.yaml b.yml c.txt sub/d.yaml"; strings.Join(rel, " ") != want {
		t.Errorf("Files = %v, want %s", rel, want)
	}
	if _, err := Files([]string{filepath.Join(dir, "missing.yaml")}); !os.IsNotExist(err) {
		t.Errorf("missing path: %v, want a not-exist error", err)
	}
}

// TestFileWrite: File writes atomically and keeps the mode; without write
// (a dry run) the file is untouched; a symlink stays a symlink.
func TestFileWrite(t *testing.T) {
	dir := t.TempDir()
	in, err := os.ReadFile("testdata/pod-ephemeral.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "pod.yaml")
	if err := os.WriteFile(path, in, 0o640); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.yaml")
	if err := os.Symlink("pod.yaml", link); err != nil {
		t.Fatal(err)
	}
	rw := newRewriter(t)
	ctx := context.Background()

	res, err := rw.File(ctx, link, false)
	if err != nil || res.Status != StatusChanged {
		t.Fatalf("dry run: %v, %+v", err, res)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, in) {
		t.Fatal("a dry run wrote the file")
	}
	if _, err := rw.File(ctx, link, true); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if !bytes.Equal(b, res.New) {
		t.Errorf("written:\n%s\nwant:\n%s", b, res.New)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v (%v), want 0640", fi.Mode(), err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the symlink was replaced: %v %v", fi.Mode(), err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("left behind: %v", ents)
	}
	if !strings.Contains(res.Diff(), "+    image: registry.example.com/mirror/tools/netshoot:v0.13") {
		t.Errorf("diff:\n%s", res.Diff())
	}
}

// TestDiff: hunks with three lines of context, merged when close, and a
// last line without a newline marked as diff -u does.
func TestDiff(t *testing.T) {
	in := "a: 1\nimage: " + ecr + "/x:1\nimage: " + ecr + "/y:1\nb: 2\nc: 3\nd: 4\ne: 5\nf: 6\ng: 7\nh: 8\nk: 9\nimage: " + ecr + "/z:1"
	res := newRewriter(t).Rewrite("f.yaml", []byte(in))
	want := `--- a/f.yaml
+++ b/f.yaml
@@ -1,6 +1,6 @@
 a: 1
-image: ` + ecr + `/x:1
-image: ` + ecr + `/y:1
+image: ` + mirror + `/x:1
+image: ` + mirror + `/y:1
 b: 2
 c: 3
 d: 4
@@ -9,4 +9,4 @@
 g: 7
 h: 8
 k: 9
-image: ` + ecr + `/z:1
\ No newline at end of file
+image: ` + mirror + `/z:1
\ No newline at end of file
`
	if got := res.Diff(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}
