package rewrite

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func loadTestPins(t *testing.T) *Pins {
	t.Helper()
	p, err := LoadPins("testdata/verify-report.json")
	if err != nil {
		t.Fatal(err)
	}
	if p.Len() != 3 {
		t.Fatalf("%d verified tags, want 3 (not the mismatch, not the untagged)", p.Len())
	}
	return p
}

// TestPins: tags the report verified become digests, in image strings,
// Helm blocks (into their digest field) and kustomizations (newTag becomes
// digest); a tag it did not verify stays, with a warning; a second run
// changes nothing.
func TestPins(t *testing.T) {
	a, b, c := "sha256:"+hex64('a'), "sha256:"+hex64('b'), "sha256:"+hex64('c')
	for _, tc := range []struct {
		name, file, in, want string
		warns                []string // substrings, one per warning
	}{
		{
			name: "verified tag", file: "pod.yaml",
			in:   "image: " + ecr + "/app:v1 # pinned\n",
			want: "image: " + mirror + "/app@" + a + " # pinned\n",
		},
		{
			name: "no tag is latest", file: "pod.yaml",
			in:   "image: '" + ecr + "/app'\n",
			want: "image: '" + mirror + "/app@" + c + "'\n",
		},
		{
			name: "already moved, pinned now", file: "pod.yaml",
			in:   "image: \"" + mirror + "/team/worker:2.0.1\"\n",
			want: "image: \"" + mirror + "/team/worker@" + b + "\"\n",
		},
		{
			name: "mismatch is not verified", file: "pod.yaml",
			in:    "image: " + ecr + "/app:v2\n",
			want:  "image: " + mirror + "/app:v2\n",
			warns: []string{"tag v2 of " + ecr + "/app is not verified"},
		},
		{
			name: "a digest that differs is kept", file: "pod.yaml",
			in:    "image: " + ecr + "/app:v1@" + b + "\n",
			want:  "image: " + mirror + "/app:v1@" + b + "\n",
			warns: []string{"digest differs from " + a},
		},
		{
			name: "helm digest field", file: "values.yaml",
			in:   "image:\n  repository: " + ecr + "/app\n  tag: v1\n  digest: \"\"\n",
			want: "image:\n  repository: " + mirror + "/app\n  tag: v1\n  digest: \"" + a + "\"\n",
		},
		{
			name: "helm block without a digest field", file: "values.yaml",
			in:    "image:\n  registry: " + ecr + "\n  repository: team/worker\n  tag: 2.0.1\n",
			want:  "image:\n  registry: " + mirror + "\n  repository: team/worker\n  tag: 2.0.1\n",
			warns: []string{"no digest field to pin " + b},
		},
		{
			name: "kustomize newTag becomes digest", file: "kustomization.yaml",
			in:   "images:\n- name: " + ecr + "/app\n  newTag: \"v1\"\n- name: app\n  newName: " + ecr + "/team/worker\n  newTag: 2.0.1\n",
			want: "images:\n- name: " + mirror + "/app\n  digest: \"" + a + "\"\n- name: app\n  newName: " + mirror + "/team/worker\n  digest: " + b + "\n",
		},
		{
			name: "kustomize tag not verified", file: "kustomization.yaml",
			in:    "images:\n- name: " + ecr + "/app\n  newTag: v9\n",
			want:  "images:\n- name: " + mirror + "/app\n  newTag: v9\n",
			warns: []string{"tag v9"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rw := newRewriter(t, WithPins(loadTestPins(t)))
			res := rw.Rewrite(tc.file, []byte(tc.in))
			if string(res.New) != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", res.New, tc.want)
			}
			if len(res.Warnings) != len(tc.warns) {
				t.Fatalf("warnings %+v, want %q", res.Warnings, tc.warns)
			}
			for i, w := range tc.warns {
				if !strings.Contains(res.Warnings[i].Message, w) {
					t.Errorf("warning %q, want it to say %q", res.Warnings[i].Message, w)
				}
			}
			if again := rw.Rewrite(tc.file, res.New); string(again.New) != string(res.New) || len(again.Changes) > 0 {
				t.Errorf("second run changed it:\n%s", again.Diff())
			}
		})
	}
}

func TestPinsErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, body string
	}{
		{"migrate.json", `{"command": "migrate", "source": "ecr://` + ecr + `", "entries": []}`},
		{"text.json", "verify: ecr://x -> s3://y\n"},
		{"source.json", `{"command": "verify", "source": "ftp://x", "entries": []}`},
	} {
		if _, err := LoadPins(write(tc.name, tc.body)); !errors.Is(err, ErrNotVerifyReport) {
			t.Errorf("%s: %v, want ErrNotVerifyReport", tc.name, err)
		}
	}
	if _, err := LoadPins(filepath.Join(dir, "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing report: %v", err)
	}
	// A report about another registry than --from is refused outright.
	other, err := LoadPins(write("other.json", `{"command": "verify", "source": "docker://quay.io/team", "entries": []}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(ecr, mirror, WithPins(other)); err == nil || !strings.Contains(err.Error(), "docker://quay.io/team") {
		t.Errorf("report for another registry: %v", err)
	}
	// A bucket source names no registry: its repositories are taken as is.
	bucket, err := LoadPins(write("bucket.json", `{"command": "verify", "source": "s3://images/ecr", "entries": []}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(ecr, mirror, WithPins(bucket)); err != nil {
		t.Error(err)
	}
}
