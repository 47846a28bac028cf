package mirror_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/fetcher"
	"github.com/s3snap/s3snap/internal/storetest"
	"github.com/s3snap/s3snap/mirror"
	"github.com/s3snap/s3snap/store"
)

const upstream = "123456789012.dkr.ecr.us-east-1.amazonaws.com"

type fixture struct {
	e      *storetest.S3Env
	bucket string
	st     *store.Store
	srv    *httptest.Server
	im     *storetest.Image
	index  []byte
	big    []byte // a 3 MiB blob, fetched in several parts
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	e := storetest.S3(t)
	f := &fixture{e: e, bucket: e.NewBucket(t)}
	c := e.Client(t)
	f.st = store.New(c, f.bucket, store.WithPrefix("mirror"),
		store.WithFetcher(fetcher.New(c, fetcher.WithPartSize(256<<10), fetcher.WithConcurrency(4))))
	ctx := context.Background()
	plat := ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH}
	f.im = storetest.NewImage(t, plat, []storetest.File{{Name: "hello", Data: []byte("hello from s3")}})
	d := storetest.PutImage(t, f.st, "team/app", f.im)
	if err := f.st.Tag(ctx, "team/app", "v1", d); err != nil {
		t.Fatal(err)
	}
	f.index = storetest.NewIndex(t, f.im)
	di, err := f.st.PutManifest(ctx, "team/app", f.index)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.st.Tag(ctx, "team/app", "multi", di); err != nil {
		t.Fatal(err)
	}
	f.big = make([]byte, 3<<20)
	_, _ = rand.Read(f.big)
	if _, err := f.st.PutBlob(ctx, digest.FromBytes(f.big), int64(len(f.big)), bytes.NewReader(f.big)); err != nil {
		t.Fatal(err)
	}
	m, err := mirror.New(func(host string) []*store.Store {
		if host != upstream {
			return nil
		}
		return []*store.Store{f.st}
	}, mirror.WithSpool(t.TempDir(), time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(m)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) do(t *testing.T, method, path string, hdr map[string]string) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func errorCode(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Errors []struct{ Code string } `json:"errors"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
		t.Fatalf("not an OCI error body: %q", body)
	}
	return e.Errors[0].Code
}

func TestMirror(t *testing.T) {
	f := newFixture(t)
	ns := "?ns=" + upstream
	cfg := digest.FromBytes(f.im.Config)
	bigD := digest.FromBytes(f.big)
	allManifests := strings.Join([]string{ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex,
		store.MediaTypeDockerManifest, store.MediaTypeDockerManifestList, "*/*"}, ", ")

	for _, tc := range []struct {
		name, method, path string
		hdr                map[string]string
		status             int
		code               string // OCI error code
		body               []byte
		contentType        string
		digest             digest.Digest
		contentRange       string
	}{
		{name: "base", method: "GET", path: "/v2/", status: 200, body: []byte("{}")},
		{name: "manifest by tag", method: "GET", path: "/v2/team/app/manifests/v1" + ns, hdr: map[string]string{"Accept": allManifests},
			status: 200, body: f.im.Manifest, contentType: ocispec.MediaTypeImageManifest, digest: f.im.Digest},
		{name: "manifest HEAD by digest", method: "HEAD", path: "/v2/team/app/manifests/" + f.im.Digest.String() + ns,
			status: 200, body: []byte{}, contentType: ocispec.MediaTypeImageManifest, digest: f.im.Digest},
		{name: "index by tag", method: "GET", path: "/v2/team/app/manifests/multi" + ns, hdr: map[string]string{"Accept": allManifests},
			status: 200, body: f.index, contentType: ocispec.MediaTypeImageIndex, digest: digest.FromBytes(f.index)},
		{name: "index not accepted", method: "GET", path: "/v2/team/app/manifests/multi" + ns,
			hdr: map[string]string{"Accept": ocispec.MediaTypeImageManifest}, status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "unknown tag", method: "GET", path: "/v2/team/app/manifests/nope" + ns, status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "unknown repository", method: "HEAD", path: "/v2/other/manifests/v1" + ns, status: 404},
		{name: "invalid repository", method: "GET", path: "/v2/Team/App/manifests/v1" + ns, status: 404, code: "NAME_UNKNOWN"},
		{name: "no ns", method: "GET", path: "/v2/team/app/manifests/v1", status: 404, code: "NAME_UNKNOWN"},
		{name: "unmapped ns", method: "GET", path: "/v2/team/app/manifests/v1?ns=docker.io", status: 404, code: "NAME_UNKNOWN"},
		{name: "config blob", method: "GET", path: "/v2/team/app/blobs/" + cfg.String() + ns,
			status: 200, body: f.im.Config, contentType: "application/octet-stream", digest: cfg},
		{name: "big blob in parts", method: "GET", path: "/v2/team/app/blobs/" + bigD.String() + ns, status: 200, body: f.big, digest: bigD},
		{name: "blob HEAD", method: "HEAD", path: "/v2/team/app/blobs/" + bigD.String() + ns, status: 200, body: []byte{}, digest: bigD},
		{name: "blob range", method: "GET", path: "/v2/team/app/blobs/" + bigD.String() + ns, hdr: map[string]string{"Range": "bytes=1000-1999999"},
			status: 206, body: f.big[1000:2000000], contentRange: "bytes 1000-1999999/3145728"},
		{name: "blob open range", method: "GET", path: "/v2/team/app/blobs/" + bigD.String() + ns, hdr: map[string]string{"Range": "bytes=3000000-"},
			status: 206, body: f.big[3000000:], contentRange: "bytes 3000000-3145727/3145728"},
		{name: "blob range past end", method: "GET", path: "/v2/team/app/blobs/" + bigD.String() + ns, hdr: map[string]string{"Range": "bytes=4000000-"}, status: 416},
		{name: "unknown blob", method: "GET", path: "/v2/team/app/blobs/" + digest.FromString("x").String() + ns, status: 404, code: "BLOB_UNKNOWN"},
		{name: "not a digest", method: "GET", path: "/v2/team/app/blobs/latest" + ns, status: 404, code: "BLOB_UNKNOWN"},
		{name: "push refused", method: "PUT", path: "/v2/team/app/manifests/v2" + ns, status: 405, code: "UNSUPPORTED"},
		{name: "upload refused", method: "POST", path: "/v2/team/app/blobs/uploads/" + ns, status: 405, code: "UNSUPPORTED"},
		{name: "delete refused", method: "DELETE", path: "/v2/team/app/blobs/" + cfg.String() + ns, status: 405},
		{name: "catalog", method: "GET", path: "/v2/_catalog", status: 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body, err := f.do(t, tc.method, tc.path, tc.hdr)
			if err != nil {
				t.Fatalf("read body: %v", err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (body %.200q)", resp.StatusCode, tc.status, body)
			}
			if got := resp.Header.Get("Docker-Distribution-API-Version"); got != "registry/2.0" && tc.status != 405 {
				t.Errorf("Docker-Distribution-API-Version = %q", got)
			}
			if tc.code != "" {
				if got := errorCode(t, body); got != tc.code {
					t.Errorf("error code %s, want %s", got, tc.code)
				}
			}
			if tc.body != nil && !bytes.Equal(body, tc.body) {
				t.Errorf("body differs: %d bytes, want %d", len(body), len(tc.body))
			}
			if tc.body != nil && tc.method == "HEAD" {
				want := map[bool]int64{true: int64(len(f.big)), false: int64(len(f.im.Manifest))}[strings.Contains(tc.path, "/blobs/")]
				if resp.ContentLength != want {
					t.Errorf("HEAD Content-Length %d, want %d", resp.ContentLength, want)
				}
			} else if tc.body != nil && resp.ContentLength != int64(len(tc.body)) {
				t.Errorf("Content-Length %d, want %d", resp.ContentLength, len(tc.body))
			}
			if tc.contentType != "" && resp.Header.Get("Content-Type") != tc.contentType {
				t.Errorf("Content-Type %q, want %q", resp.Header.Get("Content-Type"), tc.contentType)
			}
			if tc.digest != "" && resp.Header.Get("Docker-Content-Digest") != tc.digest.String() {
				t.Errorf("Docker-Content-Digest %q, want %s", resp.Header.Get("Docker-Content-Digest"), tc.digest)
			}
			if tc.contentRange != "" && resp.Header.Get("Content-Range") != tc.contentRange {
				t.Errorf("Content-Range %q, want %q", resp.Header.Get("Content-Range"), tc.contentRange)
			}
		})
	}
}

// TestMirrorNeverServesWrongBytes: a blob damaged in the bucket is cut
// short, never delivered as a complete response.
func TestMirrorNeverServesWrongBytes(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	d := digest.FromBytes(f.big)
	info, err := f.st.StatBlob(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(f.big)
	bad[len(bad)/2] ^= 1
	c := f.e.Client(t)
	if _, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &f.bucket, Key: &info.Key, Body: bytes.NewReader(bad), ContentLength: aws.Int64(int64(len(bad)))}); err != nil {
		t.Fatal(err)
	}
	for _, rng := range []string{"", "bytes=0-", "bytes=1000-1999", fmt.Sprintf("bytes=%d-", len(bad)-1)} {
		var hdr map[string]string
		if rng != "" {
			hdr = map[string]string{"Range": rng}
		}
		resp, body, err := f.do(t, "GET", "/v2/team/app/blobs/"+d.String()+"?ns="+upstream, hdr)
		if err != nil {
			t.Fatalf("range %q: %v", rng, err)
		}
		// Not one byte of unverified content, whole or by range: a 503
		// sends containerd upstream.
		if resp.StatusCode != http.StatusServiceUnavailable || bytes.Contains(body, bad[1000:1100]) {
			t.Errorf("range %q of a corrupt blob: status %d, %d bytes", rng, resp.StatusCode, len(body))
		}
	}
}

// TestMirrorS3Down: when S3 cannot be asked (bucket deleted, server down)
// the mirror answers 404 or 503, both of which send containerd to the next
// host (see the package doc), and never hangs or answers 200.
func TestMirrorS3Down(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	paths := []string{"/v2/team/app/manifests/v1", "/v2/team/app/blobs/" + digest.FromBytes(f.big).String()}

	t.Run("server down", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l.Close() // nothing listens there now
		down := f.e.ClientFor("http://"+l.Addr().String(), func(o *s3.Options) { o.RetryMaxAttempts = 1 })
		st := store.New(down, f.bucket, store.WithPrefix("mirror"), store.WithFetcher(fetcher.New(down, fetcher.WithRetries(1))))
		m, err := mirror.New(func(string) []*store.Store { return []*store.Store{st} }, mirror.WithSpool(t.TempDir(), time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(m)
		defer srv.Close()
		for _, p := range paths {
			resp, err := http.Get(srv.URL + p + "?ns=" + upstream)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable || errorCode(t, body) != "UNAVAILABLE" {
				t.Errorf("GET %s with S3 down: %d %s, want 503 UNAVAILABLE", p, resp.StatusCode, body)
			}
		}
	})
	t.Run("bucket deleted", func(t *testing.T) {
		c := f.e.Client(t)
		storetest.EmptyBucket(ctx, c, f.bucket)
		if _, err := c.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: &f.bucket}); err != nil {
			t.Fatal(err)
		}
		for _, p := range paths {
			resp, body, _ := f.do(t, "GET", p+"?ns="+upstream, nil)
			if resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET %s with the bucket gone: %d %s, want 404 or 503", p, resp.StatusCode, body)
			}
		}
	})
}

func TestCheckLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:5050", true},
		{"127.0.0.2:5050", true},
		{"[::1]:5050", true},
		{"0.0.0.0:5050", false},
		{":5050", false},
		{"10.0.0.1:5050", false},
		{"localhost:5050", false},
		{"127.0.0.1", false},
	} {
		if err := mirror.CheckLoopback(tc.addr); (err == nil) != tc.ok {
			t.Errorf("CheckLoopback(%q) = %v, want ok=%v", tc.addr, err, tc.ok)
		}
	}
	if _, err := mirror.Listen("0.0.0.0:0"); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("Listen(0.0.0.0:0) = %v, want a loopback error", err)
	}
}
