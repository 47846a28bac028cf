package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/store"
)

func hostPlatform() ocispec.Platform {
	return ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH}
}

func otherPlatform() ocispec.Platform {
	if runtime.GOARCH == "arm64" {
		return ocispec.Platform{OS: "linux", Architecture: "amd64"}
	}
	return ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
}

// TestStoreServedByStockRegistry is the proof the layout is right: images
// written with store are served by a stock Distribution registry whose s3
// driver points at the same bucket and prefix, with identical digests and
// bytes, and containerd pulls them from it.
func TestStoreServedByStockRegistry(t *testing.T) {
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	const prefix = "mirror/prod"
	st := store.New(e.Client(t), bucket, store.WithPrefix(prefix))
	ctx := context.Background()

	base := []testenv.File{{Name: "etc/base.txt", Data: []byte("shared base layer\n")}}
	single := testenv.NewImage(t, hostPlatform(), base, []testenv.File{{Name: "app/hello.txt", Data: []byte("hello from s3\n")}})
	amd := testenv.NewImage(t, hostPlatform(), base, []testenv.File{{Name: "arch", Data: []byte(runtime.GOARCH)}})
	arm := testenv.NewImage(t, otherPlatform(), base, []testenv.File{{Name: "arch", Data: []byte("other")}})
	index := testenv.NewIndex(t, amd, arm)

	testenv.PutImage(t, st, "team/app/api", single)
	if err := st.Tag(ctx, "team/app/api", "v1", single.Digest); err != nil {
		t.Fatal(err)
	}
	testenv.PutImage(t, st, "multi", amd)
	testenv.PutImage(t, st, "multi", arm)
	indexDigest, err := st.PutManifest(ctx, "multi", index)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Tag(ctx, "multi", "latest", indexDigest); err != nil {
		t.Fatal(err)
	}

	reg := testenv.StartS3Registry(t, e, bucket, prefix)
	crane := testenv.Bin(t, "crane")
	for _, tc := range []struct {
		ref    string
		digest digest.Digest
		raw    []byte
	}{
		{reg.Addr + "/team/app/api:v1", single.Digest, single.Manifest},
		{reg.Addr + "/team/app/api@" + single.Digest.String(), single.Digest, single.Manifest},
		{reg.Addr + "/multi:latest", indexDigest, index},
		{reg.Addr + "/multi@" + arm.Digest.String(), arm.Digest, arm.Manifest},
	} {
		t.Run("crane "+strings.TrimPrefix(tc.ref, reg.Addr+"/"), func(t *testing.T) {
			got := strings.TrimSpace(testenv.Run(t, crane, "digest", "--insecure", tc.ref))
			if got != tc.digest.String() {
				t.Errorf("crane digest = %s, want %s", got, tc.digest)
			}
			raw := testenv.Run(t, crane, "manifest", "--insecure", tc.ref)
			if raw != string(tc.raw) {
				t.Errorf("crane manifest differs from what was stored:\n got %s\nwant %s", raw, tc.raw)
			}
		})
	}
	// Every blob is served with its bytes intact.
	for d, want := range single.Blobs() {
		got := testenv.Run(t, crane, "blob", "--insecure", reg.Addr+"/team/app/api@"+d.String())
		if got != string(want) {
			t.Errorf("blob %s: registry served %d bytes, want %d", d, len(got), len(want))
		}
	}
	if got := testenv.Run(t, crane, "catalog", "--insecure", reg.Addr); got != "multi\nteam/app/api\n" {
		t.Errorf("crane catalog = %q", got)
	}
	if got := testenv.Run(t, crane, "ls", "--insecure", reg.Addr+"/team/app/api"); got != "v1\n" {
		t.Errorf("crane ls = %q", got)
	}

	// The shared base layer is stored once in the bucket.
	baseDigest := digest.FromBytes(single.Layers[0])
	if digest.FromBytes(amd.Layers[0]) != baseDigest {
		t.Fatal("test images should share their base layer")
	}
	keys := testenv.Keys(t, e.Client(t), bucket, prefix+"/docker/registry/v2/blobs/")
	n := 0
	for _, k := range keys {
		if strings.Contains(k, baseDigest.Encoded()) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("base layer stored %d times, want once", n)
	}

	t.Run("containerd pulls", func(t *testing.T) {
		c := testenv.StartContainerd(t, testenv.ContainerdOptions{})
		out := c.Ctr(t, "images", "pull", "--plain-http", reg.Addr+"/team/app/api:v1")
		t.Log(out)
		ls := c.Ctr(t, "images", "ls")
		if !strings.Contains(ls, single.Digest.String()) {
			t.Errorf("ctr images ls does not show %s:\n%s", single.Digest, ls)
		}
		c.Ctr(t, "images", "pull", "--plain-http", "--platform", "linux/"+runtime.GOARCH, reg.Addr+"/multi:latest")

		// And a container from an image in the bucket runs.
		run := testenv.RunnableImage(t)
		testenv.PutImage(t, st, "team/run", run)
		if err := st.Tag(ctx, "team/run", "v1", run.Digest); err != nil {
			t.Fatal(err)
		}
		c.Ctr(t, "images", "pull", "--plain-http", reg.Addr+"/team/run:v1")
		out = c.Ctr(t, "run", "--rm", reg.Addr+"/team/run:v1", "run-"+c.Namespace)
		if !strings.Contains(out, "hello from s3snap") {
			t.Errorf("container printed %q", out)
		}
		if ls := c.Ctr(t, "images", "ls"); !strings.Contains(ls, indexDigest.String()) {
			t.Errorf("ctr images ls does not show the index %s:\n%s", indexDigest, ls)
		}
	})

	t.Run("delete tag", func(t *testing.T) {
		if err := st.DeleteTag(ctx, "team/app/api", "v1"); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Resolve(ctx, "team/app/api", "v1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Resolve after DeleteTag: %v, want ErrNotFound", err)
		}
		if out, err := testenv.RunErr(ctx, crane, "digest", "--insecure", reg.Addr+"/team/app/api:v1"); err == nil {
			t.Errorf("registry still serves the deleted tag: %s", out)
		}
		// The manifest itself stays, by digest.
		testenv.Run(t, crane, "digest", "--insecure", reg.Addr+"/team/app/api@"+single.Digest.String())
		if tags, err := st.ListTags(ctx, "team/app/api"); err != nil || len(tags) != 0 {
			t.Errorf("ListTags after DeleteTag = %v, %v; want none", tags, err)
		}
		if err := st.DeleteTag(ctx, "team/app/api", "v1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("second DeleteTag = %v, want ErrNotFound", err)
		}
	})
}

// TestStoreLocate finds where the prefix ends and the repository begins, and
// tells a missing bucket from a missing key.
func TestStoreLocate(t *testing.T) {
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	client := e.Client(t)
	ctx := context.Background()
	im := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "f", Data: []byte("x")}})
	// Two roots: one at the bucket's top holding "other", one under "a/b" holding "app".
	top := store.New(client, bucket)
	testenv.PutImage(t, top, "other", im)
	nested := store.New(client, bucket, store.WithPrefix("a/b"))
	testenv.PutImage(t, nested, "app", im)

	for _, tc := range []struct {
		url, prefix, repo string
	}{
		{"s3://" + bucket, "", ""},
		{"s3://" + bucket + "/other", "", "other"},
		{"s3://" + bucket + "/a/b/app:v1", "a/b", "app"},
		{"s3://" + bucket + "/a/b", "", "a/b"}, // no repository a/b anywhere: the shortest root
	} {
		u, err := store.ParseURL(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		prefix, repo, err := store.Locate(ctx, client, u)
		if err != nil || prefix != tc.prefix || repo != tc.repo {
			t.Errorf("Locate(%s) = %q, %q, %v; want %q, %q", tc.url, prefix, repo, err, tc.prefix, tc.repo)
		}
	}
	u, _ := store.ParseURL("s3://" + bucket + "-missing/app")
	if _, _, err := store.Locate(ctx, client, u); !errors.Is(err, store.ErrNoSuchBucket) {
		t.Errorf("Locate in a missing bucket = %v, want ErrNoSuchBucket", err)
	}
	missing := store.New(client, bucket+"-missing")
	// A HEAD's 404 can't tell a missing bucket from a missing key; the write can.
	if _, err := missing.PutBlob(ctx, digest.FromString("x"), 1, strings.NewReader("x")); !errors.Is(err, store.ErrNoSuchBucket) {
		t.Errorf("PutBlob into a missing bucket = %v, want ErrNoSuchBucket", err)
	}
	if _, err := missing.ListRepositories(ctx); !errors.Is(err, store.ErrNoSuchBucket) {
		t.Errorf("ListRepositories of a missing bucket = %v, want ErrNoSuchBucket", err)
	}
	if _, err := top.StatBlob(ctx, digest.FromString("absent")); !errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrNoSuchBucket) {
		t.Errorf("StatBlob of an absent blob = %v, want ErrNotFound only", err)
	}
}

// TestStoreReadsWhatRegistryWrote is the other direction: an image pushed
// through a stock registry into the bucket is read by store, link bodies and
// all.
func TestStoreReadsWhatRegistryWrote(t *testing.T) {
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	reg := testenv.StartS3Registry(t, e, bucket, "")
	crane := testenv.Bin(t, "crane")
	ctx := context.Background()

	layer, _ := testenv.LayerTar(t, []testenv.File{{Name: "hello", Data: []byte("hi")}})
	dir := t.TempDir()
	writeFile(t, dir+"/layer.tar.gz", layer)
	testenv.Run(t, crane, "append", "--insecure", "--oci-empty-base", "-f", dir+"/layer.tar.gz", "-t", reg.Addr+"/team/web:v2")
	want := strings.TrimSpace(testenv.Run(t, crane, "digest", "--insecure", reg.Addr+"/team/web:v2"))

	st := store.New(e.Client(t), bucket)
	repos, err := st.ListRepositories(ctx)
	if err != nil || len(repos) != 1 || repos[0] != "team/web" {
		t.Fatalf("ListRepositories = %v, %v; want [team/web]", repos, err)
	}
	tags, err := st.ListTags(ctx, "team/web")
	if err != nil || len(tags) != 1 || tags[0] != "v2" {
		t.Fatalf("ListTags = %v, %v", tags, err)
	}
	d, err := st.Resolve(ctx, "team/web", "v2")
	if err != nil || d.String() != want {
		t.Fatalf("Resolve = %s, %v; want %s", d, err, want)
	}
	m, err := st.GetManifest(ctx, "team/web", d)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range m.Blobs() {
		rc, _, err := st.OpenBlob(ctx, b.Digest)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || digest.FromBytes(got) != b.Digest {
			t.Errorf("blob %s: read %d bytes, err %v", b.Digest, len(got), err)
		}
	}
	// Distribution's link bodies are the bare digest: the same bytes store writes.
	link := readObject(t, e, bucket, "docker/registry/v2/repositories/team/web/_manifests/tags/v2/current/link")
	if string(link) != want || len(link) != 71 {
		t.Errorf("registry's current link = %q (%d bytes)", link, len(link))
	}
	// And a tag the store adds to that repo is served by the registry.
	if err := st.Tag(ctx, "team/web", "stable", d); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(testenv.Run(t, crane, "digest", "--insecure", reg.Addr+"/team/web:stable")); got != want {
		t.Errorf("registry serves stable as %s, want %s", got, want)
	}
}

// TestStoreRejectsBadContent: a blob whose bytes don't match its digest or
// size leaves nothing behind, small or multipart, and a manifest or tag
// whose references are missing is refused.
func TestStoreRejectsBadContent(t *testing.T) {
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	client := e.Client(t)
	st := store.New(client, bucket, store.WithUpload(5<<20, 2))
	ctx := context.Background()

	big := make([]byte, 12<<20+3) // three parts at 5 MiB
	_, _ = rand.Read(big)
	for _, tc := range []struct {
		name string
		data []byte
		d    digest.Digest
		size int64
		want error
	}{
		{"small wrong digest", []byte("hello"), digest.FromString("other"), 5, store.ErrDigestMismatch},
		{"small short", []byte("hell"), digest.FromString("hello"), 5, store.ErrSizeMismatch},
		{"small long", []byte("hello!"), digest.FromString("hello"), 5, store.ErrSizeMismatch},
		{"multipart wrong digest", big, digest.FromString("other"), int64(len(big)), store.ErrDigestMismatch},
		{"multipart truncated", big[:len(big)-1], digest.FromBytes(big), int64(len(big)), store.ErrSizeMismatch},
		{"multipart unknown size wrong digest", big, digest.FromString("other"), -1, store.ErrDigestMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := st.PutBlob(ctx, tc.d, tc.size, bytes.NewReader(tc.data))
			if !errors.Is(err, tc.want) {
				t.Fatalf("PutBlob err = %v, want %v", err, tc.want)
			}
			if ok, _ := st.HasBlob(ctx, tc.d); ok {
				t.Errorf("blob %s exists after a failed put", tc.d)
			}
			if keys := testenv.Keys(t, client, bucket, ""); len(keys) != 0 {
				t.Errorf("objects left behind: %v", keys)
			}
			if ups := testenv.MultipartUploads(t, client, bucket); len(ups) != 0 {
				t.Errorf("%d multipart uploads left behind", len(ups))
			}
		})
	}

	t.Run("multipart good", func(t *testing.T) {
		d := digest.FromBytes(big)
		existed, err := st.PutBlob(ctx, d, int64(len(big)), bytes.NewReader(big))
		if err != nil || existed {
			t.Fatalf("PutBlob = %v, %v", existed, err)
		}
		existed, err = st.PutBlob(ctx, d, int64(len(big)), bytes.NewReader(nil))
		if err != nil || !existed {
			t.Fatalf("second PutBlob = %v, %v; want existed", existed, err)
		}
		rc, info, err := st.OpenBlob(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, big) || info.Size != int64(len(big)) {
			t.Fatalf("read back %d bytes (err %v), want %d", len(got), err, len(big))
		}
	})

	im := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "f", Data: []byte("x")}})
	t.Run("manifest with missing blobs", func(t *testing.T) {
		if _, err := st.PutManifest(ctx, "app", im.Manifest); !errors.Is(err, store.ErrMissingReference) {
			t.Fatalf("PutManifest err = %v, want ErrMissingReference", err)
		}
		if _, err := st.GetManifest(ctx, "app", im.Digest); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetManifest after refused put: %v, want ErrNotFound", err)
		}
	})
	t.Run("index with missing child", func(t *testing.T) {
		if _, err := st.PutManifest(ctx, "app", testenv.NewIndex(t, im)); !errors.Is(err, store.ErrMissingReference) {
			t.Fatalf("PutManifest(index) err = %v, want ErrMissingReference", err)
		}
	})
	t.Run("manifest whose blob has another size", func(t *testing.T) {
		for d, b := range im.Blobs() {
			if _, err := st.PutBlob(ctx, d, int64(len(b)), bytes.NewReader(b)); err != nil {
				t.Fatal(err)
			}
		}
		var m map[string]any
		if err := json.Unmarshal(im.Manifest, &m); err != nil {
			t.Fatal(err)
		}
		m["layers"].([]any)[0].(map[string]any)["size"] = 999
		bad, _ := json.Marshal(m)
		if _, err := st.PutManifest(ctx, "app", bad); !errors.Is(err, store.ErrSizeMismatch) {
			t.Fatalf("PutManifest err = %v, want ErrSizeMismatch", err)
		}
	})
	t.Run("tag of a missing manifest", func(t *testing.T) {
		if err := st.Tag(ctx, "app", "v1", im.Digest); !errors.Is(err, store.ErrMissingReference) {
			t.Fatalf("Tag err = %v, want ErrMissingReference", err)
		}
		if _, err := st.Resolve(ctx, "app", "v1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("a refused tag resolves: %v", err)
		}
	})
	t.Run("tag after a layer vanished", func(t *testing.T) {
		testenv.PutImage(t, st, "app", im)
		layer := digest.FromBytes(im.Layers[0])
		info, err := st.StatBlob(ctx, layer)
		if err != nil {
			t.Fatal(err)
		}
		deleteObject(t, e, bucket, info.Key)
		if err := st.Tag(ctx, "app", "v1", im.Digest); !errors.Is(err, store.ErrMissingReference) {
			t.Fatalf("Tag err = %v, want ErrMissingReference", err)
		}
	})
	t.Run("malformed names", func(t *testing.T) {
		if err := st.Tag(ctx, "App", "v1", im.Digest); !errors.Is(err, store.ErrInvalidName) {
			t.Errorf("Tag(App) = %v", err)
		}
		if _, err := st.Resolve(ctx, "app", "-bad"); !errors.Is(err, store.ErrInvalidName) {
			t.Errorf("Resolve(-bad) = %v", err)
		}
		if _, err := st.StatBlob(ctx, "sha256:1234"); !errors.Is(err, store.ErrInvalidName) {
			t.Errorf("StatBlob(short digest) = %v", err)
		}
	})
}
