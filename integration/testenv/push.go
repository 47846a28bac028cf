package testenv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"

	"github.com/opencontainers/go-digest"
)

// PushToRegistry uploads im (blobs, then manifest under tag) to a plain-http
// registry at addr with the distribution API, so the registry and a bucket
// can hold byte-identical copies of one image.
func PushToRegistry(t testing.TB, addr, repo, tag string, im *Image) {
	t.Helper()
	for d, b := range im.Blobs() {
		pushBlob(t, addr, repo, d, b)
	}
	req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("http://%s/v2/%s/manifests/%s", addr, repo, tag), bytes.NewReader(im.Manifest))
	req.Header.Set("Content-Type", mediaTypeOf(im.Manifest))
	doOK(t, req, http.StatusCreated)
}

// PushIndexToRegistry uploads an index (its children must be pushed).
func PushIndexToRegistry(t testing.TB, addr, repo, tag string, index []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("http://%s/v2/%s/manifests/%s", addr, repo, tag), bytes.NewReader(index))
	req.Header.Set("Content-Type", mediaTypeOf(index))
	doOK(t, req, http.StatusCreated)
}

func pushBlob(t testing.TB, addr, repo string, d digest.Digest, b []byte) {
	t.Helper()
	head, _ := http.NewRequest(http.MethodHead, fmt.Sprintf("http://%s/v2/%s/blobs/%s", addr, repo, d), nil)
	if resp, err := http.DefaultClient.Do(head); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return
		}
	}
	start, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("http://%s/v2/%s/blobs/uploads/", addr, repo), nil)
	resp := doOK(t, start, http.StatusAccepted)
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	if loc.Host == "" {
		loc.Scheme, loc.Host = "http", addr
	}
	q := loc.Query()
	q.Set("digest", d.String())
	loc.RawQuery = q.Encode()
	put, _ := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(b))
	put.Header.Set("Content-Type", "application/octet-stream")
	doOK(t, put, http.StatusCreated)
}

func doOK(t testing.TB, req *http.Request, want int) *http.Response {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %s: %s", req.Method, req.URL, resp.Status, body)
	}
	return resp
}

func mediaTypeOf(manifest []byte) string {
	var probe struct {
		MediaType string `json:"mediaType"`
	}
	_ = json.Unmarshal(manifest, &probe)
	return probe.MediaType
}
