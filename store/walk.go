package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/opencontainers/go-digest"
)

// What deleting from the store needs: listing with sizes and times, reading
// links by key, deleting in batches and cleaning up multipart uploads. Every
// call goes through the store's request path (breaker, capped retries).

// MaxDeleteBatch is the most keys one DeleteObjects request takes (S3's
// own limit).
const MaxDeleteBatch = 1000

// Object is one listed object.
type Object struct {
	Key          string
	Size         int64
	LastModified time.Time
	ETag         string
}

// Upload is one incomplete multipart upload.
type Upload struct {
	Key       string
	UploadID  string
	Initiated time.Time
}

// RegistryRoot is the key prefix of the store's registry layout:
// <prefix>/docker/registry/v2/.
func (s *Store) RegistryRoot() string { return s.layout.root + "/" }

// ExtraRoot is the key prefix of the store's s3snap area: <prefix>/s3snap/.
func (s *Store) ExtraRoot() string {
	if p := strings.Trim(s.prefix, "/"); p != "" {
		return p + "/" + extraRoot + "/"
	}
	return extraRoot + "/"
}

// RepositoryKey is the key prefix of repository name, with a trailing slash.
func (s *Store) RepositoryKey(name string) string { return s.layout.repo(name) + "/" }

// BlobKey is the key of blob d's data.
func (s *Store) BlobKey(d digest.Digest) string { return s.layout.blobData(d) }

// RevisionLinkKey is the key of manifest d's revision link in repository name.
func (s *Store) RevisionLinkKey(name string, d digest.Digest) string {
	return s.layout.revisionLink(name, d)
}

// LayerLinkKey is the key of blob d's layer link in repository name.
func (s *Store) LayerLinkKey(name string, d digest.Digest) string {
	return s.layout.layerLink(name, d)
}

// TagKey is the key prefix of tag in repository name (its current link
// and index links), with a trailing slash.
func (s *Store) TagKey(name, tag string) string { return s.layout.tag(name, tag) }

// TagsKey is the key prefix of repository name's tags, with a trailing slash.
func (s *Store) TagsKey(name string) string { return s.layout.tags(name) }

// Walk calls fn for every object under key prefix, in key order, one
// listing page (at most 1000 keys) in memory at a time.
func (s *Store) Walk(ctx context.Context, prefix string, fn func(Object) error) error {
	return s.pages(ctx, prefix, "", func(page *s3.ListObjectsV2Output) error {
		for _, o := range page.Contents {
			obj := Object{Key: aws.ToString(o.Key), Size: aws.ToInt64(o.Size), ETag: aws.ToString(o.ETag)}
			if o.LastModified != nil {
				obj.LastModified = *o.LastModified
			}
			if err := fn(obj); err != nil {
				return err
			}
		}
		return nil
	})
}

// WalkDirs calls fn for every "directory" directly under key prefix (a
// listing with delimiter "/": the common prefixes, each ending in "/").
func (s *Store) WalkDirs(ctx context.Context, prefix string, fn func(dir string) error) error {
	return s.pages(ctx, prefix, "/", func(page *s3.ListObjectsV2Output) error {
		for _, cp := range page.CommonPrefixes {
			if err := fn(aws.ToString(cp.Prefix)); err != nil {
				return err
			}
		}
		return nil
	})
}

// ReadLink reads the link object at key and returns the digest it names;
// a missing link is an error wrapping ErrNotFound, a damaged one ErrCorrupt.
func (s *Store) ReadLink(ctx context.Context, key string) (digest.Digest, error) {
	return s.readLink(ctx, key)
}

// ReadManifestBlob reads blob d as a manifest, verified against d, without
// checking any repository links it (gc walks what tags reach).
func (s *Store) ReadManifestBlob(ctx context.Context, d digest.Digest) (*Manifest, error) {
	if err := validateDigest(d); err != nil {
		return nil, err
	}
	raw, err := s.getSmall(ctx, s.layout.blobData(d))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", d, err)
	}
	if got := digest.FromBytes(raw); got != d {
		return nil, fmt.Errorf("manifest %s hashes to %s: %w", d, got, ErrDigestMismatch)
	}
	return ParseManifest(raw)
}

type deleteObjectsAPI interface {
	DeleteObjects(ctx context.Context, in *s3.DeleteObjectsInput, optFns ...func(*s3.Options)) (*s3.DeleteObjectsOutput, error)
}

type multipartListAPI interface {
	ListMultipartUploads(ctx context.Context, in *s3.ListMultipartUploadsInput, optFns ...func(*s3.Options)) (*s3.ListMultipartUploadsOutput, error)
}

// Delete removes keys, in order, MaxDeleteBatch at a time with
// DeleteObjects (one DeleteObject each when the client has no
// DeleteObjects). A key already gone is not an error. Within a batch S3
// gives no order: callers that need one key gone before another delete
// them in separate calls.
func (s *Store) Delete(ctx context.Context, keys []string) error {
	dc, batched := s.client.(deleteObjectsAPI)
	for len(keys) > 0 {
		n := min(len(keys), MaxDeleteBatch)
		batch := keys[:n]
		keys = keys[n:]
		if !batched || n == 1 {
			for _, k := range batch {
				err := s.request(ctx, func(ctx context.Context, opts func(*s3.Options)) error {
					_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &k}, opts)
					return err
				})
				if err != nil && (!isNotFound(err) || isNoSuchBucket(err)) {
					return fmt.Errorf("delete s3://%s/%s: %w", s.bucket, k, err)
				}
			}
			continue
		}
		ids := make([]types.ObjectIdentifier, n)
		for i := range batch {
			ids[i] = types.ObjectIdentifier{Key: &batch[i]}
		}
		var out *s3.DeleteObjectsOutput
		err := s.request(ctx, func(ctx context.Context, opts func(*s3.Options)) (err error) {
			out, err = dc.DeleteObjects(ctx, &s3.DeleteObjectsInput{
				Bucket: &s.bucket,
				Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
			}, opts)
			return err
		})
		if err != nil {
			return fmt.Errorf("delete %d objects in s3://%s: %w", n, s.bucket, err)
		}
		var errs []error
		for _, e := range out.Errors {
			if aws.ToString(e.Code) == "NoSuchKey" {
				continue
			}
			errs = append(errs, fmt.Errorf("delete s3://%s/%s: %s: %s", s.bucket, aws.ToString(e.Key), aws.ToString(e.Code), aws.ToString(e.Message)))
			if len(errs) == 10 { // enough to say what is wrong
				break
			}
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
	}
	return nil
}

// ListUploads calls fn for every incomplete multipart upload under key
// prefix.
func (s *Store) ListUploads(ctx context.Context, prefix string, fn func(Upload) error) error {
	lc, ok := s.client.(multipartListAPI)
	if !ok {
		return fmt.Errorf("list uploads in s3://%s/%s: the S3 client cannot list multipart uploads: %w", s.bucket, prefix, errors.ErrUnsupported)
	}
	in := &s3.ListMultipartUploadsInput{Bucket: &s.bucket, Prefix: &prefix}
	for pages := 0; ; pages++ {
		var out *s3.ListMultipartUploadsOutput
		err := s.request(ctx, func(ctx context.Context, opts func(*s3.Options)) (err error) {
			out, err = lc.ListMultipartUploads(ctx, in, opts)
			return err
		})
		if err != nil {
			if isNotFound(err) {
				return s.notFound(err, "list uploads s3://"+s.bucket+"/"+prefix)
			}
			return fmt.Errorf("list uploads in s3://%s/%s: %w", s.bucket, prefix, err)
		}
		for _, u := range out.Uploads {
			up := Upload{Key: aws.ToString(u.Key), UploadID: aws.ToString(u.UploadId)}
			if u.Initiated != nil {
				up.Initiated = *u.Initiated
			}
			if err := fn(up); err != nil {
				return err
			}
		}
		if !aws.ToBool(out.IsTruncated) {
			return nil
		}
		next, nextID := aws.ToString(out.NextKeyMarker), aws.ToString(out.NextUploadIdMarker)
		// A server that says "truncated" but does not move on would loop.
		if (next == "" && nextID == "") || (next == aws.ToString(in.KeyMarker) && nextID == aws.ToString(in.UploadIdMarker)) || pages > 1_000_000 {
			return fmt.Errorf("list uploads in s3://%s/%s: listing does not advance: %w", s.bucket, prefix, ErrCorrupt)
		}
		in.KeyMarker, in.UploadIdMarker = &next, &nextID
	}
}

// AbortUpload aborts an incomplete multipart upload; one already gone is
// not an error.
func (s *Store) AbortUpload(ctx context.Context, u Upload) error {
	err := s.request(ctx, func(ctx context.Context, opts func(*s3.Options)) error {
		_, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: &u.Key, UploadId: &u.UploadID}, opts)
		return err
	})
	if err != nil && !isNotFound(err) && !isNoSuchUpload(err) {
		return fmt.Errorf("abort upload %s of s3://%s/%s: %w", u.UploadID, s.bucket, u.Key, err)
	}
	return nil
}

func isNoSuchUpload(err error) bool {
	var nsu *types.NoSuchUpload
	return errors.As(err, &nsu)
}
