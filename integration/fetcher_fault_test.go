package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/s3snap/s3snap/fetcher"
	"github.com/s3snap/s3snap/integration/faultproxy"
)

// These tests put the fault proxy between the fetcher and the real S3
// server. Every case ends with the right bytes or a clear error.

// expectBytes reads obj fully and fails unless it is exactly want.
func expectBytes(t *testing.T, f *fetcher.Fetcher, obj fetcher.Object, want []byte) {
	t.Helper()
	got, err := readAllFetch(context.Background(), f, obj)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes that differ from the %d expected", len(got), len(want))
	}
}

func TestFetcherFaultProxyPassThrough(t *testing.T) {
	s := newFaultSetup(t, 3*fetchPart+9)
	h := s.proxy.Add(faultproxy.Rule{Method: "GET", Key: s.key})
	expectBytes(t, testFetcher(s.client()), s.obj, s.data)
	if h.Matched() != 4 || s.proxy.Count() != 4 {
		t.Fatalf("matched %d, count %d; want 4 ranged GETs", h.Matched(), s.proxy.Count())
	}
}

func TestFetcherResetMidBody(t *testing.T) {
	s := newFaultSetup(t, 6*fetchPart)
	h := s.proxy.Add(faultproxy.Rule{Method: "GET", Key: s.key, Nth: 2, Fault: faultproxy.Reset, After: 20000})
	expectBytes(t, testFetcher(s.client()), s.obj, s.data)
	if h.Fired() != 1 {
		t.Fatalf("reset fired %d times, want 1", h.Fired())
	}
	if n := len(s.gets()); n != 7 {
		t.Fatalf("%d GETs, want 6 parts + 1 resumed", n)
	}
}

func TestFetcherResetBeforeHeaders(t *testing.T) {
	s := newFaultSetup(t, 2*fetchPart)
	h := s.proxy.Add(faultproxy.Rule{Method: "GET", Key: s.key, First: 3, Fault: faultproxy.Reset, After: -1})
	expectBytes(t, testFetcher(s.client(), fetcher.WithConcurrency(1)), s.obj, s.data)
	if h.Fired() != 3 {
		t.Fatalf("reset fired %d times, want 3", h.Fired())
	}
}

// TestFetcherTruncatedBodyResumes checks a body cut short is resumed at the
// exact byte it stopped at, not downloaded again.
func TestFetcherTruncatedBodyResumes(t *testing.T) {
	s := newFaultSetup(t, 3*fetchPart)
	h := s.proxy.Add(faultproxy.Rule{Method: "GET", Key: s.key, Nth: 1, Fault: faultproxy.Truncate, After: 1000})
	expectBytes(t, testFetcher(s.client(), fetcher.WithConcurrency(1)), s.obj, s.data)
	if h.Fired() != 1 {
		t.Fatalf("truncate fired %d times, want 1", h.Fired())
	}
	var ranges []string
	for _, r := range s.gets() {
		ranges = append(ranges, r.Range)
	}
	want := []string{
		fmt.Sprintf("bytes=0-%d", fetchPart-1),
		fmt.Sprintf("bytes=1000-%d", fetchPart-1), // resumed where the body stopped
		fmt.Sprintf("bytes=%d-%d", fetchPart, 2*fetchPart-1),
		fmt.Sprintf("bytes=%d-%d", 2*fetchPart, 3*fetchPart-1),
	}
	if strings.Join(ranges, " ") != strings.Join(want, " ") {
		t.Fatalf("ranges requested:\n got %v\nwant %v", ranges, want)
	}
	// The resumed GET still carries If-Match.
	for _, r := range s.gets() {
		if r.IfMatch == "" {
			t.Fatalf("GET %s without If-Match", r.Range)
		}
	}
}

func TestFetcherTruncatedEveryTime(t *testing.T) {
	s := newFaultSetup(t, fetchPart)
	s.proxy.Add(faultproxy.Rule{Method: "GET", Key: s.key, Fault: faultproxy.Truncate, After: 100})
	f := testFetcher(s.client(), fetcher.WithRetries(3))
	_, err := readAllFetch(context.Background(), f, s.obj)
	if !errors.Is(err, fetcher.ErrShortRead) {
		t.Fatalf("err = %v, want ErrShortRead", err)
	}
	if !strings.Contains(err.Error(), "got 300 of 65536 bytes after 3 attempts") {
		t.Fatalf("error does not say how far it got: %v", err)
	}
}

func TestFetcherSlowDownThenOK(t *testing.T) {
	s := newFaultSetup(t, 4*fetchPart+1)
	h := s.proxy.Add(faultproxy.Rule{Method: "GET", Key: s.key, First: 3, Fault: faultproxy.SlowDown})
	expectBytes(t, testFetcher(s.client()), s.obj, s.data)
	if h.Fired() != 3 {
		t.Fatalf("slowdown fired %d times, want 3", h.Fired())
	}
	if n := len(s.gets()); n != 5+3 {
		t.Fatalf("%d GETs, want 5 parts + 3 retries", n)
	}
}

func TestFetcherSlowDownRetryAfter(t *testing.T) {
	s := newFaultSetup(t, fetchPart)
	s.proxy.Add(faultproxy.Rule{Method: "GET", Key: s.key, Nth: 1, Fault: faultproxy.SlowDown, RetryAfter: 1})
	f := testFetcher(s.client(), fetcher.WithBackoff(time.Millisecond, 5*time.Second))
	start := time.Now()
	expectBytes(t, f, s.obj, s.data)
	if d := time.Since(start); d < time.Second {
		t.Fatalf("retried after %v, Retry-After asked 1s", d)
	}
}

func TestFetcherPersistentSlowDown(t *testing.T) {
	s := newFaultSetup(t, fetchPart)
	h := s.proxy.Add(faultproxy.Rule{Method: "GET", Key: s.key, Fault: faultproxy.SlowDown})
	f := testFetcher(s.client(), fetcher.WithRetries(4))
	_, err := readAllFetch(context.Background(), f, s.obj)
	if err == nil {
		t.Fatal("persistent SlowDown: read succeeded")
	}
	for _, want := range []string{"s3://" + s.bucket + "/" + s.key, "range 0-65535", "giving up after 4 attempts", "SlowDown"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q lacks %q", err, want)
		}
	}
	if h.Fired() != 4 {
		t.Fatalf("%d attempts reached the server, want 4", h.Fired())
	}
}

func TestFetcherServerErrors(t *testing.T) {
	for _, tc := range []struct {
		status    int
		code      string
		attempts  int // how many GETs the failing part gets
		wantError bool
	}{
		{500, "InternalError", 2, false},
		{502, "BadGateway", 2, false},
		{504, "GatewayTimeout", 2, false},
		{403, "AccessDenied", 1, true},
		{400, "InvalidRequest", 1, true},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			s := newFaultSetup(t, fetchPart)
			h := s.proxy.Add(faultproxy.Rule{Method: "GET", Key: s.key, Nth: 1, Fault: faultproxy.Status, Status: tc.status, Code: tc.code})
			got, err := readAllFetch(context.Background(), testFetcher(s.client()), s.obj)
			if tc.wantError {
				if err == nil || !strings.Contains(err.Error(), tc.code) {
					t.Fatalf("err = %v, want one naming %s", err, tc.code)
				}
			} else if err != nil || !bytes.Equal(got, s.data) {
				t.Fatalf("err = %v, equal = %v", err, bytes.Equal(got, s.data))
			}
			if h.Matched() != tc.attempts {
				t.Fatalf("%d GETs, want %d", h.Matched(), tc.attempts)
			}
		})
	}
}

func TestFetcherFlippedByte(t *testing.T) {
	s := newFaultSetup(t, 3*fetchPart)
	s.proxy.Add(faultproxy.Rule{Method: "GET", Key: s.key, Nth: 2, Fault: faultproxy.FlipByte, After: 777})
	_, err := readAllFetch(context.Background(), testFetcher(s.client()), s.obj)
	if !errors.Is(err, fetcher.ErrDigestMismatch) {
		t.Fatalf("flipped byte with digest: err = %v, want ErrDigestMismatch", err)
	}
	// Through WriteTo too.
	s.proxy.Reset()
	s.proxy.Add(faultproxy.Rule{Method: "GET", Key: s.key, Nth: 3, Fault: faultproxy.FlipByte, After: 0})
	r, err := testFetcher(s.client()).Reader(context.Background(), s.obj)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.Copy(io.Discard, r); !errors.Is(err, fetcher.ErrDigestMismatch) {
		t.Fatalf("io.Copy of flipped byte: err = %v, want ErrDigestMismatch", err)
	}
}

func TestFetcherStallResumes(t *testing.T) {
	s := newFaultSetup(t, 2*fetchPart)
	h := s.proxy.Add(faultproxy.Rule{Method: "GET", Key: s.key, Nth: 1, Fault: faultproxy.Stall, After: 5000, Delay: 20 * time.Second})
	f := testFetcher(s.client(), fetcher.WithConcurrency(1), fetcher.WithStallTimeout(300*time.Millisecond))
	start := time.Now()
	expectBytes(t, f, s.obj, s.data)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("stalled read took %v", d)
	}
	if h.Fired() != 1 {
		t.Fatalf("stall fired %d times", h.Fired())
	}
	if g := s.gets(); len(g) != 3 || g[1].Range != fmt.Sprintf("bytes=5000-%d", fetchPart-1) {
		t.Fatalf("GETs %+v: want the stalled part resumed at 5000", g)
	}
}

// TestFetcherObjectChangedMidRead overwrites the object while it is being
// read: the read must fail with ErrObjectChanged, never mix two versions.
func TestFetcherObjectChangedMidRead(t *testing.T) {
	for _, tc := range []struct {
		name string
		etag bool // ETag given by the caller, or pinned from the first part
	}{
		{"etag given", true},
		{"etag pinned", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newFaultSetup(t, 4*fetchPart)
			newData := fetchData(99, len(s.data))
			s.proxy.Add(faultproxy.Rule{Method: "GET", Key: s.key, Nth: 3, Hook: func(*http.Request) {
				_, err := s.direct.PutObject(context.Background(), &s3.PutObjectInput{
					Bucket: aws.String(s.bucket), Key: aws.String(s.key), Body: bytes.NewReader(newData),
				})
				if err != nil {
					t.Errorf("overwrite: %v", err)
				}
			}})
			obj := s.obj
			obj.Digest = "" // the check must not depend on the digest
			if !tc.etag {
				obj.ETag = ""
			}
			got, err := readAllFetch(context.Background(), testFetcher(s.client(), fetcher.WithConcurrency(1)), obj)
			if !errors.Is(err, fetcher.ErrObjectChanged) {
				t.Fatalf("err = %v, want ErrObjectChanged", err)
			}
			t.Logf("overwritten mid-read: %v", err)
			if !bytes.Equal(got, s.data[:len(got)]) {
				t.Fatal("bytes delivered before the error are not all from the first version")
			}
			if len(got) != 2*fetchPart {
				t.Fatalf("delivered %d bytes, want the 2 parts read before the overwrite", len(got))
			}
		})
	}
}
