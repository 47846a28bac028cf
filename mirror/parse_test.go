package mirror

import "testing"

func TestParsePath(t *testing.T) {
	for _, tc := range []struct {
		path string
		want route
		ok   bool
	}{
		{"/v2/", route{kind: kindBase}, true},
		{"/v2", route{kind: kindBase}, true},
		{"/v2/app/manifests/v1", route{kindManifest, "app", "v1"}, true},
		{"/v2/team/app/api/manifests/sha256:abc", route{kindManifest, "team/app/api", "sha256:abc"}, true},
		{"/v2/team/blobs/app/blobs/sha256:abc", route{kindBlob, "team/blobs/app", "sha256:abc"}, true},
		{"/v2/manifests/manifests/v1", route{kindManifest, "manifests", "v1"}, true},
		{"/v2/app/blobs/uploads/123", route{kind: kindOther}, false},
		{"/v2/app/manifests/", route{kind: kindOther}, false},
		{"/v2/app/tags/list", route{kind: kindOther}, false},
		{"/v1/app/manifests/v1", route{kind: kindOther}, false},
	} {
		got, ok := parsePath(tc.path)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parsePath(%q) = %+v, %v; want %+v, %v", tc.path, got, ok, tc.want, tc.ok)
		}
	}
}

func TestAccepts(t *testing.T) {
	const oci = "application/vnd.oci.image.manifest.v1+json"
	for _, tc := range []struct {
		accept []string
		want   bool
	}{
		{nil, true},
		{[]string{oci}, true},
		{[]string{"application/vnd.docker.distribution.manifest.v2+json, " + oci}, true},
		{[]string{"application/vnd.docker.distribution.manifest.v2+json", oci}, true},
		{[]string{"*/*"}, true},
		{[]string{"application/*"}, true},
		{[]string{"application/vnd.docker.distribution.manifest.v2+json"}, false},
		{[]string{oci + "; q=0"}, false},
		{[]string{"garbage;;"}, false},
	} {
		if got := accepts(tc.accept, oci); got != tc.want {
			t.Errorf("accepts(%q) = %v, want %v", tc.accept, got, tc.want)
		}
	}
}
