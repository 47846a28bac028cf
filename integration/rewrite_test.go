package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/s3snap/s3snap/integration/testenv"
)

// TestRewritePinDigests: the cutover end to end. Images are migrated from a
// registry into a bucket (v1 and v2 of three tags), s3snap verify -o json
// proves what arrived, and s3snap rewrite --pin-digests points manifests,
// Helm values and a kustomization at a stock registry serving the bucket,
// pinning the verified tags to their digests (which that registry then
// serves) and leaving the unverified v3 with its tag and a warning. A
// second run changes nothing.
func TestRewritePinDigests(t *testing.T) {
	e := testenv.S3(t)
	src := testenv.StartFSRegistry(t)
	bucket := e.NewBucket(t)
	push := regPusher{addr: src.Addr}
	images := map[string]*testenv.Image{}
	for i, tag := range []string{"v1", "v2", "v3"} {
		im := opaqueImage(t, randomLayers(uint64(70+i), 1, 32<<10))
		push.image(t, "team/app", tag, im)
		images[tag] = im
	}
	cli := newMigrateCLI(t, e)
	if _, code := cli.migrate(t, "migrate", "--tag=^v[12]$", "docker://"+src.Addr+"/team/app", "s3://"+bucket); code != 0 {
		t.Fatalf("migrate exit %d", code)
	}
	report, _, code := cli.run(t, "verify", "-o", "json", "docker://"+src.Addr+"/team/app", "s3://"+bucket)
	if code != 1 {
		t.Fatalf("verify exit %d, want 1 (v3 was not migrated)", code)
	}
	dir := t.TempDir()
	reportPath := filepath.Join(dir, "verify.json")
	writeFile(t, reportPath, []byte(report))

	// The new registry: a stock Distribution registry serving the bucket.
	dst := testenv.StartS3Registry(t, e, bucket, "")
	from, to := src.Addr, dst.Addr
	deploy := filepath.Join(dir, "deploy")
	if err := os.Mkdir(deploy, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"deployment.yaml": `apiVersion: apps/v1
kind: Deployment
metadata:
  name: app   # ` + from + ` until the cutover
spec:
  template:
    spec:
      initContainers:
      - name: init
        image: "` + from + `/team/app:v3"
      containers:
      - name: app
        image: ` + from + `/team/app:v1
      - name: pinned-already
        image: ` + from + `/team/app@` + images["v2"].Digest.String() + `
`,
		"values.yaml": `image:
  registry: ` + from + `
  repository: team/app
  tag: v2
  digest: ""   # filled by the cutover
`,
		"kustomization.yaml": `resources: [deployment.yaml]
images:
- name: ` + from + `/team/app
  newTag: 'v1'
`,
	}
	for name, body := range files {
		writeFile(t, filepath.Join(deploy, name), []byte(body))
	}

	out, stderr, code := cli.run(t, "rewrite", "-o", "json", "--pin-digests", reportPath, "--from", from, "--to", to, deploy)
	if code != 0 {
		t.Fatalf("rewrite exit %d: %s", code, stderr)
	}
	var res struct {
		Files []struct {
			File       string
			Status     string
			References []struct{ Old, New, Location string }
			Warnings   []struct{ Location, Reference, Message string }
		}
		Summary struct{ Changed, References, Warnings int }
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if res.Summary.Changed != 3 || res.Summary.References != 5 || res.Summary.Warnings != 1 {
		t.Errorf("summary %+v, want 3 files, 5 references, 1 warning", res.Summary)
	}
	v1, v2 := images["v1"].Digest.String(), images["v2"].Digest.String()
	want := map[string]string{
		"deployment.yaml": strings.NewReplacer(
			`"`+from+"/team/app:v3\"", `"`+to+"/team/app:v3\"",
			from+"/team/app:v1", to+"/team/app@"+v1,
			from+"/team/app@", to+"/team/app@",
		).Replace(files["deployment.yaml"]),
		"values.yaml":        strings.NewReplacer(from, to, `digest: ""`, `digest: "`+v2+`"`).Replace(files["values.yaml"]),
		"kustomization.yaml": strings.NewReplacer(from, to, "newTag: 'v1'", "digest: '"+v1+"'").Replace(files["kustomization.yaml"]),
	}
	for name, w := range want {
		got, err := os.ReadFile(filepath.Join(deploy, name))
		if err != nil || string(got) != w {
			t.Errorf("%s (%v):\n%s\nwant:\n%s", name, err, got, w)
		}
	}
	for _, f := range res.Files {
		for _, w := range f.Warnings {
			if !strings.HasSuffix(w.Location, "deployment.yaml:10") || !strings.Contains(w.Message, "tag v3") {
				t.Errorf("unexpected warning %+v", w)
			}
		}
	}

	// What the manifests now name, the new registry serves, by digest.
	crane := testenv.Bin(t, "crane")
	for _, d := range []string{v1, v2} {
		if got := strings.TrimSpace(testenv.Run(t, crane, "digest", "--insecure", to+"/team/app@"+d)); got != d {
			t.Errorf("%s/team/app@%s: the bucket's registry says %s", to, d, got)
		}
	}

	out, _, code = cli.run(t, "rewrite", "--pin-digests", reportPath, "--from", from, "--to", to, deploy)
	if code != 0 || !strings.Contains(out, "rewrote 0 references") {
		t.Errorf("second run: exit %d\n%s", code, out)
	}
	for name, w := range want {
		if got, _ := os.ReadFile(filepath.Join(deploy, name)); string(got) != w {
			t.Errorf("second run changed %s:\n%s", name, got)
		}
	}
}
