package integration

import (
	"context"
	"net/http"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/integration/ecrfake"
	"github.com/s3snap/s3snap/integration/faultproxy"
	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/migrator"
	"github.com/s3snap/s3snap/store"
)

// blobGet matches GETs of one blob (any blob when d is "").
func blobGet(d digest.Digest) func(*http.Request) bool {
	return func(r *http.Request) bool {
		return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/"+d.String())
	}
}

func manifestGet(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/")
}

// faultyECR is a fake ECR whose data plane is reached through a fault
// proxy, holding three images of three repositories.
func faultyECR(t *testing.T, layerSize int) (*ecrfake.Fake, *faultproxy.Proxy, map[string]*testenv.Image) {
	t.Helper()
	fake := ecrfake.Start(t, ecrfake.Options{})
	p, err := faultproxy.New("http://" + fake.Registry.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	fake.SetProxyEndpoint(p.URL())
	push := regPusher{addr: fake.Registry.Addr, auth: basic("AWS", fake.Token())}
	images := map[string]*testenv.Image{}
	for i, repo := range []string{"app/a", "app/b", "app/c"} {
		im := opaqueImage(t, randomLayers(uint64(10+i), 2, layerSize))
		push.image(t, repo, "v1", im)
		images[repo] = im
	}
	return fake, p, images
}

// TestMigrateTokenExpiresMidRun: the registry stops taking the token part
// way through; the migrator gets a new one and replays, and completes.
func TestMigrateTokenExpiresMidRun(t *testing.T) {
	e := testenv.S3(t)
	fake, p, _ := faultyECR(t, 1<<20)
	h := p.Add(faultproxy.Rule{Match: blobGet(""), Nth: 3, Hook: func(*http.Request) {
		if err := fake.ExpireToken(); err != nil {
			t.Error(err)
		}
	}})
	cli := newMigrateCLI(t, e)
	dst := "s3://" + e.NewBucket(t)
	rep, code := cli.migrate(t, "migrate", "--ecr-endpoint="+fake.Endpoint(), "--images=1", "--jobs=1", fake.URL(), dst)
	if code != 0 || rep.Summary.Copied != 3 {
		t.Fatalf("exit %d, summary %+v", code, rep.Summary)
	}
	if h.Fired() != 1 {
		t.Errorf("token expiry hook fired %d times", h.Fired())
	}
	if n := fake.Calls("GetAuthorizationToken"); n < 2 {
		t.Errorf("GetAuthorizationToken called %d times, want a renewal", n)
	}
	if _, _, code := cli.run(t, "verify", "--ecr-endpoint="+fake.Endpoint(), fake.URL(), dst); code != 0 {
		t.Errorf("verify exit %d", code)
	}
}

// TestMigrateRetriesBusyRegistry: 429 with Retry-After, 503s and a
// connection reset part way through a layer; the migration completes.
func TestMigrateRetriesBusyRegistry(t *testing.T) {
	e := testenv.S3(t)
	fake, p, images := faultyECR(t, 4<<20)
	tooMany := p.Add(faultproxy.Rule{Match: manifestGet, First: 2, Fault: faultproxy.Status, Status: http.StatusTooManyRequests, Code: "TOOMANYREQUESTS", RetryAfter: 1})
	layer := digest.FromBytes(images["app/c"].Layers[1])
	// The 503s spare the layer the reset is for: blobs are fetched
	// concurrently, and a 503 on its first GET would use up the reset's turn.
	otherBlob := func(r *http.Request) bool { return blobGet("")(r) && !blobGet(layer)(r) }
	unavailable := p.Add(faultproxy.Rule{Match: otherBlob, First: 3, Fault: faultproxy.Status, Status: http.StatusServiceUnavailable})
	reset := p.Add(faultproxy.Rule{Match: blobGet(layer), Nth: 1, Fault: faultproxy.Reset, After: 1 << 20})
	cli := newMigrateCLI(t, e)
	dst := "s3://" + e.NewBucket(t)
	start := time.Now()
	rep, code := cli.migrate(t, "migrate", "--ecr-endpoint="+fake.Endpoint(), fake.URL(), dst)
	if code != 0 || rep.Summary.Copied != 3 {
		t.Fatalf("exit %d, summary %+v", code, rep.Summary)
	}
	if tooMany.Fired() != 2 || unavailable.Fired() != 3 || reset.Fired() != 1 {
		t.Errorf("faults fired: 429 %d, 503 %d, reset %d", tooMany.Fired(), unavailable.Fired(), reset.Fired())
	}
	if took := time.Since(start); took < time.Second {
		t.Errorf("took %s: Retry-After: 1 was not honoured", took)
	}
	// The reset layer was resumed with a Range request, not read again.
	resumed := false
	for _, r := range p.Requests() {
		if strings.Contains(r.Path, layer.String()) && strings.HasPrefix(r.Range, "bytes=") {
			resumed = true
		}
	}
	if !resumed {
		t.Errorf("no ranged GET resumed %s after the reset", layer)
	}
	if _, _, code := cli.run(t, "verify", "--deep", "--ecr-endpoint="+fake.Endpoint(), fake.URL(), dst); code != 0 {
		t.Errorf("verify exit %d", code)
	}
}

// TestMigrateCorruptSourceBlob: a layer the registry serves does not hash to
// its digest. That image fails with a clear reason and nothing of it is
// published; the others are copied; the exit code says it.
func TestMigrateCorruptSourceBlob(t *testing.T) {
	e := testenv.S3(t)
	fake, p, images := faultyECR(t, 256<<10)
	bad := digest.FromBytes(images["app/b"].Layers[1])
	p.Add(faultproxy.Rule{Match: blobGet(bad), Fault: faultproxy.FlipByte, After: 1000})
	cli := newMigrateCLI(t, e)
	bucket := e.NewBucket(t)
	rep, code := cli.migrate(t, "migrate", "--ecr-endpoint="+fake.Endpoint(), fake.URL(), "s3://"+bucket)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	b := entry(t, rep, "app/b:v1")
	if b.Status != migrator.StatusFailed || !strings.Contains(b.Reason, bad.String()) || !strings.Contains(b.Reason, "digest mismatch") {
		t.Errorf("app/b:v1: %s %q; want failed naming %s and the digest mismatch", b.Status, b.Reason, bad)
	}
	for _, ok := range []string{"app/a:v1", "app/c:v1"} {
		if en := entry(t, rep, ok); en.Status != migrator.StatusCopied {
			t.Errorf("%s: %s %s", ok, en.Status, en.Reason)
		}
	}
	st := store.New(e.Client(t), bucket)
	ctx := context.Background()
	if _, err := st.Resolve(ctx, "app/b", "v1"); err == nil {
		t.Error("the failed image's tag was published")
	}
	if ok, _ := st.HasBlob(ctx, bad); ok {
		t.Error("the corrupt blob is in the bucket")
	}
	if _, err := st.GetManifest(ctx, "app/b", images["app/b"].Digest); err == nil {
		t.Error("the failed image's manifest was stored")
	}
}

// TestMigrateKillAndResume kills the migrator (SIGKILL) part way through a
// layer of the second image, then runs it again: the end state is what one
// uninterrupted run makes, and no blob that was complete is read again.
func TestMigrateKillAndResume(t *testing.T) {
	e := testenv.S3(t)
	src := testenv.StartFSRegistry(t)
	p, err := faultproxy.New("http://" + src.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	push := regPusher{addr: src.Addr}
	a := opaqueImage(t, randomLayers(21, 2, 4<<20))
	b := opaqueImage(t, randomLayers(22, 3, 8<<20))
	push.image(t, "kill/app", "a", a)
	push.image(t, "kill/app", "b", b)
	stalled := make(chan struct{})
	p.Add(faultproxy.Rule{Match: blobGet(digest.FromBytes(b.Layers[1])), Nth: 1, Fault: faultproxy.Stall, After: 3 << 20, Delay: time.Minute,
		Hook: func(*http.Request) { close(stalled) }})

	cli := newMigrateCLI(t, e)
	bucket := e.NewBucket(t)
	srcURL := "docker://" + strings.Replace(p.URL(), "http://", "", 1) + "/kill/app"
	args := []string{"migrate", "--images=1", "--jobs=1", srcURL, "s3://" + bucket}
	cmd := cli.command(args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-stalled:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("the migration never reached the second image's second layer")
	}
	time.Sleep(300 * time.Millisecond) // let it read into the layer
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("migrator was not killed: %v", cmd.ProcessState)
	}

	ctx := context.Background()
	st := store.New(e.Client(t), bucket)
	complete := map[digest.Digest]bool{}
	for d := range b.Blobs() {
		if ok, _ := st.HasBlob(ctx, d); ok {
			complete[d] = true
		}
	}
	if d, err := st.Resolve(ctx, "kill/app", "a"); err != nil || d != a.Digest {
		t.Errorf("the first image is not complete before the kill: %s %v", d, err)
	}
	if _, err := st.Resolve(ctx, "kill/app", "b"); err == nil {
		t.Error("the interrupted image's tag is published")
	}
	if len(complete) == 0 || complete[digest.FromBytes(b.Layers[1])] {
		t.Fatalf("want some but not the stalled blob of b complete at the kill: %v", complete)
	}

	p.Reset()
	rep, code := cli.migrate(t, args...)
	if code != 0 {
		t.Fatalf("re-run exit %d", code)
	}
	for _, r := range p.Requests() {
		for d := range complete {
			if r.Method == http.MethodGet && strings.Contains(r.Path, d.String()) {
				t.Errorf("re-run read %s again, though it was complete", d)
			}
		}
	}
	var wantMoved int64
	for d, data := range b.Blobs() {
		if !complete[d] {
			wantMoved += int64(len(data))
		}
	}
	if en := entry(t, rep, "kill/app:b"); en.Status != migrator.StatusCopied || en.BytesMoved != wantMoved {
		t.Errorf("re-run of b: %s, moved %d bytes, want %d", en.Status, en.BytesMoved, wantMoved)
	}
	if en := entry(t, rep, "kill/app:a"); en.Status != migrator.StatusUnchanged {
		t.Errorf("re-run of a: %s", en.Status)
	}

	// The same as one uninterrupted run.
	fresh := e.NewBucket(t)
	if _, code := cli.migrate(t, "migrate", srcURL, "s3://"+fresh); code != 0 {
		t.Fatal("clean migration failed")
	}
	got, want := layoutKeys(t, e, bucket), layoutKeys(t, e, fresh)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("resumed bucket differs from a clean run:\n%v\nwant\n%v", got, want)
	}
}

// layoutKeys lists a bucket's layout keys (not Distribution's scratch
// space), sorted.
func layoutKeys(t *testing.T, e *testenv.S3Env, bucket string) []string {
	t.Helper()
	var keys []string
	for _, k := range testenv.Keys(t, e.Client(t), bucket, "") {
		if !strings.Contains(k, "/_uploads/") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}
