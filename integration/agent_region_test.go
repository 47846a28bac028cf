package integration

import (
	"context"
	"fmt"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/store"
)

// TestAgentRegionalStores: a registry whose bucket is replicated to two
// regions (two buckets on the one test server stand for them; behind one
// endpoint the region only chooses the bucket). The agent runs in
// us-east-1, with eu-west-1's store written first in its config. Pulled
// through containerd, every image held by either store runs with zero
// layer or config downloads from the registry; what both hold comes from
// the node's own region, what only eu-west-1 holds from there, and the
// metrics say which store served what. A layer damaged in the own region's
// copy is read from the other region's instead; an image in neither store
// comes from the registry.
func TestAgentRegionalStores(t *testing.T) {
	e := testenv.S3(t)
	reg := testenv.StartFSRegistry(t)
	ctx := context.Background()
	use1Bucket, euw1Bucket := e.NewBucket(t), e.NewBucket(t)
	use1 := store.New(e.Client(t), use1Bucket, store.WithPrefix("ecr"))
	euw1 := store.New(e.Client(t), euw1Bucket, store.WithPrefix("ecr"))
	if e.Region != "us-east-1" {
		t.Fatalf("test S3 region %q: this test runs the agent in us-east-1", e.Region)
	}
	ag := testenv.StartAgent(t, testenv.AgentOptions{
		S3: e, // [s3] region = "us-east-1"
		Extra: fmt.Sprintf("[[registry]]\nhost = %q\nstores = { \"eu-west-1\" = %q, \"us-east-1\" = %q }\n",
			reg.Addr, euw1.URL(), use1.URL()),
	})
	ctrd := testenv.StartContainerd(t, testenv.ContainerdOptions{Extra: ag.ContainerdConfig(reg.Addr)})

	type image struct {
		repo    string
		in      []*store.Store
		files   map[string][]byte
		im      *testenv.Image
		ref     string
		damaged bool // its data layer is corrupt in us-east-1's copy
	}
	images := []*image{
		{repo: "region/use1-only", in: []*store.Store{use1}},
		{repo: "region/euw1-only", in: []*store.Store{euw1}},
		{repo: "region/both", in: []*store.Store{use1, euw1}},
		{repo: "region/damaged-in-use1", in: []*store.Store{use1, euw1}, damaged: true},
		{repo: "region/neither"},
	}
	for i, im := range images {
		im.files = map[string][]byte{"/data/x": pseudoRandom(uint64(100+i), 1<<20)}
		im.im = testenv.RunnableImage(t, []testenv.File{{Name: "data/x", Data: im.files["/data/x"]}})
		for _, st := range im.in {
			testenv.PutImage(t, st, im.repo, im.im)
			if err := st.Tag(ctx, im.repo, "v1", im.im.Digest); err != nil {
				t.Fatal(err)
			}
		}
		testenv.PushToRegistry(t, reg.Addr, im.repo, "v1", im.im)
		im.ref = reg.Addr + "/" + im.repo + ":v1"
		if im.damaged {
			info, err := use1.StatBlob(ctx, digest.FromBytes(im.im.Layers[1]))
			if err != nil {
				t.Fatal(err)
			}
			data := readObject(t, e, use1Bucket, info.Key)
			data[len(data)/2] ^= 0x40
			putObject(t, e, use1Bucket, info.Key, data)
		}
	}

	pullAndRun := func(t *testing.T, im *image) {
		t.Helper()
		ctrd.Ctr(t, "images", "pull", "--hosts-dir", ag.HostsDir, "--snapshotter", "s3snap", im.ref)
		p := &pullEnv{ctrd: ctrd}
		p.run(t, im.ref, "region-"+im.repo[len("region/"):], im.files)
	}
	provided := func(st *store.Store) float64 {
		return ag.Metric(t, "s3snap_snapshotter_layers_provided_total", "store="+st.URL())
	}
	// The first image brings the shared base layer (the /hello binary);
	// every later one has one layer of its own to fetch.
	for _, im := range images[:4] {
		t.Run(im.repo, func(t *testing.T) {
			pullAndRun(t, im)
			if n := registryRequests(t, reg, "/v2/"+im.repo+"/blobs/"); n != 0 {
				t.Errorf("containerd downloaded %d blobs of %s from the registry, want 0", n, im.repo)
			}
		})
	}
	a, b, c, d := images[0].im, images[1].im, images[2].im, images[3].im
	wantUse1 := len(a.Layers) + 1 // all of A, C's own layer
	if n := provided(use1); int(n) != wantUse1 {
		t.Errorf("layers provided from %s (us-east-1) = %v, want %d (A's and C's)", use1.URL(), n, wantUse1)
	}
	if n := provided(euw1); n != 2 {
		t.Errorf("layers provided from %s (eu-west-1) = %v, want 2 (B's, and the one damaged in us-east-1)", euw1.URL(), n)
	}
	if n := ag.Metric(t, "s3snap_snapshotter_fallbacks_total"); n != 0 {
		t.Errorf("%v layer(s) fell back to the registry, want none", n)
	}
	// The mirror served each image's config (the only blob it serves)
	// from the store the image's manifest came from.
	served := func(st *store.Store, kind string) float64 {
		return ag.Metric(t, "s3snap_mirror_served_bytes_total", "kind="+kind, "store="+st.URL())
	}
	if got, want := served(use1, "blob"), len(a.Config)+len(c.Config)+len(d.Config); int(got) != want {
		t.Errorf("config bytes the mirror served from us-east-1 = %v, want %d (A, C, and the damaged one's)", got, want)
	}
	if got, want := served(euw1, "blob"), len(b.Config); int(got) != want {
		t.Errorf("config bytes the mirror served from eu-west-1 = %v, want %d (B's)", got, want)
	}
	if n := served(euw1, "manifest"); int(n) < len(b.Manifest) {
		t.Errorf("manifest bytes the mirror served from eu-west-1 = %v, want B's %d at least", n, len(b.Manifest))
	}

	t.Run("in neither store: from the registry", func(t *testing.T) {
		im := images[4]
		pullAndRun(t, im)
		if n := registryRequests(t, reg, "/v2/"+im.repo+"/blobs/"); n == 0 {
			t.Errorf("an image in no store was not downloaded from the registry")
		}
		if n := ag.Metric(t, "s3snap_snapshotter_fallbacks_total", "reason=not_in_bucket"); n < 1 {
			t.Errorf("fallbacks{not_in_bucket} = %v, want at least 1", n)
		}
	})

	t.Run("healthz lists both regions in lookup order", func(t *testing.T) {
		_, h := ag.Health(t)
		var got []string
		for _, s := range h.Stores {
			got = append(got, s.Region+"="+s.Store)
		}
		want := []string{"us-east-1=" + use1.URL(), "eu-west-1=" + euw1.URL()}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("healthz stores %v, want %v", got, want)
		}
	})
}
