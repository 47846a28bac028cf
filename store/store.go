// Package store is the S3 layout s3snap reads and writes: images kept in a
// bucket (under an optional key prefix) exactly where CNCF Distribution's s3
// storage driver keeps them, so a stock registry can serve the same bucket.
//
// It writes blobs (verified while uploading), links them into repositories,
// stores manifests by digest and publishes tags last, only once everything a
// tag reaches is in place. It knows nothing of where images come from or of
// nodes; reading blob bytes fast is the fetcher's job.
//
// Repository names and tags follow Distribution's grammar as
// github.com/distribution/reference states it; ErrNotFound is the
// fetcher's, so a missing object and a missing tag are one error to check.
package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/s3snap/s3snap/fetcher"
)

var (
	// ErrNotFound is returned when a blob, manifest, tag or repository is
	// not in the store. It is the fetcher's own sentinel: one "not found"
	// from the S3 object up to the migrator.
	ErrNotFound = fetcher.ErrNotFound
	// ErrDigestMismatch is returned when content does not hash to the digest
	// it was stored or asked for under. It is the fetcher's own sentinel, so
	// a mismatch found while reading is the same error as one found here.
	ErrDigestMismatch = fetcher.ErrDigestMismatch
	// ErrSizeMismatch is returned when content is not the size it claimed.
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrInvalidName is returned for a malformed repository, tag or digest.
	ErrInvalidName = errors.New("invalid name")
	// ErrMissingReference is returned when a manifest or tag would point at
	// content that is not in the store yet.
	ErrMissingReference = errors.New("missing reference")
	// ErrInvalidManifest is returned for content that is not a manifest s3snap
	// understands.
	ErrInvalidManifest = errors.New("invalid manifest")
	// ErrCorrupt is returned when an object in the bucket is damaged (a link
	// that names no digest), as opposed to bad input from the caller.
	ErrCorrupt = errors.New("corrupt object")
	// ErrNoSuchBucket is returned when the bucket itself is missing; it is
	// also an ErrNotFound.
	ErrNoSuchBucket = fmt.Errorf("no such bucket: %w", ErrNotFound)
)

// Client is the subset of *s3.Client the store uses: the uploader's calls,
// the fetcher's reads, listing and deleting.
type Client interface {
	manager.UploadAPIClient
	fetcher.API
	s3.ListObjectsV2APIClient
	DeleteObject(ctx context.Context, in *s3.DeleteObjectInput, optFns ...func(*s3.Options)) (*s3.DeleteObjectOutput, error)
}

// Store is one bucket + prefix holding images in Distribution's layout. It
// is safe for concurrent use; every write is idempotent.
type Store struct {
	client Client
	bucket string
	prefix string
	layout layout
	fetch  *fetcher.Fetcher
	// manager is deprecated in favour of the pre-1.0 transfermanager; it is
	// the stable, well-tested multipart uploader, so we keep it for now.
	upload  *manager.Uploader //lint:ignore SA1019 see above
	maxMeta int64
	breaker *breaker // nil: none
}

type options struct {
	prefix            string
	fetcher           *fetcher.Fetcher
	uploadPartSize    int64
	uploadConcurrency int
	breakerThreshold  int
	breakerCooldown   time.Duration
}

// Option configures a Store.
type Option func(*options)

// WithPrefix roots the layout at prefix (Distribution's rootdirectory).
func WithPrefix(prefix string) Option { return func(o *options) { o.prefix = prefix } }

// WithFetcher sets the fetcher blobs are read with (default: fetcher.New
// with its defaults).
func WithFetcher(f *fetcher.Fetcher) Option { return func(o *options) { o.fetcher = f } }

// WithUpload sets the multipart part size and the parts one blob upload
// keeps in flight. Memory per upload is about partSize*concurrency.
func WithUpload(partSize int64, concurrency int) Option {
	return func(o *options) { o.uploadPartSize, o.uploadConcurrency = partSize, concurrency }
}

// WithBreaker sets the store's circuit breaker (see ErrUnavailable): it
// opens after threshold consecutive requests found S3 unavailable, for
// cooldown at first, doubling while S3 stays down. threshold < 1 turns it
// off. Default: DefaultBreakerThreshold, DefaultBreakerCooldown.
func WithBreaker(threshold int, cooldown time.Duration) Option {
	return func(o *options) { o.breakerThreshold, o.breakerCooldown = threshold, cooldown }
}

// New returns the store in bucket. It makes no request.
func New(client Client, bucket string, opts ...Option) *Store {
	o := options{
		uploadPartSize:    16 << 20,
		uploadConcurrency: 4,
		breakerThreshold:  DefaultBreakerThreshold,
		breakerCooldown:   DefaultBreakerCooldown,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.fetcher == nil {
		o.fetcher = fetcher.New(client)
	}
	s := &Store{
		client: client,
		bucket: bucket,
		prefix: o.prefix,
		layout: newLayout(o.prefix),
		fetch:  o.fetcher,
		//lint:ignore SA1019 manager is deprecated but stable; see Store.upload
		upload: manager.NewUploader(client, func(u *manager.Uploader) {
			u.PartSize = max(o.uploadPartSize, manager.MinUploadPartSize)
			u.Concurrency = max(o.uploadConcurrency, 1)
			u.LeavePartsOnError = false // a failed upload leaves nothing behind
		}),
		maxMeta: 4 << 20, // Distribution's own manifest size limit
	}
	s.breaker = newBreaker(s.URL(), o.breakerThreshold, o.breakerCooldown, time.Now)
	return s
}

// Bucket is the store's bucket.
func (s *Store) Bucket() string { return s.bucket }

// Prefix is the store's key prefix ("" for none).
func (s *Store) Prefix() string { return s.prefix }

// URL is the store's location as s3://bucket[/prefix].
func (s *Store) URL() string {
	if s.prefix == "" {
		return "s3://" + s.bucket
	}
	return "s3://" + s.bucket + "/" + s.prefix
}

// isNoSuchBucket reports whether an S3 error means the bucket is absent.
func isNoSuchBucket(err error) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == "NoSuchBucket"
}

// notFound wraps an S3 not-found error for what, telling a missing bucket
// from a missing key.
func (s *Store) notFound(err error, what string) error {
	if isNoSuchBucket(err) {
		return fmt.Errorf("%s: bucket %s: %w", what, s.bucket, ErrNoSuchBucket)
	}
	return fmt.Errorf("%s: %w", what, ErrNotFound)
}

// isNotFound reports whether an S3 error means the key (or bucket) is absent.
func isNotFound(err error) bool {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound {
		return true
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchKey", "NotFound", "NoSuchBucket":
			return true
		}
	}
	return errors.Is(err, fetcher.ErrNotFound)
}

// getSmall reads a small object (a link, a manifest) whole.
func (s *Store) getSmall(ctx context.Context, key string) ([]byte, error) {
	b, err := s.getLimited(ctx, key, s.maxMeta)
	if errors.Is(err, ErrSizeMismatch) {
		return nil, fmt.Errorf("s3://%s/%s is larger than %d bytes: %w", s.bucket, key, s.maxMeta, ErrInvalidManifest)
	}
	return b, err
}

// getLimited reads an object whole; one larger than limit bytes is an
// error wrapping ErrSizeMismatch.
func (s *Store) getLimited(ctx context.Context, key string, limit int64) ([]byte, error) {
	var b []byte
	err := s.request(ctx, func(ctx context.Context, opts func(*s3.Options)) error {
		out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key}, opts)
		if err != nil {
			return err
		}
		defer out.Body.Close()
		b, err = io.ReadAll(io.LimitReader(out.Body, limit+1))
		return err
	})
	if err != nil {
		if isNotFound(err) {
			return nil, s.notFound(err, "s3://"+s.bucket+"/"+key)
		}
		return nil, fmt.Errorf("get s3://%s/%s: %w", s.bucket, key, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("s3://%s/%s is larger than %d bytes: %w", s.bucket, key, limit, ErrSizeMismatch)
	}
	return b, nil
}

// putSmall writes a small object in one PutObject.
func (s *Store) putSmall(ctx context.Context, key string, body []byte) error {
	err := s.request(ctx, func(ctx context.Context, opts func(*s3.Options)) error {
		_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
			Bucket:        &s.bucket,
			Key:           &key,
			Body:          bytes.NewReader(body),
			ContentLength: aws.Int64(int64(len(body))),
			ContentType:   aws.String("application/octet-stream"),
		}, opts)
		return err
	})
	if err != nil {
		return fmt.Errorf("put s3://%s/%s: %w", s.bucket, key, err)
	}
	return nil
}

// exists reports whether key is present.
func (s *Store) exists(ctx context.Context, key string) (bool, error) {
	_, err := s.head(ctx, key)
	if err == nil {
		return true, nil
	}
	if isNotFound(err) && !isNoSuchBucket(err) {
		return false, nil
	}
	if isNotFound(err) {
		return false, s.notFound(err, "head s3://"+s.bucket+"/"+key)
	}
	return false, fmt.Errorf("head s3://%s/%s: %w", s.bucket, key, err)
}

// head makes a HeadObject of key.
func (s *Store) head(ctx context.Context, key string) (*s3.HeadObjectOutput, error) {
	var out *s3.HeadObjectOutput
	err := s.request(ctx, func(ctx context.Context, opts func(*s3.Options)) (err error) {
		out, err = s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key}, opts)
		return err
	})
	return out, err
}

// stat returns key's size and ETag, or an error wrapping ErrNotFound
// naming what.
func (s *Store) stat(ctx context.Context, key, what string) (size int64, etag string, err error) {
	out, err := s.head(ctx, key)
	if err != nil {
		if isNotFound(err) {
			return 0, "", s.notFound(err, what)
		}
		return 0, "", fmt.Errorf("head s3://%s/%s: %w", s.bucket, key, err)
	}
	if out.ContentLength == nil || *out.ContentLength < 0 {
		return 0, "", fmt.Errorf("head s3://%s/%s: no content length in response", s.bucket, key)
	}
	return *out.ContentLength, aws.ToString(out.ETag), nil
}

// pages calls fn with each page of a ListObjectsV2 of prefix (with
// delimiter, if not ""), through the store's request path: the one
// paginated listing every walk of the bucket uses.
func (s *Store) pages(ctx context.Context, prefix, delimiter string, fn func(*s3.ListObjectsV2Output) error) error {
	in := &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &prefix}
	if delimiter != "" {
		in.Delimiter = &delimiter
	}
	p := s3.NewListObjectsV2Paginator(s.client, in)
	for p.HasMorePages() {
		var page *s3.ListObjectsV2Output
		err := s.request(ctx, func(ctx context.Context, opts func(*s3.Options)) (err error) {
			page, err = p.NextPage(ctx, opts)
			return err
		})
		if err != nil {
			if isNotFound(err) {
				return s.notFound(err, "list s3://"+s.bucket+"/"+prefix)
			}
			return fmt.Errorf("list s3://%s/%s: %w", s.bucket, prefix, err)
		}
		if err := fn(page); err != nil {
			return err
		}
	}
	return nil
}

// list returns every key under prefix (no delimiter).
func (s *Store) list(ctx context.Context, prefix string, fn func(key string) error) error {
	return s.pages(ctx, prefix, "", func(page *s3.ListObjectsV2Output) error {
		for _, o := range page.Contents {
			if err := fn(aws.ToString(o.Key)); err != nil {
				return err
			}
		}
		return nil
	})
}

// listOne calls found if any key exists under prefix.
func (s *Store) listOne(ctx context.Context, prefix string, found func()) error {
	var out *s3.ListObjectsV2Output
	err := s.request(ctx, func(ctx context.Context, opts func(*s3.Options)) (err error) {
		out, err = s.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &prefix, MaxKeys: aws.Int32(1)}, opts)
		return err
	})
	if err != nil {
		if isNotFound(err) {
			return s.notFound(err, "list s3://"+s.bucket+"/"+prefix)
		}
		return fmt.Errorf("list s3://%s/%s: %w", s.bucket, prefix, err)
	}
	if len(out.Contents) > 0 {
		found()
	}
	return nil
}
