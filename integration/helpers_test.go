package integration

import (
	"bytes"
	"context"
	"io"
	"os"
	"syscall"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/s3snap/s3snap/integration/testenv"
)

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readObject(t testing.TB, e *testenv.S3Env, bucket, key string) []byte {
	t.Helper()
	out, err := e.Client(t).GetObject(context.Background(), &s3.GetObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		t.Fatalf("get s3://%s/%s: %v", bucket, key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func deleteObject(t testing.TB, e *testenv.S3Env, bucket, key string) {
	t.Helper()
	if _, err := e.Client(t).DeleteObject(context.Background(), &s3.DeleteObjectInput{Bucket: &bucket, Key: &key}); err != nil {
		t.Fatalf("delete s3://%s/%s: %v", bucket, key, err)
	}
}

func putObject(t testing.TB, e *testenv.S3Env, bucket, key string, data []byte) {
	t.Helper()
	if _, err := e.Client(t).PutObject(context.Background(), &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: bytes.NewReader(data)}); err != nil {
		t.Fatalf("put s3://%s/%s: %v", bucket, key, err)
	}
}

type syscallStat = syscall.Stat_t

func linkCount(t testing.TB, path string, st *syscall.Stat_t) uint64 {
	t.Helper()
	if err := syscall.Stat(path, st); err != nil {
		t.Fatal(err)
	}
	return uint64(st.Nlink)
}
