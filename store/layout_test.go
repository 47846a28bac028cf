package store

import (
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestLayoutKeys(t *testing.T) {
	d := digest.Digest("sha256:" + "ab" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd")
	hex := d.Encoded()
	for _, tc := range []struct {
		name, prefix, got, want string
	}{
		{"blob no prefix", "", newLayout("").blobData(d), "docker/registry/v2/blobs/sha256/ab/" + hex + "/data"},
		{"blob prefix", "/p/q/", newLayout("/p/q/").blobData(d), "p/q/docker/registry/v2/blobs/sha256/ab/" + hex + "/data"},
		{"layer link nested", "p", newLayout("p").layerLink("team/app/api", d), "p/docker/registry/v2/repositories/team/app/api/_layers/sha256/" + hex + "/link"},
		{"revision", "", newLayout("").revisionLink("app", d), "docker/registry/v2/repositories/app/_manifests/revisions/sha256/" + hex + "/link"},
		{"tag current", "", newLayout("").tagCurrent("app", "v1.2"), "docker/registry/v2/repositories/app/_manifests/tags/v1.2/current/link"},
		{"tag index", "", newLayout("").tagIndex("app", "v1", d), "docker/registry/v2/repositories/app/_manifests/tags/v1/index/sha256/" + hex + "/link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got  %s\nwant %s", tc.got, tc.want)
			}
		})
	}
	if got := len(linkBody(d)); got != 71 {
		t.Errorf("link body is %d bytes, Distribution writes 71", got)
	}
}

func TestValidateTag(t *testing.T) {
	for _, tc := range []struct {
		tag string
		ok  bool
	}{
		{"v1.2", true},
		{"_x", true},
		{"Latest-1_a", true},
		{strings.Repeat("t", 128), true},
		{strings.Repeat("t", 129), false},
		{"", false},
		{".x", false},
		{"-x", false},
		{"a/b", false},
		{"a:b", false},
	} {
		if err := ValidateTag(tc.tag); (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalidName)) {
			t.Errorf("ValidateTag(%q) = %v, want ok=%v", tc.tag, err, tc.ok)
		}
	}
}

func TestValidateRepository(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"app", true},
		{"team/app/api", true},
		{"a.b_c__d--e", true},
		{"App", false},
		{"", false},
		{"app/", false},
		{"/app", false},
		{"app//api", false},
		{"app/_layers", false},
		{"../etc", false},
		{"app:tag", false},
		{"localhost:5000/app", false},
		{"Team/app", false},
		{"[::1]/app", false},
		{strings.Repeat("a", 255), true},
		{strings.Repeat("a", 256), false},
	} {
		err := ValidateRepository(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateRepository(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateRepository(%q) error %v is not ErrInvalidName", tc.name, err)
		}
	}
}

func TestParseURL(t *testing.T) {
	d := digest.FromString("x")
	for _, tc := range []struct {
		in   string
		want URL
		err  bool
	}{
		{in: "s3://b", want: URL{Bucket: "b"}},
		{in: "s3://b/", want: URL{Bucket: "b"}},
		{in: "s3://b/p/team/app:v1", want: URL{Bucket: "b", Path: "p/team/app", Tag: "v1"}},
		{in: "s3://b/app@" + d.String(), want: URL{Bucket: "b", Path: "app", Digest: d}},
		{in: "s3://b/app:v1@" + d.String(), want: URL{Bucket: "b", Path: "app", Tag: "v1", Digest: d}},
		{in: "s3://b/a/b/c", want: URL{Bucket: "b", Path: "a/b/c"}},
		{in: "b/app", err: true},
		{in: "s3://", err: true},
		{in: "s3://b:v1", err: true},
		{in: "s3://b/app@sha256:zz", err: true},
		{in: "s3://b/app:bad tag", err: true},
	} {
		got, err := ParseURL(tc.in)
		if tc.err {
			if err == nil {
				t.Errorf("ParseURL(%q) = %+v, want error", tc.in, got)
			} else if !errors.Is(err, ErrInvalidName) {
				t.Errorf("ParseURL(%q) error %v is not ErrInvalidName", tc.in, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseManifest(t *testing.T) {
	cfg := digest.FromString("config")
	layer := digest.FromString("layer")
	for _, tc := range []struct {
		name      string
		raw       string
		mediaType string
		index     bool
		blobs     int
		err       bool
	}{
		{name: "oci manifest", raw: `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"` + cfg.String() + `","size":1},"layers":[{"digest":"` + layer.String() + `","size":1}]}`,
			mediaType: "application/vnd.oci.image.manifest.v1+json", blobs: 2},
		{name: "docker manifest", raw: `{"schemaVersion":2,"mediaType":"` + MediaTypeDockerManifest + `","config":{"digest":"` + cfg.String() + `","size":1},"layers":[]}`,
			mediaType: MediaTypeDockerManifest, blobs: 1},
		{name: "foreign layer skipped", raw: `{"schemaVersion":2,"mediaType":"` + MediaTypeDockerManifest + `","config":{"digest":"` + cfg.String() + `","size":1},"layers":[{"mediaType":"` + mediaTypeDockerForeignLayer + `","digest":"` + layer.String() + `","size":1,"urls":["https://x"]}]}`,
			mediaType: MediaTypeDockerManifest, blobs: 1},
		{name: "index without mediaType", raw: `{"schemaVersion":2,"manifests":[{"digest":"` + cfg.String() + `","size":1}]}`,
			mediaType: "application/vnd.oci.image.index.v1+json", index: true},
		{name: "schema 1", raw: `{"schemaVersion":1}`, err: true},
		{name: "not json", raw: `{`, err: true},
		{name: "no config", raw: `{"schemaVersion":2,"layers":[]}`, err: true},
		{name: "bad layer digest", raw: `{"schemaVersion":2,"config":{"digest":"` + cfg.String() + `"},"layers":[{"digest":"sha256:00"}]}`, err: true},
		{name: "unknown media type", raw: `{"schemaVersion":2,"mediaType":"text/plain"}`, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseManifest([]byte(tc.raw))
			if tc.err {
				if err == nil || !(errors.Is(err, ErrInvalidManifest) || errors.Is(err, ErrInvalidName)) {
					t.Fatalf("err = %v, want ErrInvalidManifest", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.MediaType != tc.mediaType || m.IsIndex() != tc.index || len(m.Blobs()) != tc.blobs {
				t.Errorf("got mediaType=%s index=%v blobs=%d", m.MediaType, m.IsIndex(), len(m.Blobs()))
			}
			if m.Digest != digest.FromString(tc.raw) {
				t.Errorf("digest %s is not the raw bytes' digest", m.Digest)
			}
		})
	}
}
