package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const (
	testECR    = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
	testMirror = "registry.example.com/mirror"
)

// copyFixtures copies the rewrite package's fixtures into a new directory
// and returns it with the bytes of every file.
func copyFixtures(t *testing.T) (string, map[string][]byte) {
	t.Helper()
	src := filepath.Join("..", "..", "rewrite", "testdata")
	dir := t.TempDir()
	files := map[string][]byte{}
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(p, ".golden") {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files[rel] = b
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(rel)), 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir, files
}

// TestRewriteDryRun: --dry-run writes nothing and exits 0; its diff,
// applied with patch -p1, gives exactly what a real run writes; a second
// real run changes nothing.
func TestRewriteDryRun(t *testing.T) {
	dir, before := copyFixtures(t)
	t.Chdir(dir)
	args := []string{"rewrite", "--from", testECR, "--to", testMirror, "."}
	diff, errOut, code := runArgs(t, append(args, "--dry-run")...)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for rel, b := range before {
		if got, _ := os.ReadFile(rel); !bytes.Equal(got, b) {
			t.Errorf("--dry-run changed %s", rel)
		}
	}
	if !strings.Contains(diff, "+++ b/deployment.yaml") || !strings.Contains(errOut, "skipped") || !strings.Contains(errOut, "dry run, nothing written: would rewrite 27 references") {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", diff, errOut)
	}

	if _, err := exec.LookPath("patch"); err == nil {
		patched := t.TempDir()
		for rel, b := range before {
			os.MkdirAll(filepath.Join(patched, filepath.Dir(rel)), 0o755)
			os.WriteFile(filepath.Join(patched, rel), b, 0o644)
		}
		cmd := exec.Command("patch", "-p1", "--quiet", "-d", patched)
		cmd.Stdin = strings.NewReader(diff)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("patch: %v\n%s", err, out)
		}
		defer func() {
			for rel := range before {
				want, _ := os.ReadFile(rel)
				if got, _ := os.ReadFile(filepath.Join(patched, rel)); !bytes.Equal(got, want) {
					t.Errorf("%s: the dry run's diff does not give what the run wrote", rel)
				}
			}
		}()
	}

	out, errOut, code := runArgs(t, args...)
	if code != exitOK || !strings.Contains(out, "deployment.yaml:26: "+testECR+"/payments/migrations:1.14.2 -> "+testMirror+"/payments/migrations:1.14.2") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, rel := range []string{"config.yaml", "not-yaml.yml", "chart/templates/deployment.yaml"} {
		if got, _ := os.ReadFile(rel); !bytes.Equal(got, before[rel]) {
			t.Errorf("%s changed", rel)
		}
	}
	out, _, code = runArgs(t, append(args, "-o", "json")...)
	var again rewriteOutput
	if err := json.Unmarshal([]byte(out), &again); err != nil || code != exitOK {
		t.Fatalf("exit %d, %v:\n%s", code, err, out)
	}
	if again.Summary.Changed != 0 || again.Summary.References != 0 {
		t.Errorf("a second run changed something: %+v", again.Summary)
	}
}

// TestRewriteJSON: -o json lists every file and, per reference, old, new
// and file:line.
func TestRewriteJSON(t *testing.T) {
	dir, _ := copyFixtures(t)
	path := filepath.Join(dir, "pod-ephemeral.yaml")
	out, errOut, code := runArgs(t, "rewrite", "-o", "json", "--dry-run", "--from", testECR, "--to", testMirror, path, filepath.Join(dir, "not-yaml.yml"))
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var o rewriteOutput
	if err := json.Unmarshal([]byte(out), &o); err != nil {
		t.Fatal(err)
	}
	if len(o.Files) != 2 || o.Summary.Changed != 1 || o.Summary.Skipped != 1 || !o.DryRun {
		t.Fatalf("%+v", o)
	}
	f := o.Files[1]
	if f.File != path || len(f.References) != 2 || f.Diff == "" {
		t.Fatalf("%+v", f)
	}
	want := rewriteRef{Old: testECR + "/tools/netshoot:v0.13", New: testMirror + "/tools/netshoot:v0.13", Location: path + ":12", Field: "spec.ephemeralContainers[0].image"}
	if f.References[1] != want {
		t.Errorf("got %+v\nwant %+v", f.References[1], want)
	}
	if o.Files[0].Status != "skipped" || o.Files[0].Reason == "" {
		t.Errorf("non-YAML file: %+v", o.Files[0])
	}
}

func TestRewriteErrors(t *testing.T) {
	dir, _ := copyFixtures(t)
	migrateReport := filepath.Join(dir, "migrate.json")
	os.WriteFile(migrateReport, []byte(`{"command": "migrate", "source": "ecr://`+testECR+`", "entries": []}`), 0o644)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--to", testMirror, dir}, exitUsage, "give both --from and --to"},
		{[]string{"--from", testECR, "--to", testMirror}, exitUsage, "takes one or more PATHs"},
		{[]string{"--from", "team/app", "--to", testMirror, dir}, exitUsage, `--from: "team/app": want REGISTRY[/PREFIX]`},
		{[]string{"--from", testECR + "/a", "--to", testECR, dir}, exitUsage, "--from lies inside --to"},
		{[]string{"--pin-digests", migrateReport, "--from", testECR, "--to", testMirror, dir}, exitUsage, "not an s3snap verify report"},
		{[]string{"--pin-digests", filepath.Join(dir, "none.json"), "--from", testECR, "--to", testMirror, dir}, exitFailure, "no such file"},
		{[]string{"--from", testECR, "--to", testMirror, filepath.Join(dir, "missing")}, exitFailure, "no such file"},
	} {
		_, errOut, code := runArgs(t, append([]string{"rewrite"}, tc.args...)...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, want %d with %q:\n%s", tc.args, code, tc.code, tc.want, errOut)
		}
	}
}
