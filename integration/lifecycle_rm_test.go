package integration

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/lifecycle"
	"github.com/s3snap/s3snap/store"
)

// bucketKeys lists every key under the store's registry root, relative to it.
func bucketKeys(t *testing.T, st *store.Store) []string {
	t.Helper()
	var keys []string
	root := st.RegistryRoot()
	if err := st.Walk(context.Background(), root, func(o store.Object) error {
		keys = append(keys, strings.TrimPrefix(o.Key, root))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestLifecycleRemove removes tags and manifests through the API and the
// CLI: a removed tag stops resolving while the manifest stays, a removed
// manifest takes every tag pointing at it, blobs stay for gc, dry runs
// change nothing, and missing things or URLs without a tag are refused.
func TestLifecycleRemove(t *testing.T) {
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	st := store.New(e.Client(t), bucket, store.WithPrefix("pfx"))
	ctx := context.Background()
	const repo = "team/app"
	one := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "one", Data: []byte("one\n")}})
	two := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "two", Data: []byte("two\n")}})
	testenv.PutImage(t, st, repo, one)
	testenv.PutImage(t, st, repo, two)
	tag := func(tag string, d digest.Digest) {
		t.Helper()
		if err := st.Tag(ctx, repo, tag, d); err != nil {
			t.Fatal(err)
		}
	}
	// v1 and latest on one; v2 on two, after once pointing at one (its
	// history names one too).
	tag("v1", one.Digest)
	tag("latest", one.Digest)
	tag("v2", one.Digest)
	tag("v2", two.Digest)

	t.Run("tag", func(t *testing.T) {
		before := bucketKeys(t, st)
		dry, err := lifecycle.RemoveTag(ctx, st, repo, "v1", true)
		if err != nil {
			t.Fatal(err)
		}
		if got := bucketKeys(t, st); !slices.Equal(got, before) {
			t.Fatalf("dry run changed the bucket")
		}
		if dry.Digest != one.Digest || !slices.Equal(dry.Tags, []string{"v1"}) || len(dry.Keys) != 2 || !strings.HasSuffix(dry.Keys[0], "/tags/v1/current/link") {
			t.Errorf("dry run = %+v; want v1's current link first and its one index link", dry)
		}
		r, err := lifecycle.RemoveTag(ctx, st, repo, "v1", false)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(r.Keys, dry.Keys) {
			t.Errorf("removed %v, dry run said %v", r.Keys, dry.Keys)
		}
		if _, err := st.Resolve(ctx, repo, "v1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("v1 still resolves: %v", err)
		}
		if d, err := st.Resolve(ctx, repo, "latest"); err != nil || d != one.Digest {
			t.Errorf("latest = %s, %v; want %s", d, err, one.Digest)
		}
		if _, err := st.GetManifest(ctx, repo, one.Digest); err != nil {
			t.Errorf("manifest gone with its tag: %v", err)
		}
		if _, err := lifecycle.RemoveTag(ctx, st, repo, "v1", false); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("removing v1 again: %v, want ErrNotFound", err)
		}
	})

	t.Run("manifest", func(t *testing.T) {
		r, err := lifecycle.RemoveManifest(ctx, st, repo, one.Digest, false)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(r.Tags, []string{"latest"}) {
			t.Errorf("tags removed = %v, want [latest]", r.Tags)
		}
		if _, err := st.GetManifest(ctx, repo, one.Digest); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("manifest still there: %v", err)
		}
		if d, err := st.Resolve(ctx, repo, "v2"); err != nil || d != two.Digest {
			t.Errorf("v2 = %s, %v; want %s", d, err, two.Digest)
		}
		keys := bucketKeys(t, st)
		for _, k := range keys {
			if strings.Contains(k, "/tags/latest/") || strings.Contains(k, "/index/sha256/"+one.Digest.Encoded()) {
				t.Errorf("left behind: %s", k)
			}
		}
		for d := range one.Blobs() {
			if ok, err := st.HasBlob(ctx, d); err != nil || !ok {
				t.Errorf("blob %s gone before gc: %v", d, err)
			}
		}
		if _, err := lifecycle.RemoveManifest(ctx, st, repo, one.Digest, false); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("removing it again: %v, want ErrNotFound", err)
		}
	})

	t.Run("cli", func(t *testing.T) {
		tmp := t.TempDir()
		c := &cliRunner{
			bin:      buildCLI(t, tmp),
			endpoint: e.Endpoint,
			env: []string{
				"AWS_ACCESS_KEY_ID=" + e.AccessKey, "AWS_SECRET_ACCESS_KEY=" + e.SecretKey, "AWS_REGION=" + e.Region,
				"AWS_CONFIG_FILE=" + filepath.Join(tmp, "none"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(tmp, "none"),
			},
		}
		base := "s3://" + bucket + "/pfx/" + repo
		tag("v3", two.Digest)
		before := bucketKeys(t, st)
		dry := decodeJSON[lifecycle.Removal](t, "rm --dry-run -o json", c.ok(t, "rm", "--dry-run", "-o", "json", base+"@"+two.Digest.String()))
		if !slices.Equal(dry.Tags, []string{"v2", "v3"}) || dry.Digest != two.Digest {
			t.Errorf("dry run = %+v", dry)
		}
		if !slices.Equal(bucketKeys(t, st), before) {
			t.Fatal("dry run changed the bucket")
		}
		if out := c.ok(t, "rm", base+":v3"); !strings.Contains(out, "removed tag team/app:v3") {
			t.Errorf("rm output:\n%s", out)
		}
		c.fails(t, 1, []string{"rm", base + ":v3"}, "not found")
		c.fails(t, 2, []string{"rm", base}, "names no tag or digest")
		c.fails(t, 2, []string{"rm", "s3://" + bucket}, "names no tag or digest")
		c.fails(t, 2, []string{"rm", "s3://" + bucket + "/pfx:v1"}, "names no repository")
		out := c.ok(t, "rm", base+"@"+two.Digest.String())
		if !strings.Contains(out, "removed manifest "+two.Digest.String()) || !strings.Contains(out, "v2") {
			t.Errorf("rm output:\n%s", out)
		}
		c.fails(t, 1, []string{"rm", base + "@" + two.Digest.String()}, "not found")
		if tags, err := st.ListTags(ctx, repo); err != nil || len(tags) != 0 {
			t.Errorf("tags left: %v, %v", tags, err)
		}
	})

	// A platform of a tagged multi-arch index is refused, as ECR refuses
	// it (ImageReferencedByManifestList): the tag would resolve to an
	// index with a platform missing. --force removes it anyway.
	t.Run("platform of a tagged index", func(t *testing.T) {
		tmp := t.TempDir()
		c := &cliRunner{
			bin:      buildCLI(t, tmp),
			endpoint: e.Endpoint,
			env: []string{
				"AWS_ACCESS_KEY_ID=" + e.AccessKey, "AWS_SECRET_ACCESS_KEY=" + e.SecretKey, "AWS_REGION=" + e.Region,
				"AWS_CONFIG_FILE=" + filepath.Join(tmp, "none"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(tmp, "none"),
			},
		}
		const multi = "team/multi"
		amd := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "a", Data: []byte("amd\n")}})
		arm := testenv.NewImage(t, otherPlatform(), []testenv.File{{Name: "b", Data: []byte("arm\n")}})
		testenv.PutImage(t, st, multi, amd)
		testenv.PutImage(t, st, multi, arm)
		idx, err := st.PutManifest(ctx, multi, testenv.NewIndex(t, amd, arm))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Tag(ctx, multi, "latest", idx); err != nil {
			t.Fatal(err)
		}
		base := "s3://" + bucket + "/pfx/" + multi
		if err := lifecycle.CheckUnreferenced(ctx, st, multi, arm.Digest); !errors.Is(err, lifecycle.ErrReferenced) {
			t.Errorf("CheckUnreferenced(a platform of latest) = %v, want ErrReferenced", err)
		}
		c.fails(t, 1, []string{"rm", base + "@" + arm.Digest.String()}, "latest", "--force")
		if _, err := st.GetManifest(ctx, multi, arm.Digest); err != nil {
			t.Fatalf("a refused rm removed the platform: %v", err)
		}
		c.ok(t, "rm", "--force", base+"@"+arm.Digest.String())
		if _, err := st.GetManifest(ctx, multi, arm.Digest); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("rm --force left the platform: %v", err)
		}
		// The index itself is no platform of anything: removed as usual.
		c.ok(t, "rm", base+"@"+idx.String())
	})
}
