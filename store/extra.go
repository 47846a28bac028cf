package store

import (
	"context"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/s3snap/s3snap/fetcher"
)

// s3snap's own objects (lazy-pull indexes, journals) live beside the
// registry layout, under <prefix>/s3snap/, where no Distribution reader
// looks: they never change what a stock registry serves.
const extraRoot = "s3snap"

// ExtraKey is the object key of name in the store's s3snap area:
// <prefix>/s3snap/<name>. name must be a clean relative path.
func (s *Store) ExtraKey(name string) (string, error) {
	if name == "" || strings.HasPrefix(name, "/") || path.Clean(name) != name || strings.HasPrefix(name, "../") || name == ".." {
		return "", fmt.Errorf("extra object name %q: %w", name, ErrInvalidName)
	}
	if p := strings.Trim(s.prefix, "/"); p != "" {
		return p + "/" + extraRoot + "/" + name, nil
	}
	return extraRoot + "/" + name, nil
}

// PutExtra uploads r (of any length; multipart when large) as extra object
// name. A failed upload leaves nothing behind.
func (s *Store) PutExtra(ctx context.Context, name string, r io.Reader) error {
	key, err := s.ExtraKey(name)
	if err != nil {
		return err
	}
	in := &s3.PutObjectInput{Bucket: &s.bucket, Key: &key, Body: r, ContentType: aws.String("application/octet-stream")}
	//lint:ignore SA1019 manager is deprecated but stable; see Store.upload
	if _, err := s.upload.Upload(ctx, in); err != nil {
		if isNoSuchBucket(err) {
			return s.notFound(err, "put s3://"+s.bucket+"/"+key)
		}
		return fmt.Errorf("put s3://%s/%s: %w", s.bucket, key, err)
	}
	return nil
}

// StatExtra returns extra object name's size, or an error wrapping
// ErrNotFound.
func (s *Store) StatExtra(ctx context.Context, name string) (int64, error) {
	key, err := s.ExtraKey(name)
	if err != nil {
		return 0, err
	}
	obj, err := s.fetch.Stat(ctx, s.bucket, key)
	if err != nil {
		if isNotFound(err) {
			return 0, s.notFound(err, "s3://"+s.bucket+"/"+key)
		}
		return 0, fmt.Errorf("stat s3://%s/%s: %w", s.bucket, key, err)
	}
	return obj.Size, nil
}

// GetExtra reads extra object name whole; one larger than limit bytes is
// an error (ErrSizeMismatch), so a damaged object cannot exhaust memory.
func (s *Store) GetExtra(ctx context.Context, name string, limit int64) ([]byte, error) {
	key, err := s.ExtraKey(name)
	if err != nil {
		return nil, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		if isNotFound(err) {
			return nil, s.notFound(err, "s3://"+s.bucket+"/"+key)
		}
		return nil, fmt.Errorf("get s3://%s/%s: %w", s.bucket, key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(io.LimitReader(out.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read s3://%s/%s: %w", s.bucket, key, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("s3://%s/%s is larger than %d bytes: %w", s.bucket, key, limit, ErrSizeMismatch)
	}
	return b, nil
}

// ExtraReaderAt gives random access (parallel ranged GETs) to extra object
// name of the given size, bound to ctx. It makes no request until read.
func (s *Store) ExtraReaderAt(ctx context.Context, name string, size int64) (*fetcher.ReaderAt, error) {
	key, err := s.ExtraKey(name)
	if err != nil {
		return nil, err
	}
	return s.fetch.ReaderAt(ctx, fetcher.Object{Bucket: s.bucket, Key: key, Size: size})
}
