package snapshotter

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/internal/storetest"
	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/store"
)

// An image's TOCs fetched ahead serve their layers' Prepares once each;
// after that (or for another registry host) the bucket is asked again,
// so an index replaced meanwhile is seen. A layer without an index says
// so.
func TestTOCsFetchedAhead(t *testing.T) {
	e := storetest.S3(t)
	st := store.New(e.Client(t), e.NewBucket(t), store.WithPrefix("p"))
	ctx := context.Background()
	var layers []digest.Digest
	for i, name := range []string{"a", "b", "c"} {
		gz, _ := storetest.LayerTar(t, []storetest.File{{Name: name, Data: []byte(name), Mode: 0o644}})
		d := digest.FromBytes(gz)
		if _, err := st.PutBlob(ctx, d, int64(len(gz)), bytes.NewReader(gz)); err != nil {
			t.Fatal(err)
		}
		if i < 2 { // c has no index
			if _, err := lazy.IndexLayer(ctx, st, d, ""); err != nil {
				t.Fatal(err)
			}
		}
		layers = append(layers, d)
	}
	stores := []*store.Store{st}
	var tc aheadTOCs
	tc.warm(ctx, "h", stores, layers)
	for _, d := range layers {
		tc.mu.Lock()
		en := tc.m[tocKey{"h", d}]
		tc.mu.Unlock()
		if en == nil {
			t.Fatalf("%s not fetched ahead", d)
		}
		<-en.done
	}
	// Replaced in the bucket after it was fetched ahead.
	if err := st.PutExtra(ctx, lazy.Key(layers[1], "toc"), bytes.NewReader([]byte("not a toc"))); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := tc.get(ctx, "other", stores, layers[1]); !errors.Is(err, lazy.ErrInvalidIndex) {
		t.Errorf("another host: %v, want the bucket's invalid index", err)
	}
	if toc, _, got, err := tc.get(ctx, "h", stores, layers[1]); err != nil || toc.Layer != layers[1] || got != st {
		t.Fatalf("fetched ahead: %v", err)
	}
	if _, _, _, err := tc.get(ctx, "h", stores, layers[1]); !errors.Is(err, lazy.ErrInvalidIndex) {
		t.Errorf("second get: %v, want the bucket's invalid index", err)
	}
	if _, _, _, err := tc.get(ctx, "h", stores, layers[2]); !errors.Is(err, lazy.ErrNoIndex) {
		t.Errorf("no index: %v, want ErrNoIndex", err)
	}
}
