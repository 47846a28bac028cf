package integration

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/ecrfake"
	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/migrator"
)

// ecrScene is an ECR stand-in holding every kind of image the migrator
// must handle.
type ecrScene struct {
	fake    *ecrfake.Fake
	push    regPusher
	want    map[string]digest.Digest // repo:tag or repo@digest -> digest
	base    digest.Digest            // the layer several repositories share
	baseLen int64
	run     *testenv.Image // runnable, in team/app/api:v1
	bigSize int64
}

// newECRScene fills a fake ECR: a multi-arch index (host + other arch), a
// nested repository holding a runnable image and an untagged manifest, two
// repositories sharing base layers and, unless -short, a ~300 MB image of
// six layers.
func newECRScene(t *testing.T, big bool) *ecrScene {
	t.Helper()
	fake := ecrfake.Start(t, ecrfake.Options{})
	s := &ecrScene{fake: fake, want: map[string]digest.Digest{},
		push: regPusher{addr: fake.Registry.Addr, auth: authn.FromConfig(authn.AuthConfig{Username: "AWS", Password: fake.Token()})}}

	base := []testenv.File{{Name: "etc/base.bin", Data: randomLayers(7, 1, 1<<20)[0]}}
	amd := testenv.NewImage(t, hostPlatform(), base, []testenv.File{{Name: "arch", Data: []byte(runtime.GOARCH)}})
	arm := testenv.NewImage(t, otherPlatform(), base, []testenv.File{{Name: "arch", Data: []byte("other")}})
	s.base = digest.FromBytes(amd.Layers[0])
	s.baseLen = int64(len(amd.Layers[0]))
	s.push.image(t, "multi", "", amd)
	s.push.image(t, "multi", "", arm)
	s.want["multi:latest"] = s.push.manifest(t, "multi", "latest", testenv.NewIndex(t, amd, arm), ocispec.MediaTypeImageIndex)

	s.run = testenv.RunnableImage(t, base)
	s.push.image(t, "team/app/api", "v1", s.run)
	s.want["team/app/api:v1"] = s.run.Digest
	untagged := testenv.NewImage(t, hostPlatform(), base, []testenv.File{{Name: "old", Data: []byte("an untagged build")}})
	s.push.image(t, "team/app/api", "", untagged)
	s.want["team/app/api@"+untagged.Digest.String()] = untagged.Digest

	for i, repo := range []string{"base/one", "base/two"} {
		im := testenv.NewImage(t, hostPlatform(), base, []testenv.File{{Name: "app", Data: []byte(fmt.Sprint("app ", i))}})
		s.push.image(t, repo, "v1", im)
		s.want[repo+":v1"] = im.Digest
	}
	if big {
		im := opaqueImage(t, randomLayers(1, 6, 50<<20))
		s.push.image(t, "big/data", "v1", im)
		s.want["big/data:v1"] = im.Digest
		for _, l := range im.Layers {
			s.bigSize += int64(len(l))
		}
	}
	return s
}

// TestMigrateECR is the migration end to end: a whole (fake) ECR registry
// into a bucket, served by a stock Distribution registry with identical
// digests, pulled and run by containerd; dedup; incremental re-run; verify
// as the cutover gate; sharding.
func TestMigrateECR(t *testing.T) {
	e := testenv.S3(t)
	s := newECRScene(t, !testing.Short())
	bucket := e.NewBucket(t)
	cli := newMigrateCLI(t, e)
	dst := "s3://" + bucket + "/mirror"
	ecrFlag := "--ecr-endpoint=" + s.fake.Endpoint()

	t.Run("dry run and shards", func(t *testing.T) {
		total := 0
		seen := map[string]bool{}
		for i := range 3 {
			rep, code := cli.migrate(t, "migrate", ecrFlag, "--dry-run", fmt.Sprintf("--shard=%d/3", i), s.fake.URL(), dst)
			if code != 0 {
				t.Fatalf("dry run exit %d", code)
			}
			for _, en := range rep.Entries {
				if en.Status != migrator.StatusPlanned || seen[en.Key()] {
					t.Errorf("shard %d: %s %s (seen: %v)", i, en.Key(), en.Status, seen[en.Key()])
				}
				seen[en.Key()] = true
			}
			total += len(rep.Entries)
		}
		if total != len(s.want) {
			t.Errorf("shards planned %d images, want %d: %v", total, len(s.want), seen)
		}
		// --pushed-after drops what ECR says was pushed earlier.
		s.fake.SetPushedAt("base/one", s.want["base/one:v1"].String(), time.Now().Add(-72*time.Hour))
		rep, code := cli.migrate(t, "migrate", ecrFlag, "--dry-run", "--pushed-after=24h", "--repo=^base/", s.fake.URL(), dst)
		if code != 0 || len(rep.Entries) != 1 || rep.Entries[0].Key() != "base/two:v1" || rep.Summary.BytesPlanned == 0 {
			t.Errorf("--pushed-after=24h --repo=^base/: exit %d, %+v; want base/two:v1 alone", code, rep.Entries)
		}
		if keys := testenv.Keys(t, e.Client(t), bucket, ""); len(keys) != 0 {
			t.Errorf("dry run wrote %d objects", len(keys))
		}
	})

	start := time.Now()
	rep, code := cli.migrate(t, "migrate", ecrFlag, "--jobs=8", s.fake.URL(), dst)
	t.Logf("migration took %s", time.Since(start))
	if code != 0 {
		t.Fatalf("migrate exit %d", code)
	}
	if len(rep.Entries) != len(s.want) {
		t.Errorf("report has %d entries, want %d (index children must not be listed as untagged images)", len(rep.Entries), len(s.want))
	}
	for key, d := range s.want {
		en := entry(t, rep, key)
		if en.Status != migrator.StatusCopied || en.SourceDigest != d || en.DestinationDigest != d {
			t.Errorf("%s: %s %s -> %s (%s), want copied %s", key, en.Status, en.SourceDigest, en.DestinationDigest, en.Reason, d)
		}
	}
	if rep.Summary.Untagged != 1 || rep.Summary.Tags != len(s.want)-1 {
		t.Errorf("summary %+v: want 1 untagged", rep.Summary)
	}
	// Five images carry the base layer; it is uploaded once.
	if rep.Summary.BytesDeduplicated < 4*s.baseLen {
		t.Errorf("bytes deduplicated %d, want at least 4 x the %d-byte base layer", rep.Summary.BytesDeduplicated, s.baseLen)
	}
	if rep.Summary.BytesMoved < s.bigSize {
		t.Errorf("bytes moved %d < the big image's %d", rep.Summary.BytesMoved, s.bigSize)
	}
	n := 0
	for _, k := range testenv.Keys(t, e.Client(t), bucket, "mirror/docker/registry/v2/blobs/") {
		if strings.Contains(k, s.base.Encoded()) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("base layer stored %d times, want once", n)
	}

	reg := testenv.StartS3Registry(t, e, bucket, "mirror")
	crane := testenv.Bin(t, "crane")
	t.Run("stock registry serves identical digests", func(t *testing.T) {
		for key, d := range s.want {
			ref := reg.Addr + "/" + key
			if got := strings.TrimSpace(testenv.Run(t, crane, "digest", "--insecure", ref)); got != d.String() {
				t.Errorf("%s: digest %s, want %s", ref, got, d)
			}
		}
	})

	t.Run("containerd pulls and runs", func(t *testing.T) {
		c := testenv.StartContainerd(t, testenv.ContainerdOptions{})
		ref := reg.Addr + "/team/app/api:v1"
		c.Ctr(t, "images", "pull", "--plain-http", ref)
		out := c.Ctr(t, "run", "--rm", ref, "mig-"+c.Namespace, "/hello")
		if !strings.Contains(out, "hello from s3snap") {
			t.Errorf("container printed %q", out)
		}
		c.Ctr(t, "images", "pull", "--plain-http", "--platform", "linux/"+runtime.GOARCH, reg.Addr+"/multi:latest")
	})

	t.Run("re-run copies nothing", func(t *testing.T) {
		rep, code := cli.migrate(t, "migrate", ecrFlag, s.fake.URL(), dst)
		if code != 0 || rep.Summary.Unchanged != len(s.want) || rep.Summary.BytesMoved != 0 {
			t.Errorf("re-run: exit %d, summary %+v; want everything unchanged", code, rep.Summary)
		}
	})

	t.Run("verify gates the cutover", func(t *testing.T) {
		rep, code := cli.migrate(t, "verify", ecrFlag, "--deep", s.fake.URL(), dst)
		if code != 0 || rep.Summary.OK != len(s.want) {
			t.Fatalf("verify after migration: exit %d, summary %+v", code, rep.Summary)
		}
		deleteObject(t, e, bucket, "mirror/docker/registry/v2/repositories/base/two/_manifests/tags/v1/current/link")
		out, _, code := cli.run(t, "verify", ecrFlag, s.fake.URL(), dst)
		if code != 1 || !strings.Contains(out, "base/two:v1") {
			t.Errorf("verify with a tag gone: exit %d, want 1 naming base/two:v1:\n%s", code, out)
		}
		rep, _ = cli.migrate(t, "verify", ecrFlag, s.fake.URL(), dst)
		if en := entry(t, rep, "base/two:v1"); en.Status != migrator.StatusMissing || rep.Summary.Failed != 1 {
			t.Errorf("base/two:v1 is %s (failed %d), want missing and the only failure", en.Status, rep.Summary.Failed)
		}
		// And a re-run puts it back.
		rep, code = cli.migrate(t, "migrate", ecrFlag, "--repo=^base/", s.fake.URL(), dst)
		if code != 0 || entry(t, rep, "base/two:v1").Status != migrator.StatusCopied || entry(t, rep, "base/one:v1").Status != migrator.StatusUnchanged {
			t.Errorf("re-run after the loss: exit %d %+v", code, rep.Entries)
		}
	})

	t.Run("bucket back to a registry", func(t *testing.T) {
		back := testenv.StartFSRegistry(t)
		rep, code := cli.migrate(t, "migrate", dst, "docker://"+back.Addr+"/restored")
		if code != 0 || rep.Summary.Tags != len(s.want)-1 {
			t.Fatalf("exit %d, summary %+v: want every tag", code, rep.Summary)
		}
		for key, d := range s.want {
			if strings.Contains(key, "@") {
				continue // untagged: a bucket lists tags
			}
			repo, tag, _ := strings.Cut(key, ":")
			ref := back.Addr + "/restored/" + repo + ":" + tag
			if got := strings.TrimSpace(testenv.Run(t, crane, "digest", "--insecure", ref)); got != d.String() {
				t.Errorf("%s: %s, want %s", ref, got, d)
			}
		}
	})
}
