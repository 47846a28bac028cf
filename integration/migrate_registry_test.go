package integration

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/ecrfake"
	"github.com/s3snap/s3snap/integration/testenv"
)

// TestMigrateRegistryToRegistry: docker:// to docker:// keeps every digest
// (an index and its children, byte for byte), renames, brings cosign
// signature tags with --referrers, and verify passes.
func TestMigrateRegistryToRegistry(t *testing.T) {
	e := testenv.S3(t)
	src, dst := testenv.StartFSRegistry(t), testenv.StartFSRegistry(t)
	push := regPusher{addr: src.Addr}
	base := []testenv.File{{Name: "base", Data: randomLayers(31, 1, 64<<10)[0]}}
	amd := testenv.NewImage(t, hostPlatform(), base, []testenv.File{{Name: "arch", Data: []byte("host")}})
	arm := testenv.NewImage(t, otherPlatform(), base, []testenv.File{{Name: "arch", Data: []byte("other")}})
	push.image(t, "multi", "", amd)
	push.image(t, "multi", "", arm)
	idx := push.manifest(t, "multi", "latest", testenv.NewIndex(t, amd, arm), ocispec.MediaTypeImageIndex)
	app := testenv.NewImage(t, hostPlatform(), base)
	push.image(t, "app", "v1", app)
	sig := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "sig", Data: []byte("a signature")}})
	sigTag := "sha256-" + app.Digest.Encoded() + ".sig"
	push.image(t, "app", sigTag, sig)
	push.image(t, "app", "v2-unwanted", testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "x", Data: []byte("x")}}))

	cli := newMigrateCLI(t, e)
	rep, code := cli.migrate(t, "migrate", "docker://"+src.Addr+"/multi", "docker://"+dst.Addr+"/multi")
	if code != 0 || entry(t, rep, "multi:latest").DestinationDigest != idx {
		t.Fatalf("exit %d, %+v", code, rep.Entries)
	}
	crane := testenv.Bin(t, "crane")
	for ref, want := range map[string]string{
		"/multi:latest": idx.String(), "/multi@" + amd.Digest.String(): amd.Digest.String(), "/multi@" + arm.Digest.String(): arm.Digest.String(),
	} {
		if got := strings.TrimSpace(testenv.Run(t, crane, "digest", "--insecure", dst.Addr+ref)); got != want {
			t.Errorf("%s at the destination: %s, want %s", ref, got, want)
		}
	}
	raw := testenv.Run(t, crane, "manifest", "--insecure", dst.Addr+"/multi:latest")
	if !bytes.Equal([]byte(raw), testenv.NewIndex(t, amd, arm)) {
		t.Error("index bytes changed on the way")
	}

	rep, code = cli.migrate(t, "migrate", "--tag=^v1$", "--referrers", "docker://"+src.Addr+"/app", "docker://"+dst.Addr+"/copied/app")
	if code != 0 || len(rep.Entries) != 2 {
		t.Fatalf("exit %d, entries %+v: want v1 and its signature", code, rep.Entries)
	}
	if got := strings.TrimSpace(testenv.Run(t, crane, "digest", "--insecure", dst.Addr+"/copied/app:"+sigTag)); got != sig.Digest.String() {
		t.Errorf("signature tag: %s, want %s", got, sig.Digest)
	}
	if out, err := testenv.RunErr(context.Background(), crane, "digest", "--insecure", dst.Addr+"/copied/app:v2-unwanted"); err == nil {
		t.Errorf("a tag the filter left out was copied: %s", out)
	}
	if _, _, code := cli.run(t, "verify", "--deep", "--tag=^v1$", "docker://"+src.Addr+"/app", "docker://"+dst.Addr+"/copied/app"); code != 0 {
		t.Errorf("verify exit %d", code)
	}
}

// TestMigrateToECR: into an ECR destination, creating the repository
// (immutable tags, scan on push), with a platform filter that rewrites the
// index (the report says so).
func TestMigrateToECR(t *testing.T) {
	e := testenv.S3(t)
	src := testenv.StartFSRegistry(t)
	push := regPusher{addr: src.Addr}
	amd := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "a", Data: []byte("host")}})
	arm := testenv.NewImage(t, otherPlatform(), []testenv.File{{Name: "a", Data: []byte("other")}})
	push.image(t, "multi", "", amd)
	push.image(t, "multi", "", arm)
	idx := push.manifest(t, "multi", "v1", testenv.NewIndex(t, amd, arm), ocispec.MediaTypeImageIndex)

	fake := ecrfake.Start(t, ecrfake.Options{})
	cli := newMigrateCLI(t, e)
	rep, code := cli.migrate(t, "migrate", "--ecr-endpoint="+fake.Endpoint(), "--ecr-create", "--ecr-tag-immutable", "--ecr-scan-on-push",
		"--platform=linux/"+runtime.GOARCH, "docker://"+src.Addr+"/multi", fake.URL()+"/mirror/multi")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	en := entry(t, rep, "multi:v1")
	if en.SourceDigest != idx || en.DestinationDigest == idx || !strings.Contains(en.Note, "platform filter") || en.DestinationRepository != "mirror/multi" {
		t.Errorf("entry %+v: want the index rewritten, and said so", en)
	}
	if r, ok := fake.Created("mirror/multi"); !ok || !r.TagImmutable || !r.ScanOnPush {
		t.Errorf("CreateRepository: %+v %v", r, ok)
	}
	ref, _ := name.ParseReference(fake.Registry.Addr + "/mirror/multi:v1")
	desc, err := remote.Get(ref, remote.WithAuth(basic("AWS", fake.Token())))
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest.String() != en.DestinationDigest.String() || strings.Contains(string(desc.Manifest), arm.Digest.String()) {
		t.Errorf("ECR holds %s (%s), want the filtered index %s", desc.Digest, desc.Manifest, en.DestinationDigest)
	}
	if _, _, code := cli.run(t, "verify", "--ecr-endpoint="+fake.Endpoint(), "--platform=linux/"+runtime.GOARCH, "docker://"+src.Addr+"/multi", fake.URL()+"/mirror/multi"); code != 0 {
		t.Errorf("verify with the same platform filter: exit %d", code)
	}
}

// TestMigrateWatch: --watch syncs again every interval, picking up a new
// tag, until interrupted.
func TestMigrateWatch(t *testing.T) {
	e := testenv.S3(t)
	src := testenv.StartFSRegistry(t)
	push := regPusher{addr: src.Addr}
	push.image(t, "w/app", "v1", testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "a", Data: []byte("1")}}))
	cli := newMigrateCLI(t, e)
	bucket := e.NewBucket(t)
	var stderr syncBuffer
	cmd := cli.command("migrate", "--watch=500ms", "docker://"+src.Addr+"/w/app", "s3://"+bucket)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill() //nolint:errcheck
	waitOutput(t, &stderr, "pass 1 done")
	v2 := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "a", Data: []byte("2")}})
	push.image(t, "w/app", "v2", v2)
	waitOutput(t, &stderr, "pass 3 done")
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("watch ended with %v:\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "copied     w/app:v2") {
		t.Errorf("the new tag was not synced:\n%s", stderr.String())
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func waitOutput(t *testing.T, b *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(b.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in:\n%s", want, b.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
