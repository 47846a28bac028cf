package integration

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/s3snap/s3snap/integration/testenv"
)

// cliRunner runs the s3snap binary against the environment's S3 server.
type cliRunner struct {
	bin      string
	endpoint string
	env      []string
}

// buildCLI builds ./cmd/s3snap into dir.
func buildCLI(t *testing.T, dir string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	repo := filepath.Dir(filepath.Dir(file))
	bin := filepath.Join(dir, "s3snap")
	cmd := exec.Command("go", "build", "-o", bin, "-ldflags", "-X main.version=v0.0.0-clitest", "./cmd/s3snap")
	cmd.Dir = repo
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/s3snap: %v\n%s", err, out)
	}
	return bin
}

// run runs s3snap --endpoint E args... and returns stdout, stderr and the
// exit code.
func (c *cliRunner) run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(c.bin, append([]string{"--endpoint", c.endpoint}, args...)...)
	cmd.Env = append(os.Environ(), c.env...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("run s3snap %s: %v", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), code
}

// ok runs s3snap and fails t unless it exits 0; it returns stdout.
func (c *cliRunner) ok(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := c.run(t, args...)
	if code != 0 {
		t.Fatalf("s3snap %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// fails runs s3snap, wants exit code want and stderr containing every one of
// msgs, exactly one "s3snap: " error line, and nothing on stdout.
func (c *cliRunner) fails(t *testing.T, want int, args []string, msgs ...string) {
	t.Helper()
	out, errOut, code := c.run(t, args...)
	if code != want {
		t.Errorf("s3snap %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, out, errOut)
		return
	}
	if n := strings.Count(errOut, "s3snap: "); n != 1 {
		t.Errorf("s3snap %s: %d error lines on stderr, want 1:\n%s", strings.Join(args, " "), n, errOut)
	}
	for _, m := range msgs {
		if !strings.Contains(errOut, m) {
			t.Errorf("s3snap %s: stderr lacks %q:\n%s", strings.Join(args, " "), m, errOut)
		}
	}
	if out != "" {
		t.Errorf("s3snap %s: stdout not empty on failure:\n%s", strings.Join(args, " "), out)
	}
}

// writeLayerTar writes a tar with one file of n pseudo-random bytes.
func writeLayerTar(t *testing.T, path, name string, seed uint64, n int) {
	t.Helper()
	data := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(n), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// cliManifest is the part of a manifest or index the test compares.
type cliManifest struct {
	MediaType string `json:"mediaType"`
	Config    struct {
		Digest string `json:"digest"`
		Size   int64  `json:"size"`
	} `json:"config"`
	Layers []struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	} `json:"layers"`
	Manifests []struct {
		Digest   string       `json:"digest"`
		Platform *cliPlatform `json:"platform"`
	} `json:"manifests"`
}

type cliPlatform struct {
	OS           string `json:"os"`
	Architecture string `json:"architecture"`
	Variant      string `json:"variant"`
}

func decodeJSON[T any](t *testing.T, what, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("%s: not the expected JSON: %v\n%s", what, err, s)
	}
	return v
}

// inspectJSON is the part of `s3snap inspect -o json` the test checks.
type inspectJSON struct {
	Reference  string       `json:"reference"`
	Repository string       `json:"repository"`
	Tag        string       `json:"tag"`
	Digest     string       `json:"digest"`
	MediaType  string       `json:"mediaType"`
	Size       int64        `json:"size"`
	Platform   *cliPlatform `json:"platform"`
	cliManifest
	TotalSize int64 `json:"totalSize"`
	// Manifests (of an index) are described like the image itself.
	Manifests []inspectJSON `json:"manifests"`
}

type pushJSON struct {
	Reference         string `json:"reference"`
	Digest            string `json:"digest"`
	Manifests         int    `json:"manifests"`
	BlobsUploaded     int    `json:"blobsUploaded"`
	BlobsSkipped      int    `json:"blobsSkipped"`
	BytesUploaded     int64  `json:"bytesUploaded"`
	BytesDeduplicated int64  `json:"bytesDeduplicated"`
}

type lsJSON struct {
	Repository string `json:"repository"`
	Tags       []struct {
		Tag    string `json:"tag"`
		Digest string `json:"digest"`
	} `json:"tags"`
}

// TestCLI drives the s3snap binary like a user: images made and pulled with
// crane into OCI layouts, pushed into a bucket, listed and inspected, and
// finally served from the bucket by a stock registry.
func TestCLI(t *testing.T) {
	e := testenv.S3(t)
	crane := testenv.Bin(t, "crane")
	reg := testenv.StartFSRegistry(t)
	tmp := t.TempDir()
	c := &cliRunner{
		bin:      buildCLI(t, tmp),
		endpoint: e.Endpoint,
		env: []string{
			"AWS_ACCESS_KEY_ID=" + e.AccessKey, "AWS_SECRET_ACCESS_KEY=" + e.SecretKey, "AWS_REGION=" + e.Region,
			"AWS_CONFIG_FILE=" + filepath.Join(tmp, "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(tmp, "no-aws-credentials"),
		},
	}
	bucket := e.NewBucket(t)

	// Layers: l1 shared by both images, l3 big enough for multipart uploads.
	tar := func(name string, seed uint64, n int) string {
		p := filepath.Join(tmp, name+".tar")
		writeLayerTar(t, p, name, seed, n)
		return p
	}
	l1, l2, l3, l4 := tar("one", 1, 1000), tar("two", 2, 300<<10), tar("three", 3, 20<<20), tar("four", 4, 5000)
	appRef := reg.Addr + "/team/app:v1"
	testenv.Run(t, crane, "append", "--oci-empty-base", "-f", l1, "-f", l2, "-t", appRef)
	amd, arm, multiRef := reg.Addr+"/team/multi:amd64", reg.Addr+"/team/multi:arm64", reg.Addr+"/team/multi:v1"
	testenv.Run(t, crane, "append", "-f", l1, "-f", l3, "-t", amd)
	testenv.Run(t, crane, "mutate", "--set-platform", "linux/amd64", "-t", amd, amd)
	testenv.Run(t, crane, "append", "-f", l4, "-t", arm)
	testenv.Run(t, crane, "mutate", "--set-platform", "linux/arm64/v8", "-t", arm, arm)
	testenv.Run(t, crane, "index", "append", "-m", amd, "-m", arm, "-t", multiRef)

	craneOut := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(crane, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("crane %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		return string(out)
	}
	appDigest := strings.TrimSpace(craneOut("digest", appRef))
	multiDigest := strings.TrimSpace(craneOut("digest", multiRef))
	appManifest := craneOut("manifest", appRef)
	multiManifest := craneOut("manifest", multiRef)
	appDir, multiDir := filepath.Join(tmp, "app-oci"), filepath.Join(tmp, "multi-oci")
	testenv.Run(t, crane, "pull", "--format", "oci", appRef, appDir)
	testenv.Run(t, crane, "pull", "--format", "oci", multiRef, multiDir)

	app := "s3://" + bucket + "/pfx/team/app"
	multi := "s3://" + bucket + "/pfx/team/multi"

	t.Run("push image", func(t *testing.T) {
		res := decodeJSON[pushJSON](t, "push -o json", c.ok(t, "push", "--prefix", "pfx", "-o", "json", appDir, app+":v1"))
		want := decodeJSON[cliManifest](t, "crane manifest", appManifest)
		wantBytes := want.Config.Size
		for _, l := range want.Layers {
			wantBytes += l.Size
		}
		if res.Digest != appDigest || res.BlobsUploaded != 3 || res.BlobsSkipped != 0 || res.BytesUploaded != wantBytes || res.Manifests != 1 {
			t.Errorf("push = %+v; want digest %s, 3 blobs and %d bytes uploaded, 1 manifest", res, appDigest, wantBytes)
		}
		if res.Reference != app+":v1" {
			t.Errorf("reference %q, want %q", res.Reference, app+":v1")
		}
	})

	t.Run("push again uploads nothing", func(t *testing.T) {
		out, errOut, code := c.run(t, "push", "--prefix", "pfx", appDir, app+":v1")
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, errOut)
		}
		for _, want := range []string{appDigest, "0 uploaded, 3 already in the bucket", "0 B uploaded"} {
			if !strings.Contains(out, want) {
				t.Errorf("summary lacks %q:\n%s", want, out)
			}
		}
		if strings.Count(errOut, "exists ") != 3 || strings.Contains(errOut, "uploaded sha256:") {
			t.Errorf("progress should list 3 blobs that exist:\n%s", errOut)
		}
	})

	t.Run("push index finds the prefix", func(t *testing.T) {
		// No --prefix: the bucket already has a layout under pfx.
		res := decodeJSON[pushJSON](t, "push -o json", c.ok(t, "push", "-o", "json", "--jobs", "2", multiDir, multi+":v1"))
		if res.Digest != multiDigest || res.Manifests != 3 || res.BlobsUploaded != 4 || res.BlobsSkipped != 1 || res.BytesDeduplicated == 0 {
			// Two configs and three layers, one of them app's.
			t.Errorf("push = %+v; want digest %s, 3 manifests, 4 blobs uploaded and 1 (the shared layer) deduplicated", res, multiDigest)
		}
	})

	t.Run("ls", func(t *testing.T) {
		if got := c.ok(t, "ls", "s3://"+bucket+"/pfx"); got != "team/app\nteam/multi\n" {
			t.Errorf("ls repositories = %q", got)
		}
		repos := decodeJSON[[]lsJSON](t, "ls -o json", c.ok(t, "ls", "-o", "json", "s3://"+bucket+"/pfx"))
		if len(repos) != 2 || repos[0].Repository != "team/app" || len(repos[0].Tags) != 1 ||
			repos[0].Tags[0].Tag != "v1" || repos[0].Tags[0].Digest != appDigest || repos[1].Tags[0].Digest != multiDigest {
			t.Errorf("ls -o json = %+v", repos)
		}
		out := c.ok(t, "ls", app)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 || strings.Fields(lines[0])[0] != "TAG" || strings.Join(strings.Fields(lines[1]), " ") != "v1 "+appDigest {
			t.Errorf("ls %s =\n%s", app, out)
		}
		if strings.Index(lines[0], "DIGEST") != strings.Index(lines[1], "sha256:") {
			t.Errorf("columns not aligned:\n%s", out)
		}
		one := decodeJSON[lsJSON](t, "ls repo -o json", c.ok(t, "ls", "-o", "json", "--prefix", "pfx", multi))
		if one.Repository != "team/multi" || len(one.Tags) != 1 || one.Tags[0].Digest != multiDigest {
			t.Errorf("ls -o json %s = %+v", multi, one)
		}
	})

	t.Run("inspect image", func(t *testing.T) {
		want := decodeJSON[cliManifest](t, "crane manifest", appManifest)
		got := decodeJSON[inspectJSON](t, "inspect -o json", c.ok(t, "inspect", "-o", "json", app+":v1"))
		if got.Digest != appDigest || got.Repository != "team/app" || got.Tag != "v1" || got.Size != int64(len(appManifest)) || got.MediaType != want.MediaType {
			t.Errorf("inspect = %+v", got)
		}
		if got.Config != want.Config || len(got.Layers) != len(want.Layers) {
			t.Fatalf("config/layers = %+v %+v, crane says %+v %+v", got.Config, got.Layers, want.Config, want.Layers)
		}
		total := want.Config.Size
		for i := range want.Layers {
			if got.Layers[i] != want.Layers[i] {
				t.Errorf("layer %d = %+v, crane says %+v", i, got.Layers[i], want.Layers[i])
			}
			total += want.Layers[i].Size
		}
		if got.TotalSize != total {
			t.Errorf("totalSize %d, want %d", got.TotalSize, total)
		}
		if raw := c.ok(t, "inspect", "--raw", app+":v1"); raw != appManifest {
			t.Errorf("--raw differs from crane manifest:\n%s\nvs\n%s", raw, appManifest)
		}
		if raw := c.ok(t, "inspect", "--raw", app+"@"+appDigest); raw != appManifest {
			t.Errorf("--raw by digest differs from crane manifest")
		}
		text := c.ok(t, "inspect", app+":v1")
		for _, s := range []string{appDigest, want.Config.Digest, want.Layers[1].Digest, "Total size:"} {
			if !strings.Contains(text, s) {
				t.Errorf("inspect text lacks %q:\n%s", s, text)
			}
		}
	})

	t.Run("inspect index", func(t *testing.T) {
		want := decodeJSON[cliManifest](t, "crane manifest", multiManifest)
		got := decodeJSON[inspectJSON](t, "inspect -o json", c.ok(t, "inspect", "-o", "json", multi+":v1"))
		if got.Digest != multiDigest || len(got.Manifests) != 2 {
			t.Fatalf("inspect = %+v", got)
		}
		for i, ch := range got.Manifests {
			w := want.Manifests[i]
			if ch.Digest != w.Digest || ch.Platform == nil || *ch.Platform != *w.Platform || len(ch.Layers) == 0 || ch.Config.Digest == "" || ch.TotalSize == 0 {
				t.Errorf("child %d = %+v (platform %+v), crane says %+v %+v", i, ch, ch.Platform, w, w.Platform)
			}
		}
		if raw := c.ok(t, "inspect", "--raw", multi+":v1"); raw != multiManifest {
			t.Errorf("--raw differs from crane manifest")
		}
		text := c.ok(t, "inspect", multi+":v1")
		t.Logf("s3snap inspect %s:\n%s", multi+":v1", text)
		for _, s := range []string{"linux/amd64", "linux/arm64/v8", want.Manifests[1].Digest} {
			if !strings.Contains(text, s) {
				t.Errorf("inspect text lacks %q:\n%s", s, text)
			}
		}
	})

	t.Run("errors", func(t *testing.T) {
		c.fails(t, 2, []string{"ls", bucket + "/pfx"}, "want s3://")
		c.fails(t, 2, []string{"inspect", "s3://" + bucket + "/pfx/team/app:bad tag"}, "invalid name")
		c.fails(t, 2, []string{"inspect", app}, "names no tag or digest")
		c.fails(t, 2, []string{"inspect", "s3://" + bucket + "/pfx/Team/App:v1"}, "repository name")
		c.fails(t, 2, []string{"push", appDir}, "takes 2 argument")
		c.fails(t, 2, []string{"push", appDir, app}, "names no tag")
		c.fails(t, 2, []string{"ls", "--prefix", "other", app}, "--prefix")
		c.fails(t, 2, []string{"lss"}, "unknown command", "did you mean")
		c.fails(t, 2, []string{"ls", "--nope", app}, "unknown flag")
		c.fails(t, 2, []string{"-o", "yaml", "ls", app}, "--output")
		c.fails(t, 1, []string{"inspect", app + ":nope"}, "not found")
		c.fails(t, 1, []string{"ls", "s3://" + bucket + "/pfx/team/nope"}, "not found")
		c.fails(t, 1, []string{"ls", "s3://" + bucket}, "no registry layout")
		c.fails(t, 1, []string{"ls", "--prefix", "", "s3://" + bucket}, "no registry layout")
		c.fails(t, 1, []string{"ls", "s3://no-such-bucket-s3snap-cli"}, "not found")
		c.fails(t, 1, []string{"push", filepath.Join(tmp, "missing"), app + ":v2"}, "not an OCI image layout")
		c.fails(t, 1, []string{"push", "--ref", "nope", appDir, app + ":v2"}, "no manifest named")
		if _, errOut, _ := c.run(t, "--log-level", "debug", "ls", app); strings.Contains(errOut, e.SecretKey) {
			t.Errorf("debug log shows the secret key:\n%s", errOut)
		}
	})

	t.Run("version", func(t *testing.T) {
		v := decodeJSON[map[string]string](t, "version -o json", c.ok(t, "version", "-o", "json"))
		if v["version"] != "v0.0.0-clitest" || !strings.HasPrefix(v["go"], "go") {
			t.Errorf("version -o json = %v", v)
		}
	})

	t.Run("stock registry serves the bucket", func(t *testing.T) {
		r := testenv.StartS3Registry(t, e, bucket, "pfx")
		for ref, want := range map[string]string{r.Addr + "/team/app:v1": appManifest, r.Addr + "/team/multi:v1": multiManifest} {
			if got := craneOut("manifest", ref); got != want {
				t.Errorf("registry serves another manifest for %s", ref)
			}
		}
		testenv.Run(t, crane, "validate", "--remote", r.Addr+"/team/app:v1")
		testenv.Run(t, crane, "pull", "--format", "oci", r.Addr+"/team/multi:v1", filepath.Join(t.TempDir(), "back"))
	})
}
