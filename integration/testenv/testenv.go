// Package testenv gives integration tests the real servers that
// integration/env.sh starts (an S3 server, a registry) and starts the ones a
// test needs privately (a stock registry over a bucket, a containerd).
//
// A missing server or binary skips the test on a laptop, but fails it under
// CI (CI=true): there a skip would hide a broken environment.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
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

func getenv(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// BinDir is where env.sh caches the binaries it builds.
func BinDir() string {
	if v := os.Getenv("S3SNAP_BIN"); v != "" {
		return v
	}
	if v := os.Getenv("S3SNAP_CACHE"); v != "" {
		return filepath.Join(v, "bin")
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "s3snap", "bin")
}

// Bin returns the path of a binary env.sh installed (or one on PATH).
func Bin(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(BinDir(), name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/" + name); err == nil {
		return "/usr/sbin/" + name
	}
	if _, err := os.Stat("/usr/bin/" + name); err == nil {
		return "/usr/bin/" + name
	}
	Unavailable(t, "binary %s not found in %s", name, BinDir())
	return ""
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
		Endpoint:  getenv("S3SNAP_S3_ENDPOINT", "http://127.0.0.1:19000"),
		AccessKey: getenv("S3SNAP_ACCESS_KEY", "s3snap"),
		SecretKey: getenv("S3SNAP_SECRET_KEY", "s3snapsecret"),
		Region:    "us-east-1",
	}
	if !answers(e.Endpoint) {
		Unavailable(t, "no S3 server at %s", e.Endpoint)
	}
	return e
}

func answers(url string) bool {
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

// Keys lists every key in bucket under prefix.
func Keys(t testing.TB, c *s3.Client, bucket, prefix string) []string {
	t.Helper()
	var keys []string
	p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: &bucket, Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatalf("list s3://%s/%s: %v", bucket, prefix, err)
		}
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	return keys
}

// MultipartUploads lists the unfinished multipart uploads in bucket.
func MultipartUploads(t testing.TB, c *s3.Client, bucket string) []types.MultipartUpload {
	t.Helper()
	out, err := c.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: &bucket})
	if err != nil {
		t.Fatalf("list multipart uploads in %s: %v", bucket, err)
	}
	return out.Uploads
}
