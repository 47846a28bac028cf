// Package storetest gives tests a store to work in: the real S3 server
// integration/env.sh starts (a fresh bucket per test) and small, valid OCI
// images built in memory to put in it. Library packages' tests use it;
// integration/testenv re-exports it for the end-to-end tests.
//
// A missing server skips the test on a laptop, but fails it under CI
// (CI=true): there a skip would hide a broken environment.
package storetest

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Unavailable skips t, or fails it under CI, because something the test needs
// is missing.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and a required component is missing: "+format, args...)
	}
	t.Skipf("skipping (run integration/env.sh up): "+format, args...)
}

// S3Env is the S3 server env.sh started.
type S3Env struct {
	Endpoint  string
	AccessKey string
	SecretKey string
	Region    string
}

// S3 returns the running S3 server, or skips/fails t when none answers.
func S3(t testing.TB) *S3Env {
	t.Helper()
	e := &S3Env{
		Endpoint:  cmp.Or(os.Getenv("S3SNAP_S3_ENDPOINT"), "http://127.0.0.1:19000"),
		AccessKey: cmp.Or(os.Getenv("S3SNAP_ACCESS_KEY"), "s3snap"),
		SecretKey: cmp.Or(os.Getenv("S3SNAP_SECRET_KEY"), "s3snapsecret"),
		Region:    "us-east-1",
	}
	if !Answers(e.Endpoint) {
		Unavailable(t, "no S3 server at %s", e.Endpoint)
	}
	return e
}

// Answers reports whether anything answers HTTP at url.
func Answers(url string) bool {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}

// Config returns an aws.Config with the server's static credentials.
func (e *S3Env) Config() aws.Config {
	return aws.Config{
		Region:      e.Region,
		Credentials: credentials.NewStaticCredentialsProvider(e.AccessKey, e.SecretKey, ""),
	}
}

// Client returns a path-style client for the server.
func (e *S3Env) Client(t testing.TB) *s3.Client {
	return s3.NewFromConfig(e.Config(), func(o *s3.Options) {
		o.BaseEndpoint = aws.String(e.Endpoint)
		o.UsePathStyle = true
	})
}

// ClientFor returns a path-style client for another endpoint (a fault proxy in
// front of the server, say) with the same credentials.
func (e *S3Env) ClientFor(endpoint string, optFns ...func(*s3.Options)) *s3.Client {
	return s3.NewFromConfig(e.Config(), append([]func(*s3.Options){func(o *s3.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		o.UsePathStyle = true
	}}, optFns...)...)
}

var unsafeBucketChars = regexp.MustCompile(`[^a-z0-9-]+`)

// NewBucket creates a bucket named after the test and empties and removes it
// when the test ends.
func (e *S3Env) NewBucket(t testing.TB) string {
	t.Helper()
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := unsafeBucketChars.ReplaceAllString(strings.ToLower(t.Name()), "-")
	if len(name) > 40 {
		name = name[:40]
	}
	bucket := strings.Trim("t-"+name, "-") + "-" + hex.EncodeToString(rnd[:])
	c := e.Client(t)
	ctx := context.Background()
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &bucket}); err != nil {
		t.Fatalf("create bucket %s: %v", bucket, err)
	}
	t.Cleanup(func() {
		if os.Getenv("S3SNAP_KEEP") != "" {
			t.Logf("S3SNAP_KEEP set: leaving bucket %s", bucket)
			return
		}
		EmptyBucket(ctx, c, bucket)
		_, _ = c.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: &bucket})
	})
	return bucket
}

// EmptyBucket deletes every object (and unfinished multipart upload) in bucket.
func EmptyBucket(ctx context.Context, c *s3.Client, bucket string) {
	p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: &bucket})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return
		}
		for _, o := range page.Contents {
			_, _ = c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &bucket, Key: o.Key})
		}
	}
	ups, err := c.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &bucket})
	if err == nil {
		for _, u := range ups.Uploads {
			_, _ = c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &bucket, Key: u.Key, UploadId: u.UploadId})
		}
	}
}
