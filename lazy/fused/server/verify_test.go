package server

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/internal/storetest"
	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/lazy/fused"
	"github.com/s3snap/s3snap/store"
)

// tarOf is an uncompressed layer (its digest is its diff ID) holding
// conf with content.
func tarOf(t *testing.T, content string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: "conf", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(content))}); err != nil {
		t.Fatal(err)
	}
	_, _ = tw.Write([]byte(content))
	_ = tw.Close()
	return b.Bytes()
}

// metric is a counter of the server's /metrics.
func metric(t *testing.T, c *fused.Client, name string) float64 {
	t.Helper()
	mfs, err := c.Gather(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if mf, ok := mfs[name]; ok && len(mf.GetMetric()) == 1 {
		return mf.GetMetric()[0].GetCounter().GetValue()
	}
	return 0
}

// TestVerifyAfterPrefetch: once its prefetch has a layer, the server
// checks the tar its index rebuilds against the diff ID. A layer whose
// index was swapped for another's (consistent with itself) is then bad:
// List says so and reads of it fail with EIO. The genuine one is not.
func TestVerifyAfterPrefetch(t *testing.T) {
	e := storetest.S3(t)
	st := store.New(e.Client(t), e.NewBucket(t), store.WithPrefix("p"))
	root, c, _ := serveWith(t, func(string) []*store.Store { return []*store.Store{st} })
	ctx := context.Background()

	index := func(content string) (digest.Digest, *lazy.TOC) {
		blob := tarOf(t, content)
		layer := digest.FromBytes(blob)
		if _, err := st.PutBlob(ctx, layer, int64(len(blob)), bytes.NewReader(blob)); err != nil {
			t.Fatal(err)
		}
		if _, err := lazy.IndexLayer(ctx, st, layer, layer); err != nil {
			t.Fatal(err)
		}
		toc, _, err := lazy.FetchTOC(ctx, st, layer)
		if err != nil {
			t.Fatal(err)
		}
		return layer, toc
	}
	keep := func(toc *lazy.TOC) digest.Digest {
		enc, err := toc.Encode()
		if err != nil {
			t.Fatal(err)
		}
		d := digest.FromBytes(enc)
		dir := filepath.Join(root, "lazy", "toc")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, d.Encoded()), enc, 0o600); err != nil {
			t.Fatal(err)
		}
		return d
	}
	good, goodTOC := index("the real one")
	_, otherTOC := index("an impostor!")
	// The other layer's index, renamed: it names the good layer and its
	// diff ID, its data is the other's.
	forged := *otherTOC
	forged.Layer, forged.DiffID = good, good
	tocs := map[string]digest.Digest{"genuine": keep(goodTOC), "swapped": keep(&forged)}

	for i, tc := range []struct {
		name string
		bad  bool
	}{{"genuine", false}, {"swapped", true}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(root, "snapshots", string(rune('1'+i)), "fs")
			m := fused.Mount{Name: tc.name, Dir: dir, Layer: good, TOC: tocs[tc.name], Host: "registry.example", Store: st.URL(), DiffID: good}
			if tc.bad {
				// Its data must be the other layer's for the forged TOC to fetch.
				data, err := st.GetExtra(ctx, lazy.Key(otherTOC.Layer, "data"), 1<<20)
				if err != nil {
					t.Fatal(err)
				}
				if err := st.PutExtra(ctx, lazy.Key(good, "data"), bytes.NewReader(data)); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.Mount(ctx, m); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Unmount(ctx, dir) })
			var state fused.State
			deadline := time.Now().Add(20 * time.Second)
			for {
				states, err := c.List(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range states {
					if s.Dir == dir {
						state = s
					}
				}
				if state.Bad != "" || (!tc.bad && metric(t, c, "s3snap_lazy_verified_layers_total") >= 1) || time.Now().After(deadline) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			out, err := exec.Command("cat", filepath.Join(dir, "conf")).CombinedOutput()
			if tc.bad {
				if state.Bad == "" || !strings.Contains(state.Bad, "does not rebuild") {
					t.Errorf("List: bad = %q, want the verification failure", state.Bad)
				}
				if err == nil || !strings.Contains(string(out), "Input/output error") {
					t.Errorf("reading the swapped layer: %v\n%s; want EIO", err, out)
				}
				return
			}
			if n := metric(t, c, "s3snap_lazy_verified_layers_total"); n < 1 {
				t.Errorf("%v layers verified, want 1", n)
			}
			if state.Bad != "" || err != nil || string(out) != "the real one" {
				t.Errorf("genuine layer: bad = %q, read %q, %v", state.Bad, out, err)
			}
		})
	}
}
