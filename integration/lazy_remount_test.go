package integration

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/store"
)

// TestAgentLazyLayerNeverShownEmpty: when the agent starts after the lazy
// FUSE server died with it, and a lazy layer cannot be mounted again (its index gone from the local state and
// from the bucket), no container is given the image: an empty directory
// in the layer's place would hide its files and bring back the ones it
// deletes. Running fails with an error naming the layer; once the index is
// back, the agent's retry mounts it and the image runs with every file.
func TestAgentLazyLayerNeverShownEmpty(t *testing.T) {
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	reg := testenv.StartFSRegistry(t)
	files := map[string][]byte{"/data/a": pseudoRandom(301, 1<<20), "/data/b": []byte("layer b")}
	im := testenv.RunnableImage(t,
		[]testenv.File{{Name: "data/a", Data: files["/data/a"]}},
		[]testenv.File{{Name: "data/b", Data: files["/data/b"]}},
	)
	st := store.New(e.Client(t), bucket, store.WithPrefix("ecr"))
	testenv.PutImage(t, st, "team/app", im)
	if err := st.Tag(context.Background(), "team/app", "v1", im.Digest); err != nil {
		t.Fatal(err)
	}
	testenv.PushToRegistry(t, reg.Addr, "team/app", "v1", im)
	ref := reg.Addr + "/team/app:v1"
	runIndex(t, indexCLI(t, e), "s3://"+bucket+"/ecr/team/app:v1")

	p := newLazyEnv(t, testenv.Containerd2, e, bucket, reg)
	p.pull(t, ref)
	p.run(t, ref, "before", files)

	// The middle layer's index disappears, locally and in the bucket.
	layer := digest.FromBytes(im.Layers[1])
	ctx := context.Background()
	toc, err := st.GetExtra(ctx, lazy.Key(layer, "toc"), 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	// Mounts outlive the agent (the lazy FUSE server holds them): only
	// when the server, too, dies must the agent mount them again.
	p.agent.Stop()
	p.agent.KillFused(t)
	// Local TOC copies are kept by their own digest: drop them all; the
	// other layers' are still in the bucket.
	if err := os.RemoveAll(filepath.Join(p.agent.Root, "lazy", "toc")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(p.agent.Root, "lazy", "toc"), 0o700); err != nil {
		t.Fatal(err)
	}
	deleteObject(t, e, bucket, "ecr/s3snap/"+lazy.Key(layer, "toc"))
	p.agent.StartAgain(t)
	p.waitSnapshotter(t)
	if n := p.agent.Metric(t, "s3snap_snapshotter_lazy_restore_failures_total"); n != 1 {
		t.Errorf("lazy_restore_failures_total = %v, want 1", n)
	}

	out, err := p.ctrd.CtrErr(t, "run", "--rm", "--snapshotter", "s3snap", ref, "empty-"+p.ctrd.Namespace, "/hello", "/data/a", "/data/b")
	if err == nil || strings.Contains(out, "hello from s3snap") {
		t.Fatalf("a container ran on an image whose lazy layer is not mounted:\n%s", out)
	}
	if !strings.Contains(out, "lazy layer not mounted") || !strings.Contains(out, layer.String()) {
		t.Errorf("the error does not say which layer is not mounted:\n%s", out)
	}

	if err := st.PutExtra(ctx, lazy.Key(layer, "toc"), bytes.NewReader(toc)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(lazyMounts(t, p.agent.Root)) != len(im.Layers) {
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not mount the layer again once its index was back: mounts %v", lazyMounts(t, p.agent.Root))
		}
		time.Sleep(200 * time.Millisecond)
	}
	p.run(t, ref, "after", files)
}
