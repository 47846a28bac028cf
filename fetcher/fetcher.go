// Package fetcher reads single S3 objects fast: many concurrent ranged GETs,
// retries that resume at their offset, digest verification. It knows nothing
// of the registry layout.
//
// Every range is checked for exact length: a response that is shorter than
// asked is resumed from where it stopped, one that is longer or names another
// range is an error. A short or wrong read is never returned as data.
//
// It is also where s3snap meets the AWS SDK's configuration: LoadAWSConfig
// is the one place the node's region is learned (the SDK's chain, then the
// instance's own from IMDSv2, under one timeout), and ErrNotFound is
// s3snap's one "not found", which the store and lazy return as theirs.
package fetcher

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	digest "github.com/opencontainers/go-digest"
)

// API is the subset of *s3.Client the fetcher uses. It is the contract with
// callers: anything that speaks S3 GetObject/HeadObject will do.
type API interface {
	GetObject(ctx context.Context, in *s3.GetObjectInput, optFns ...func(*s3.Options)) (*s3.GetObjectOutput, error)
	HeadObject(ctx context.Context, in *s3.HeadObjectInput, optFns ...func(*s3.Options)) (*s3.HeadObjectOutput, error)
}

// Object names one S3 object. Size < 0 means unknown (Reader and ReaderAt
// then do a HeadObject); a known Size is trusted, so Size 0 reads as empty
// without a request. ETag, when set, is sent as If-Match on every range
// so parts of two different versions are never mixed; when empty, the ETag of
// the first response is pinned and used for the rest. Digest, when set, is
// verified at the end of a full sequential read.
type Object struct {
	Bucket, Key string
	Size        int64
	ETag        string
	Digest      digest.Digest
}

func (o Object) String() string { return "s3://" + o.Bucket + "/" + o.Key }

var (
	// ErrNotFound: the bucket or key does not exist (404, NoSuchKey,
	// NotFound). It is s3snap's one "not found": the store, lazy and the
	// migrator return it (or wrap it) for whatever they cannot find.
	ErrNotFound = errors.New("not found")
	// ErrDigestMismatch: the bytes read do not hash to Object.Digest.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrShortRead: a range kept ending before its last byte until the
	// retries ran out.
	ErrShortRead = errors.New("short read")
	// ErrBadRange: the server answered a range with other bytes than asked:
	// more bytes, another Content-Range, or another object size.
	ErrBadRange = errors.New("response does not match requested range")
	// ErrObjectChanged: the object was overwritten while being read (412
	// PreconditionFailed on If-Match, or a different ETag or size).
	ErrObjectChanged = errors.New("object changed during read")
)

// Fetcher reads S3 objects. It is safe for concurrent use; one Fetcher is
// meant to be shared by the whole process so its part buffers are reused.
type Fetcher struct {
	client API
	opts   options
	// bufs recycles part buffers (*[]byte of opts.partSize) across readers,
	// so a steady stream of blobs does not allocate per part.
	bufs sync.Pool
}

// New returns a Fetcher reading through client.
func New(client API, opts ...Option) *Fetcher {
	o := defaultOptions()
	for _, fn := range opts {
		fn(&o)
	}
	f := &Fetcher{client: client, opts: o}
	f.bufs.New = func() any {
		b := make([]byte, f.opts.partSize)
		return &b
	}
	return f
}

// Stat returns the object's size and ETag from a HeadObject. A missing object
// gives an error wrapping ErrNotFound.
func (f *Fetcher) Stat(ctx context.Context, bucket, key string) (Object, error) {
	out, err := f.client.HeadObject(ctx, &s3.HeadObjectInput{
		Bucket: aws.String(bucket),
		Key:    aws.String(key),
	})
	if err != nil {
		if isNotFound(err) {
			return Object{}, fmt.Errorf("head s3://%s/%s: %w: %w", bucket, key, ErrNotFound, err)
		}
		return Object{}, fmt.Errorf("head s3://%s/%s: %w", bucket, key, err)
	}
	if out.ContentLength == nil || *out.ContentLength < 0 {
		return Object{}, fmt.Errorf("head s3://%s/%s: no content length in response", bucket, key)
	}
	return Object{
		Bucket: bucket,
		Key:    key,
		Size:   *out.ContentLength,
		ETag:   aws.ToString(out.ETag),
	}, nil
}

// resolve fills in the size (and the ETag, if unset) with a HeadObject when
// the caller did not know the size.
func (f *Fetcher) resolve(ctx context.Context, obj Object) (Object, error) {
	if obj.Size >= 0 {
		return obj, nil
	}
	st, err := f.Stat(ctx, obj.Bucket, obj.Key)
	if err != nil {
		return Object{}, err
	}
	obj.Size = st.Size
	if obj.ETag == "" {
		obj.ETag = st.ETag
	}
	return obj, nil
}

// etagPin holds the ETag every range must carry. When the caller gave none,
// the first response's ETag is pinned, so later ranges are sent with If-Match
// and a version change mid-read fails instead of mixing bytes.
type etagPin struct {
	mu   sync.Mutex
	etag string
}

func (p *etagPin) get() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.etag
}

// check pins got if nothing is pinned yet, and otherwise reports whether got
// is the pinned ETag. Servers that send no ETag are not held to one.
func (p *etagPin) check(got string) bool {
	if got == "" {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.etag == "" {
		p.etag = got
		return true
	}
	return unquote(p.etag) == unquote(got)
}

func unquote(etag string) string {
	return strings.TrimPrefix(strings.TrimSuffix(strings.TrimPrefix(etag, "W/"), `"`), `"`)
}
