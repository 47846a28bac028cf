// Package testenv gives integration tests the real servers that
// integration/env.sh starts (an S3 server, a registry) and starts the ones a
// test needs privately (a stock registry over a bucket, a containerd).
//
// A missing server or binary skips the test on a laptop, but fails it under
// CI (CI=true): there a skip would hide a broken environment.
package testenv

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/s3snap/s3snap/internal/storetest"
)

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

// Unavailable skips t, or fails it under CI, because something the test needs
// is missing.
var Unavailable = storetest.Unavailable

// S3Env is the S3 server env.sh started.
type S3Env = storetest.S3Env

// S3 returns the running S3 server, or skips/fails t when none answers.
var S3 = storetest.S3

// EmptyBucket deletes every object (and unfinished multipart upload) in bucket.
var EmptyBucket = storetest.EmptyBucket

var answers = storetest.Answers

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
