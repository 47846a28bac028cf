package migrator

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/internal/storetest"
	"github.com/s3snap/s3snap/store"
)

// newTestStore returns a store in a fresh bucket of the environment's S3
// server (the test is skipped without one, failed under CI).
func newTestStore(t *testing.T) *store.Store {
	t.Helper()
	e := storetest.S3(t)
	return store.New(e.Client(t), e.NewBucket(t), store.WithPrefix("p"))
}

// countingSource tracks how many blobs are open at once.
type countingSource struct {
	*memSource
	open, peak atomic.Int32
}

func (s *countingSource) Blob(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	rc, err := s.memSource.Blob(ctx, desc)
	if err != nil {
		return nil, err
	}
	n := s.open.Add(1)
	for {
		p := s.peak.Load()
		if n <= p || s.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return &closeHook{ReadCloser: rc, done: func() { s.open.Add(-1) }}, nil
}

type closeHook struct {
	io.ReadCloser
	done func()
}

func (c *closeHook) Close() error { c.done(); return c.ReadCloser.Close() }

func TestCopyIndexIdempotent(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	mem := newMemSource()
	amd := mem.image(t, `{"architecture":"amd64"}`, "base", "amd-app")
	arm := mem.image(t, `{"architecture":"arm64"}`, "base", "arm-app")
	mem.root = mem.index(t, amd, arm)
	src := &countingSource{memSource: mem}

	var events []Event
	res, err := Copy(ctx, src, st, "team/app", "v1", WithJobs(2), WithProgress(func(ev Event) { events = append(events, ev) }))
	if err != nil {
		t.Fatal(err)
	}
	want := Result{Repository: "team/app", Tag: "v1", Digest: mem.root.Digest, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: 3, BlobsUploaded: 5, BytesUploaded: int64(len(`{"architecture":"amd64"}`) + len(`{"architecture":"arm64"}`) + len("base") + len("amd-app") + len("arm-app"))}
	if *res != want {
		t.Errorf("result %+v\nwant   %+v", *res, want)
	}
	if p := src.peak.Load(); p > 2 {
		t.Errorf("%d blobs open at once with WithJobs(2)", p)
	}
	if n := len(events); n != 5+3+1 || events[n-1].Kind != EventTag || events[n-2].Descriptor.Digest != mem.root.Digest {
		t.Errorf("events: %d, last %+v; want 5 blobs, 3 manifests (root last), then the tag", n, events[n-1])
	}
	if d, err := st.Resolve(ctx, "team/app", "v1"); err != nil || d != mem.root.Digest {
		t.Fatalf("tag resolves to %s, %v", d, err)
	}
	if m, err := st.GetManifest(ctx, "team/app", mem.root.Digest); err != nil || string(m.Raw) != string(mem.data[mem.root.Digest]) {
		t.Fatalf("stored index differs: %v", err)
	}

	opened := mem.openCount()
	res, err = Copy(ctx, src, st, "team/app", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if res.BlobsUploaded != 0 || res.BytesUploaded != 0 || res.BlobsSkipped != 5 || res.BytesDeduplicated != want.BytesUploaded {
		t.Errorf("second copy %+v: want nothing uploaded", *res)
	}
	if mem.openCount() != opened {
		t.Errorf("second copy opened %d source blobs, want none", mem.openCount()-opened)
	}

	// The same image under another repository: the blobs are shared, the
	// links are the new repository's own.
	res, err = Copy(ctx, src, st, "other", "")
	if err != nil || res.BlobsUploaded != 0 || res.Manifests != 3 {
		t.Fatalf("copy to another repository: %+v, %v", res, err)
	}
	if _, err := st.Resolve(ctx, "other", "latest"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("an untagged copy made a tag: %v", err)
	}
	if _, err := st.GetManifest(ctx, "other", amd.Digest); err != nil {
		t.Errorf("child manifest not in the second repository: %v", err)
	}
}

func TestCopyBadSourceLeavesNoTag(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(s *memSource, layer ocispec.Descriptor)
		want   error
	}{
		{"blob content differs", func(s *memSource, l ocispec.Descriptor) { s.data[l.Digest] = []byte("evil!!!") }, store.ErrDigestMismatch},
		{"blob truncated", func(s *memSource, l ocispec.Descriptor) { s.data[l.Digest] = s.data[l.Digest][:3] }, store.ErrSizeMismatch},
		{"blob missing", func(s *memSource, l ocispec.Descriptor) { delete(s.data, l.Digest) }, store.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newTestStore(t)
			ctx := context.Background()
			src := newMemSource()
			src.root = src.image(t, "config", "layer-1", "layer-2")
			layer := digest.FromString("layer-2")
			tc.damage(src, ocispec.Descriptor{Digest: layer})

			_, err := Copy(ctx, src, st, "app", "v1")
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if _, err := st.Resolve(ctx, "app", "v1"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("tag written despite the failure: %v", err)
			}
			if ok, err := st.HasBlob(ctx, layer); ok || err != nil {
				t.Errorf("bad blob stored: %v %v", ok, err)
			}
		})
	}
}

func TestCopyRejectsBadNames(t *testing.T) {
	src := newMemSource()
	src.root = src.image(t, "c", "l")
	// A store whose client is never called: names are checked first.
	st := store.New(nil, "bucket")
	for _, tc := range []struct{ repo, tag string }{{"App", "v1"}, {"app", "bad tag"}, {"", "v1"}} {
		if _, err := Copy(context.Background(), src, st, tc.repo, tc.tag); !errors.Is(err, store.ErrInvalidName) {
			t.Errorf("Copy(%q, %q): err = %v, want ErrInvalidName", tc.repo, tc.tag, err)
		}
	}
}
