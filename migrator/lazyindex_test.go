package migrator

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/lazy"
)

// gzTar is a gzip'd tar of files (name, content), with its diff ID.
func gzTar(t *testing.T, files ...string) (string, digest.Digest) {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for i := 0; i+1 < len(files); i += 2 {
		hdr := &tar.Header{Name: files[i], Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(files[i+1]))}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, files[i+1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw.Bytes())
	zw.Close()
	return gz.String(), digest.FromBytes(raw.Bytes())
}

func noise(seed uint64, n int) string {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return string(b)
}

// flakySource breaks the stream of blob bad halfway, the first time.
type flakySource struct {
	*memSource
	bad    digest.Digest
	broken atomic.Bool
}

func (s *flakySource) Blob(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	rc, err := s.memSource.Blob(ctx, desc)
	if err != nil || desc.Digest != s.bad || s.broken.Swap(true) {
		return rc, err
	}
	return io.NopCloser(io.MultiReader(io.LimitReader(rc, desc.Size/2), iotestErr{})), nil
}

type iotestErr struct{}

func (iotestErr) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

// The indexes built while copying are the ones lazy.IndexLayer builds,
// each layer read once from the source, also when the first attempt's
// stream broke; a layer already in the bucket is indexed from there; a
// layer that cannot be indexed (a sparse file, not a tar) or is below the
// size is copied without.
func TestLazyIndexer(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	a, aDiff := gzTar(t, "bin/a", noise(1, 3<<20), "etc/x", "x")
	b, bDiff := gzTar(t, "lib/b", noise(2, 1<<20))
	small, _ := gzTar(t, "s", "s")
	sparse := sparseLayer(t)
	var junkGz bytes.Buffer // a "layer" that is no tar at all
	zw := gzip.NewWriter(&junkGz)
	io.WriteString(zw, noise(5, 4096))
	zw.Close()
	junk := junkGz.String()
	pre, preDiff := gzTar(t, "pre", noise(3, 200<<10))
	mem := newMemSource()
	mem.root = mem.image(t, `{"architecture":"amd64"}`, a, b, small, sparse, junk, pre)
	src := &flakySource{memSource: mem, bad: digest.FromString(b)}
	if _, err := st.PutBlob(ctx, digest.FromString(pre), int64(len(pre)), bytes.NewReader([]byte(pre))); err != nil {
		t.Fatal(err)
	}

	x := NewLazyIndexer(st, 1024)
	ix := x.Wrap(StoreDestination(st))
	if _, err := CopyTo(ctx, src, ix, "team/app", "v1"); err != nil {
		t.Fatal(err)
	}
	for l, n := range map[string]int{a: 1, b: 2, pre: 0} {
		if got := mem.opened[digest.FromString(l)]; got != n {
			t.Errorf("layer %s opened %d times, want %d", digest.FromString(l), got, n)
		}
	}
	for l, diffID := range map[string]digest.Digest{a: aDiff, b: bDiff, pre: preDiff} {
		d := digest.FromString(l)
		if err := lazy.CheckLayer(ctx, st, d, diffID); err != nil {
			t.Errorf("layer %s: %v", d, err)
		}
	}
	for _, l := range []string{small, sparse, junk} {
		if _, _, err := lazy.FetchTOC(ctx, st, digest.FromString(l)); !errors.Is(err, lazy.ErrNoIndex) {
			t.Errorf("layer %s: %v, want no index", digest.FromString(l), err)
		}
	}
	if ix.Indexes() != 3 || ix.Bytes() <= 3<<20 {
		t.Errorf("%d indexes of %d bytes, want 3 of more than 3 MiB", ix.Indexes(), ix.Bytes())
	}

	// Byte for byte what s3snap index builds.
	other := newTestStore(t)
	if _, err := Copy(ctx, mem, other, "team/app", "v1"); err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{a, b} {
		if _, err := lazy.IndexLayer(ctx, other, digest.FromString(l), ""); err != nil {
			t.Fatal(err)
		}
		for _, o := range []string{"toc", "data"} {
			got, err := st.GetExtra(ctx, lazy.Key(digest.FromString(l), o), 16<<20)
			if err != nil {
				t.Fatal(err)
			}
			want, err := other.GetExtra(ctx, lazy.Key(digest.FromString(l), o), 16<<20)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("layer %s: %s differs from s3snap index's", digest.FromString(l), o)
			}
		}
	}

	// Copied again: every index is there, nothing is built or read.
	again := x.Wrap(StoreDestination(st))
	before := mem.openCount()
	if _, err := CopyTo(ctx, src, again, "team/app", "v2"); err != nil {
		t.Fatal(err)
	}
	if again.Indexes() != 0 || mem.openCount() != before {
		t.Errorf("second copy: %d indexes built, %d blobs opened", again.Indexes(), mem.openCount()-before)
	}
}

// sparseLayer is a gzip'd tar holding a PAX sparse file: not indexable.
func sparseLayer(t *testing.T) string {
	t.Helper()
	rec := func(k, v string) string {
		r := " " + k + "=" + v + "\n"
		n := len(r) + 2
		for len(fmt.Sprint(n))+len(r) != n {
			n = len(fmt.Sprint(n)) + len(r)
		}
		return fmt.Sprint(n) + r
	}
	pax := rec("GNU.sparse.major", "1") + rec("GNU.sparse.minor", "0") + rec("GNU.sparse.name", "holes") + rec("GNU.sparse.realsize", "2048")
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	// archive/tar refuses to write sparse files: the PAX records by hand.
	tw.WriteHeader(&tar.Header{Name: "PaxHeaders/holes", Typeflag: tar.TypeXHeader, Size: int64(len(pax)), Format: tar.FormatUSTAR, Mode: 0o644})
	io.WriteString(tw, pax)
	tw.WriteHeader(&tar.Header{Name: "holes", Typeflag: tar.TypeReg, Size: 1024, Mode: 0o644})
	io.WriteString(tw, "1\n0\n512\n"+string(make([]byte, 1024-8-512))+noise(4, 512))
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw.Bytes())
	zw.Close()
	return gz.String()
}
