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
	if err := s.uploadObject(ctx, in); err != nil {
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
	size, _, err := s.stat(ctx, key, "s3://"+s.bucket+"/"+key)
	return size, err
}

// GetExtra reads extra object name whole; one larger than limit bytes is
// an error (ErrSizeMismatch), so a damaged object cannot exhaust memory.
func (s *Store) GetExtra(ctx context.Context, name string, limit int64) ([]byte, error) {
	key, err := s.ExtraKey(name)
	if err != nil {
		return nil, err
	}
	return s.getLimited(ctx, key, limit)
}

// ExtraReaderAt gives random access (parallel ranged GETs) to extra object
// name of the given size, bound to ctx. It makes no request until read,
// and its reads are never refused by the circuit breaker (see ReaderAt).
func (s *Store) ExtraReaderAt(ctx context.Context, name string, size int64) (*ReaderAt, error) {
	key, err := s.ExtraKey(name)
	if err != nil {
		return nil, err
	}
	ra, err := s.fetch.ReaderAt(ctx, fetcher.Object{Bucket: s.bucket, Key: key, Size: size})
	if err != nil {
		return nil, err
	}
	return &ReaderAt{ra: ra, ctx: ctx, b: s.breaker}, nil
}
