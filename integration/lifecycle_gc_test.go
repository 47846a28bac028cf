package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/integration/faultproxy"
	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/lifecycle"
	"github.com/s3snap/s3snap/store"
)

// gcFixture is a store holding what gc must keep and what it must sweep.
type gcFixture struct {
	st                 *store.Store
	keep, gone, other  *testenv.Image
	untagged           *testenv.Image
	amd, arm           *testenv.Image
	index              digest.Digest
	orphan             digest.Digest
	keptTags           map[string]digest.Digest // repo:tag -> digest
	lazyKept, lazyGone string
	uploadKey          string
}

func layerFiles(name string) []testenv.File {
	return []testenv.File{{Name: name, Data: []byte("content of " + name + "\n")}}
}

// newGCFixture fills st: team/app:v1 (keep; v1 once pointed at gone, whose
// tag "old" was removed), gone sharing keep's base layer, an untagged
// manifest, other:v1, multi:latest (an index), an orphan blob, lazy
// indexes of a kept and a swept layer, and an incomplete multipart upload.
func newGCFixture(t *testing.T, e *testenv.S3Env, st *store.Store) *gcFixture {
	t.Helper()
	ctx := context.Background()
	base := layerFiles("base")
	f := &gcFixture{st: st, keptTags: map[string]digest.Digest{}}
	f.keep = testenv.NewImage(t, hostPlatform(), base, layerFiles("keep"))
	f.gone = testenv.NewImage(t, hostPlatform(), base, layerFiles("gone"))
	f.untagged = testenv.NewImage(t, hostPlatform(), layerFiles("untagged"))
	f.other = testenv.NewImage(t, hostPlatform(), layerFiles("other"))
	f.amd = testenv.NewImage(t, hostPlatform(), base, layerFiles("amd"))
	f.arm = testenv.NewImage(t, otherPlatform(), layerFiles("arm"))
	tag := func(repo, tag string, d digest.Digest) {
		t.Helper()
		if err := st.Tag(ctx, repo, tag, d); err != nil {
			t.Fatal(err)
		}
	}
	for _, im := range []*testenv.Image{f.keep, f.gone, f.untagged} {
		testenv.PutImage(t, st, "team/app", im)
	}
	tag("team/app", "v1", f.gone.Digest)
	tag("team/app", "v1", f.keep.Digest)
	tag("team/app", "old", f.gone.Digest)
	if _, err := lifecycle.RemoveTag(ctx, st, "team/app", "old", false); err != nil {
		t.Fatal(err)
	}
	testenv.PutImage(t, st, "other", f.other)
	tag("other", "v1", f.other.Digest)
	testenv.PutImage(t, st, "multi", f.amd)
	testenv.PutImage(t, st, "multi", f.arm)
	idx, err := st.PutManifest(ctx, "multi", testenv.NewIndex(t, f.amd, f.arm))
	if err != nil {
		t.Fatal(err)
	}
	f.index = idx
	tag("multi", "latest", idx)
	f.keptTags = map[string]digest.Digest{"team/app:v1": f.keep.Digest, "other:v1": f.other.Digest, "multi:latest": idx}

	orphan := []byte("a blob nothing references")
	f.orphan = digest.FromBytes(orphan)
	if _, err := st.PutBlob(ctx, f.orphan, int64(len(orphan)), bytes.NewReader(orphan)); err != nil {
		t.Fatal(err)
	}
	f.lazyKept = lazy.Key(digest.FromBytes(f.keep.Layers[1]), "toc")
	f.lazyGone = lazy.Key(digest.FromBytes(f.gone.Layers[1]), "toc")
	for _, k := range []string{f.lazyKept, f.lazyGone} {
		if err := st.PutExtra(ctx, k, strings.NewReader("{}")); err != nil {
			t.Fatal(err)
		}
	}
	// A push that died part way: one part uploaded, never completed.
	f.uploadKey = st.RegistryRoot() + "blobs/sha256/ab/" + strings.Repeat("ab", 32) + "/data"
	c := e.Client(t)
	bucket := st.Bucket()
	up, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &bucket, Key: &f.uploadKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.UploadPart(ctx, &s3.UploadPartInput{Bucket: &bucket, Key: &f.uploadKey, UploadId: up.UploadId,
		PartNumber: aws.Int32(1), Body: bytes.NewReader(make([]byte, 1024))}); err != nil {
		t.Fatal(err)
	}
	return f
}

// garbageBlobs is what gc must delete: gone's and untagged's manifests,
// configs and own layers, and the orphan.
func (f *gcFixture) garbageBlobs() []digest.Digest {
	out := []digest.Digest{f.orphan}
	for _, im := range []*testenv.Image{f.gone, f.untagged} {
		out = append(out, im.Digest, digest.FromBytes(im.Config), digest.FromBytes(im.Layers[len(im.Layers)-1]))
	}
	return out
}

func (f *gcFixture) keptBlobs() []digest.Digest {
	out := []digest.Digest{f.index}
	for _, im := range []*testenv.Image{f.keep, f.other, f.amd, f.arm} {
		out = append(out, im.Digest)
		for d := range im.Blobs() {
			out = append(out, d)
		}
	}
	return out
}

// wantSwept is what a gc without grace sweeps from the fixture.
func (f *gcFixture) checkSwept(t *testing.T, sw lifecycle.Swept) {
	t.Helper()
	var bytes int64
	for _, d := range f.garbageBlobs() {
		info, err := f.st.StatBlob(context.Background(), d)
		if err == nil {
			bytes += info.Size
		}
	}
	want := map[string][2]int64{
		"blobs":          {int64(len(f.garbageBlobs())), -1},
		"revision links": {2, -1}, // gone, untagged
		"tag links":      {1, -1}, // v1's history entry for gone
		"layer links":    {4, -1}, // configs and own layers of gone and untagged
		"lazy indexes":   {1, 2},
		"uploads":        {1, 0},
	}
	got := map[string]lifecycle.Count{"blobs": sw.Blobs, "revision links": sw.RevisionLinks, "tag links": sw.TagLinks,
		"layer links": sw.LayerLinks, "lazy indexes": sw.LazyIndexes, "uploads": sw.Uploads}
	for k, w := range want {
		if got[k].Objects != w[0] || (w[1] >= 0 && got[k].Bytes != w[1]) {
			t.Errorf("swept %s = %+v, want %d objects (bytes %d; -1: any)", k, got[k], w[0], w[1])
		}
	}
	if bytes > 0 && sw.Blobs.Bytes != bytes {
		t.Errorf("swept blob bytes %d, want %d", sw.Blobs.Bytes, bytes)
	}
}

func gcCLI(t *testing.T, e *testenv.S3Env) *cliRunner {
	tmp := t.TempDir()
	return &cliRunner{
		bin:      sharedCLI(t),
		endpoint: e.Endpoint,
		env: []string{
			"AWS_ACCESS_KEY_ID=" + e.AccessKey, "AWS_SECRET_ACCESS_KEY=" + e.SecretKey, "AWS_REGION=" + e.Region,
			"AWS_CONFIG_FILE=" + filepath.Join(tmp, "none"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(tmp, "none"),
		},
	}
}

// TestLifecycleGC: gc keeps everything while the grace period protects it,
// a dry run reports exactly what a real run then deletes, the real run
// leaves every tag complete, a second run finds nothing, and a stock
// registry over the bucket serves every kept tag and its own
// garbage-collect finds nothing more to delete.
func TestLifecycleGC(t *testing.T) {
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	st := store.New(e.Client(t), bucket, store.WithPrefix("pfx"))
	ctx := context.Background()
	f := newGCFixture(t, e, st)
	before := bucketKeys(t, st)

	t.Run("default grace keeps what was just written", func(t *testing.T) {
		rep, err := lifecycle.GC(ctx, st)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Swept != (lifecycle.Swept{}) || rep.BytesFreed != 0 {
			t.Errorf("swept %+v within the grace period", rep.Swept)
		}
		// gone and untagged are young untagged manifests: kept, with all
		// they reach; the orphan and the upload are young, unreferenced.
		if rep.Protected.Objects != 2 || rep.UntaggedKept != 2 {
			t.Errorf("protected %+v, untagged kept %d; want the orphan and the upload, 2 untagged manifests", rep.Protected, rep.UntaggedKept)
		}
		if !slices.Equal(bucketKeys(t, st), before) {
			t.Error("the bucket changed")
		}
	})

	c := gcCLI(t, e)
	t.Run("dry run", func(t *testing.T) {
		rep := decodeJSON[lifecycle.GCReport](t, "gc --dry-run -o json", c.ok(t, "gc", "--dry-run", "--grace", "0", "-o", "json", "s3://"+bucket+"/pfx"))
		f.checkSwept(t, rep.Swept)
		if !rep.DryRun || rep.Requests == 0 || rep.Tags != 3 || rep.Repositories != 3 || rep.Manifests != 5 {
			t.Errorf("report %+v; want dry run, requests counted, 3 tags, 3 repositories, 5 manifests", rep)
		}
		if rep.BytesFreed == 0 || rep.MonthlySavingUSD != lifecycle.MonthlyCost(rep.BytesFreed) {
			t.Errorf("freed %d, saving %v", rep.BytesFreed, rep.MonthlySavingUSD)
		}
		if !slices.Equal(bucketKeys(t, st), before) {
			t.Error("dry run changed the bucket")
		}
		text := c.ok(t, "gc", "--dry-run", "--grace", "0", "s3://"+bucket+"/pfx")
		for _, want := range []string{"would delete blob", f.orphan.Encoded(), "$0.0000 a month at $0.023/GB-month", "S3 requests"} {
			if !strings.Contains(text, want) {
				t.Errorf("dry run text lacks %q:\n%s", want, text)
			}
		}
		c.fails(t, 2, []string{"gc", "s3://" + bucket + "/pfx/team/app:v1"}, "not an image")
		c.fails(t, 2, []string{"gc", "s3://" + bucket + "/pfx/team/app"}, "whole store")
	})

	t.Run("sweep", func(t *testing.T) {
		rep, err := lifecycle.GC(ctx, st, lifecycle.WithGrace(0))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("gc:\n%s", rep)
		f.checkSwept(t, rep.Swept)
		for ref, d := range f.keptTags {
			repo, tag, _ := strings.Cut(ref, ":")
			if got, err := st.Resolve(ctx, repo, tag); err != nil || got != d {
				t.Errorf("%s = %s, %v", ref, got, err)
			}
			if err := st.CheckComplete(ctx, repo, d); err != nil {
				t.Errorf("%s incomplete after gc: %v", ref, err)
			}
		}
		for _, d := range f.garbageBlobs() {
			if ok, err := st.HasBlob(ctx, d); err != nil || ok {
				t.Errorf("garbage blob %s still there (%v)", d, err)
			}
		}
		for _, d := range f.keptBlobs() {
			if ok, err := st.HasBlob(ctx, d); err != nil || !ok {
				t.Errorf("kept blob %s gone (%v)", d, err)
			}
		}
		if _, err := st.StatExtra(ctx, f.lazyKept); err != nil {
			t.Errorf("lazy index of a kept layer: %v", err)
		}
		if _, err := st.StatExtra(ctx, f.lazyGone); err == nil {
			t.Errorf("lazy index of a swept layer still there")
		}
		n := 0
		if err := st.ListUploads(ctx, st.RegistryRoot(), func(store.Upload) error { n++; return nil }); err != nil || n != 0 {
			t.Errorf("%d uploads left (%v)", n, err)
		}
		again, err := lifecycle.GC(ctx, st, lifecycle.WithGrace(0))
		if err != nil {
			t.Fatal(err)
		}
		if again.Swept != (lifecycle.Swept{}) {
			t.Errorf("second gc swept %+v", again.Swept)
		}
	})

	t.Run("stock registry", func(t *testing.T) {
		reg := testenv.StartS3Registry(t, e, bucket, "pfx")
		crane := testenv.Bin(t, "crane")
		for ref, d := range f.keptTags {
			if got := strings.TrimSpace(testenv.Run(t, crane, "digest", "--insecure", reg.Addr+"/"+ref)); got != d.String() {
				t.Errorf("registry: %s = %s, want %s", ref, got, d)
			}
		}
		testenv.Run(t, crane, "pull", "--insecure", "--format", "oci", reg.Addr+"/multi:latest", filepath.Join(t.TempDir(), "multi"))
		testenv.Run(t, crane, "validate", "--remote", reg.Addr+"/team/app:v1")
		for _, flags := range [][]string{{"--dry-run"}, {"--dry-run", "--delete-untagged"}} {
			out := registryGC(t, e, bucket, "pfx", flags...)
			m := regexp.MustCompile(`(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible for deletion`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("registry garbage-collect %v: no summary line:\n%s", flags, out)
			}
			if m[2] != "0" || m[3] != "0" {
				t.Errorf("registry garbage-collect %v finds more to delete after gc: %s", flags, m[0])
			}
			t.Logf("registry garbage-collect %v: %s", flags, m[0])
		}
	})
}

// registryGC runs a stock registry's garbage-collect over bucket/prefix.
func registryGC(t *testing.T, e *testenv.S3Env, bucket, prefix string, flags ...string) string {
	t.Helper()
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  s3:
    accesskey: %s
    secretkey: %s
    region: %s
    regionendpoint: %s
    forcepathstyle: true
    bucket: %s
    rootdirectory: %q
  delete:
    enabled: true
`, e.AccessKey, e.SecretKey, e.Region, e.Endpoint, bucket, "/"+prefix)
	path := filepath.Join(t.TempDir(), "registry-gc.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return testenv.Run(t, testenv.Bin(t, "registry"), append([]string{"garbage-collect"}, append(flags, path)...)...)
}

// TestLifecycleGCGrace: with a grace period, what was written before it is
// swept and what was written within it stays.
func TestLifecycleGCGrace(t *testing.T) {
	e := testenv.S3(t)
	st := store.New(e.Client(t), e.NewBucket(t))
	ctx := context.Background()
	put := func(name string) digest.Digest {
		b := []byte("unreferenced " + name)
		d := digest.FromBytes(b)
		if _, err := st.PutBlob(ctx, d, int64(len(b)), bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	keep := testenv.NewImage(t, hostPlatform(), layerFiles("kept"))
	testenv.PutImage(t, st, "app", keep)
	if err := st.Tag(ctx, "app", "v1", keep.Digest); err != nil {
		t.Fatal(err)
	}
	oldUntagged := testenv.NewImage(t, hostPlatform(), layerFiles("old untagged"))
	testenv.PutImage(t, st, "app", oldUntagged)
	old := put("old")
	const grace = 2 * time.Second
	time.Sleep(grace + 500*time.Millisecond)
	young := put("young")
	youngUntagged := testenv.NewImage(t, hostPlatform(), layerFiles("young untagged"))
	testenv.PutImage(t, st, "app", youngUntagged)

	rep, err := lifecycle.GC(ctx, st, lifecycle.WithGrace(grace))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gc:\n%s", rep)
	has := func(d digest.Digest) bool {
		ok, err := st.HasBlob(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if has(old) || has(oldUntagged.Digest) || has(digest.FromBytes(oldUntagged.Layers[0])) {
		t.Error("what was written before the grace period is still there")
	}
	if !has(young) || !has(youngUntagged.Digest) || !has(digest.FromBytes(youngUntagged.Layers[0])) {
		t.Error("what was written within the grace period is gone")
	}
	if _, err := st.GetManifest(ctx, "app", youngUntagged.Digest); err != nil {
		t.Errorf("young untagged manifest: %v", err)
	}
	if err := st.CheckComplete(ctx, "app", keep.Digest); err != nil {
		t.Error(err)
	}
	if rep.Swept.Blobs.Objects != 4 || rep.Swept.RevisionLinks.Objects != 1 || rep.Protected.Objects != 1 || rep.UntaggedKept != 1 {
		t.Errorf("report %+v; want 4 blobs (old, and the old image's manifest, config, layer) and 1 revision link swept, 1 blob protected, 1 untagged kept", rep)
	}
}

// TestLifecycleGCDuringMigration: gc runs again and again, with the default
// grace period, while a migration writes into the same bucket; nothing the
// migration writes is lost (verify passes), and a last gc once it is done
// sweeps only what was garbage before it started.
func TestLifecycleGCDuringMigration(t *testing.T) {
	e := testenv.S3(t)
	f := newPlanFixture(t)
	cli := newMigrateCLI(t, e)
	bucket := e.NewBucket(t)
	st := store.New(e.Client(t), bucket)
	ctx := context.Background()
	kept := testenv.NewImage(t, hostPlatform(), layerFiles("already here"))
	testenv.PutImage(t, st, "kept", kept)
	if err := st.Tag(ctx, "kept", "v1", kept.Digest); err != nil {
		t.Fatal(err)
	}
	orphan := []byte("garbage from before the migration")
	if _, err := st.PutBlob(ctx, digest.FromBytes(orphan), int64(len(orphan)), bytes.NewReader(orphan)); err != nil {
		t.Fatal(err)
	}

	src, dst := "docker://"+f.src.Addr+"/app", "s3://"+bucket
	// Slow enough (about 4 s) for several gc runs to land mid-image.
	cmd := cli.command("migrate", "--max-bandwidth=1MiB/s", "--jobs=2", src, dst)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	runs := 0
	var merr error
loop:
	for {
		select {
		case merr = <-done:
			break loop
		default:
		}
		rep, err := lifecycle.GC(ctx, st)
		if err != nil {
			t.Fatalf("gc during the migration: %v", err)
		}
		if rep.Swept != (lifecycle.Swept{}) {
			t.Errorf("gc with the default grace swept %+v during the migration", rep.Swept)
		}
		runs++
	}
	if merr != nil {
		t.Fatalf("migration: %v\n%s", merr, out.String())
	}
	if runs < 3 {
		t.Errorf("only %d gc runs during the migration: not interleaved", runs)
	}
	t.Logf("%d gc runs during the migration", runs)
	if _, _, code := cli.run(t, "verify", src, dst); code != 0 {
		t.Fatalf("verify after gc during the migration: exit %d", code)
	}
	rep, err := lifecycle.GC(ctx, st, lifecycle.WithGrace(0))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Swept.Blobs.Objects != 1 || rep.Swept.Blobs.Bytes != int64(len(orphan)) || rep.Tags != 4 {
		t.Errorf("final gc: %+v; want only the orphan swept, 4 tags kept", rep)
	}
	if _, _, code := cli.run(t, "verify", "--deep", src, dst); code != 0 {
		t.Errorf("verify --deep after the final gc: exit %d", code)
	}
	if err := st.CheckComplete(ctx, "kept", kept.Digest); err != nil {
		t.Error(err)
	}
}

// TestLifecycleGCUnderPull: a node is pulling an image from the bucket when
// its tag is removed and gc (no grace) deletes its blobs, at the first
// ranged read of a layer. The agent falls back to the registry for what is
// gone: the pull succeeds and the container sees the right bytes.
func TestLifecycleGCUnderPull(t *testing.T) {
	p := newPullEnv(t, false)
	ctx := context.Background()
	files := map[string][]byte{"/data/a": pseudoRandom(31, 3<<20), "/data/b": pseudoRandom(32, 1<<20)}
	im := testenv.RunnableImage(t,
		[]testenv.File{{Name: "data/a", Data: files["/data/a"]}},
		[]testenv.File{{Name: "data/b", Data: files["/data/b"]}},
	)
	ref := p.add(t, "gc/app", im, true)
	var rep *lifecycle.GCReport
	h := p.proxy.Add(faultproxy.Rule{
		Method: http.MethodGet,
		Match: func(r *http.Request) bool {
			return r.Header.Get("Range") != "" && strings.Contains(r.URL.Path, "/blobs/")
		},
		Nth: 1,
		Hook: func(*http.Request) {
			if _, err := lifecycle.RemoveTag(ctx, p.st, "gc/app", "v1", false); err != nil {
				t.Error(err)
				return
			}
			var err error
			if rep, err = lifecycle.GC(ctx, p.st, lifecycle.WithGrace(0)); err != nil {
				t.Error(err)
			}
		},
	})
	p.pull(t, ref)
	if h.Fired() != 1 || rep == nil {
		t.Fatalf("gc did not run under the pull (rule fired %d times)", h.Fired())
	}
	t.Logf("gc under the pull:\n%s", rep)
	if rep.Swept.Blobs.Objects != int64(len(im.Layers))+2 {
		t.Errorf("gc swept %d blobs, want the image's %d layers, config and manifest", rep.Swept.Blobs.Objects, len(im.Layers))
	}
	fromRegistry := 0
	for _, l := range im.Layers {
		fromRegistry += registryRequests(t, p.reg, "/v2/gc/app/blobs/"+digest.FromBytes(l).String())
	}
	if fromRegistry == 0 {
		t.Error("no layer came from the registry: the pull did not see the deletion")
	}
	p.run(t, ref, "gc-under-pull", files)
}
