package lazy_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/internal/storetest"
	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/store"
)

// layerOf is a gzip'd layer tar of name -> content files.
func layerOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for name, content := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(content)), ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(content))
	}
	tw.Close()
	return raw.Bytes() // an uncompressed tar is a layer too
}

// The data object's real size in the bucket is checked against the TOC's
// dataSize when the TOC is fetched and when the data is opened (the TOC
// may be a local copy): a data object of another size, or none, makes
// the index invalid, which indexing again repairs.
func TestDataObjectSizeChecked(t *testing.T) {
	e := storetest.S3(t)
	client := e.Client(t)
	bucket := e.NewBucket(t)
	st := store.New(client, bucket, store.WithPrefix("p"))
	ctx := context.Background()

	blob := layerOf(t, map[string]string{"a": "hello", "b/c": "world"})
	layer := digest.FromBytes(blob)
	if _, err := st.PutBlob(ctx, layer, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	if _, err := lazy.IndexLayer(ctx, st, layer, ""); err != nil {
		t.Fatalf("index: %v", err)
	}
	toc, _, err := lazy.FetchTOC(ctx, st, layer)
	if err != nil {
		t.Fatalf("fetch toc: %v", err)
	}
	data, err := st.GetExtra(ctx, lazy.Key(layer, "data"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	open := lazy.OpenData(ctx, st, toc)
	if _, err := open(); err != nil {
		t.Fatalf("open data: %v", err)
	}

	for _, tc := range []struct {
		name string
		data []byte // nil: no data object
	}{
		{"one byte more", append(bytes.Clone(data), 0)},
		{"truncated", data[:len(data)-1]},
		{"missing", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, err := st.ExtraKey(lazy.Key(layer, "data"))
			if err != nil {
				t.Fatal(err)
			}
			if tc.data == nil {
				if _, err := client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &bucket, Key: &key}); err != nil {
					t.Fatal(err)
				}
			} else if err := st.PutExtra(ctx, lazy.Key(layer, "data"), bytes.NewReader(tc.data)); err != nil {
				t.Fatal(err)
			}
			if _, _, err := lazy.FetchTOC(ctx, st, layer); !errors.Is(err, lazy.ErrInvalidIndex) {
				t.Errorf("fetch toc: %v, want ErrInvalidIndex", err)
			}
			if _, err := lazy.OpenData(ctx, st, toc)(); !errors.Is(err, lazy.ErrInvalidIndex) {
				t.Errorf("open data: %v, want ErrInvalidIndex", err)
			}
			res, err := lazy.IndexLayer(ctx, st, layer, "")
			if err != nil || res.Existed {
				t.Fatalf("index again: existed %v, %v; want it rebuilt", res.Existed, err)
			}
			if _, _, err := lazy.FetchTOC(ctx, st, layer); err != nil {
				t.Errorf("fetch toc after indexing again: %v", err)
			}
		})
	}

	// A hostile TOC in the bucket is invalid too (not only unsafe), so
	// indexing replaces it.
	hostile := *toc
	hostile.Entries = append([]lazy.Entry(nil), toc.Entries...)
	hostile.Entries[0].Name = "b/.wh."
	b, err := hostile.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutExtra(ctx, lazy.Key(layer, "toc"), bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := lazy.FetchTOC(ctx, st, layer); !errors.Is(err, lazy.ErrInvalidIndex) || !errors.Is(err, lazy.ErrUnsafePath) {
		t.Errorf("fetch a hostile toc: %v, want ErrInvalidIndex and ErrUnsafePath", err)
	}
	if res, err := lazy.IndexLayer(ctx, st, layer, ""); err != nil || res.Existed {
		t.Fatalf("index over a hostile toc: existed %v, %v; want it rebuilt", res.Existed, err)
	}
}
