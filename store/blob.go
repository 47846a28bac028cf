package store

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/fetcher"
)

// BlobInfo describes a blob in the store.
type BlobInfo struct {
	Digest digest.Digest
	Size   int64
	Key    string // object key of its data
	ETag   string
}

// StatBlob returns the blob's size, or ErrNotFound.
func (s *Store) StatBlob(ctx context.Context, d digest.Digest) (BlobInfo, error) {
	if err := validateDigest(d); err != nil {
		return BlobInfo{}, err
	}
	key := s.layout.blobData(d)
	size, etag, err := s.stat(ctx, key, "blob "+d.String())
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return BlobInfo{}, err
		}
		return BlobInfo{}, fmt.Errorf("stat blob %s: %w", d, err)
	}
	return BlobInfo{Digest: d, Size: size, Key: key, ETag: etag}, nil
}

// HasBlob reports whether the blob is in the bucket.
func (s *Store) HasBlob(ctx context.Context, d digest.Digest) (bool, error) {
	_, err := s.StatBlob(ctx, d)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// PutBlob uploads the blob read from r (multipart for large blobs), hashing
// as it goes. If r does not yield exactly size bytes (size < 0: any size)
// hashing to d, the upload is aborted before it completes, so nothing is left
// behind. A blob already in the bucket with the right size is not uploaded
// again and r is not read: existed reports that.
func (s *Store) PutBlob(ctx context.Context, d digest.Digest, size int64, r io.Reader) (existed bool, err error) {
	if err := validateDigest(d); err != nil {
		return false, err
	}
	info, err := s.StatBlob(ctx, d)
	switch {
	case err == nil && (size < 0 || info.Size == size):
		return true, nil
	case err == nil:
		// A blob with this digest but the wrong size can only be a damaged
		// object: replace it with the verified one.
	case !errors.Is(err, ErrNotFound):
		return false, err
	}
	key := s.layout.blobData(d)
	vr := &verifyingReader{r: r, want: d, size: size, h: d.Algorithm().Hash()}
	in := &s3.PutObjectInput{
		Bucket:      &s.bucket,
		Key:         &key,
		Body:        vr,
		ContentType: aws.String("application/octet-stream"),
	}
	if err := s.uploadObject(ctx, in); err != nil {
		// The verifying reader's own error is the one worth reporting.
		if vr.err != nil {
			return false, fmt.Errorf("put blob %s: %w", d, vr.err)
		}
		if isNoSuchBucket(err) {
			return false, s.notFound(err, "put blob "+d.String())
		}
		var mu manager.MultiUploadFailure
		if errors.As(err, &mu) {
			return false, fmt.Errorf("put blob %s (upload %s aborted): %w", d, mu.UploadID(), err)
		}
		return false, fmt.Errorf("put blob %s: %w", d, err)
	}
	return false, nil
}

// verifyingReader hashes what passes through and, instead of io.EOF, returns
// an error when the total is not the expected size or digest. The uploader
// then aborts rather than completing the object.
type verifyingReader struct {
	r    io.Reader
	want digest.Digest
	size int64
	h    hash.Hash
	n    int64
	err  error
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.size >= 0 && v.n > v.size {
		v.err = fmt.Errorf("read more than %d bytes: %w", v.size, ErrSizeMismatch)
		return n, v.err
	}
	if err == io.EOF {
		if v.size >= 0 && v.n != v.size {
			v.err = fmt.Errorf("got %d bytes, want %d: %w", v.n, v.size, ErrSizeMismatch)
			return n, v.err
		}
		if got := digest.NewDigest(v.want.Algorithm(), v.h); got != v.want {
			v.err = fmt.Errorf("content hashes to %s: %w", got, ErrDigestMismatch)
			return n, v.err
		}
		return n, io.EOF
	}
	if err != nil {
		v.err = err
	}
	return n, err
}

// OpenBlob returns the blob's bytes in order, fetched with parallel ranged
// GETs. The digest is verified at the end: the last Read returns an error
// wrapping ErrDigestMismatch instead of io.EOF if it does not match.
func (s *Store) OpenBlob(ctx context.Context, d digest.Digest) (io.ReadCloser, BlobInfo, error) {
	info, err := s.StatBlob(ctx, d)
	if err != nil {
		return nil, BlobInfo{}, err
	}
	rc, err := s.openReader(ctx, fetcher.Object{Bucket: s.bucket, Key: info.Key, Size: info.Size, ETag: info.ETag, Digest: d})
	if err != nil {
		return nil, BlobInfo{}, fmt.Errorf("open blob %s: %w", d, err)
	}
	return rc, info, nil
}

// BlobReaderAt gives random access to the blob (no digest check: the
// caller reads parts, so verifying is its business).
func (s *Store) BlobReaderAt(ctx context.Context, d digest.Digest) (*ReaderAt, error) {
	info, err := s.StatBlob(ctx, d)
	if err != nil {
		return nil, err
	}
	ra, err := s.fetch.ReaderAt(ctx, fetcher.Object{Bucket: s.bucket, Key: info.Key, Size: info.Size, ETag: info.ETag})
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", d, err)
	}
	return &ReaderAt{ra: ra, ctx: ctx, b: s.breaker}, nil
}

// LinkBlob makes a blob (a config or layer) part of repository name, after
// checking it is in the bucket.
func (s *Store) LinkBlob(ctx context.Context, name string, d digest.Digest) error {
	if err := ValidateRepository(name); err != nil {
		return err
	}
	if _, err := s.StatBlob(ctx, d); err != nil {
		return fmt.Errorf("link %s into %s: %w", d, name, err)
	}
	return s.putSmall(ctx, s.layout.layerLink(name, d), linkBody(d))
}

// readLink reads a link object and checks it names a digest.
func (s *Store) readLink(ctx context.Context, key string) (digest.Digest, error) {
	b, err := s.getSmall(ctx, key)
	if err != nil {
		return "", err
	}
	d, err := digest.Parse(string(b))
	if err != nil {
		return "", fmt.Errorf("link s3://%s/%s holds %q: %w", s.bucket, key, truncate(b, 80), ErrCorrupt)
	}
	return d, nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}
