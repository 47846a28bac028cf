package integration

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/store"
)

// TestStoreImageConfigBounded: an image config from the bucket is decoded
// only once it is read whole, under its size bound and hashing to its
// digest.
func TestStoreImageConfigBounded(t *testing.T) {
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	st := store.New(e.Client(t), bucket, store.WithPrefix("p"))
	ctx := context.Background()
	put := func(b []byte) digest.Digest {
		d := digest.FromBytes(b)
		if _, err := st.PutBlob(ctx, d, int64(len(b)), bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	good := put([]byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:` + digest.FromString("x").Encoded() + `"]}}`))
	cfg, err := st.ImageConfig(ctx, good)
	if err != nil || len(cfg.RootFS.DiffIDs) != 1 {
		t.Fatalf("good config: %+v, %v", cfg, err)
	}

	huge := append([]byte(`{"os":"linux","x":"`), bytes.Repeat([]byte("a"), store.MaxConfigSize)...)
	huge = append(huge, `"}`...)
	if _, err := st.ImageConfig(ctx, put(huge)); !errors.Is(err, store.ErrInvalidManifest) {
		t.Errorf("config over %d bytes: err = %v, want ErrInvalidManifest", store.MaxConfigSize, err)
	}

	// A config whose bytes were swapped in the bucket does not hash to
	// its digest: refused, though it is valid JSON.
	info, err := st.StatBlob(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	putObject(t, e, bucket, info.Key, []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`))
	if _, err := st.ImageConfig(ctx, good); !errors.Is(err, store.ErrDigestMismatch) && !errors.Is(err, store.ErrSizeMismatch) {
		t.Errorf("swapped config: err = %v, want a digest or size mismatch", err)
	}
}
