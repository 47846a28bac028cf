package snapshotter

import (
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestParseRequest(t *testing.T) {
	l1, l2 := digest.FromString("l1"), digest.FromString("l2")
	full := map[string]string{
		"containerd.io/snapshot.ref":                 "sha256:chain",
		"containerd.io/snapshot/cri.layer-digest":    l1.String(),
		"containerd.io/snapshot/cri.image-ref":       "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app:v1",
		"containerd.io/snapshot/cri.image-layers":    l1.String() + "," + l2.String(),
		"containerd.io/snapshot/cri.manifest-digest": digest.FromString("m").String(),
		"containerd.io/snapshot/diff-id":             digest.FromString("d").String(),
	}
	without := func(k string) map[string]string {
		m := map[string]string{}
		for kk, v := range full {
			if kk != k {
				m[kk] = v
			}
		}
		return m
	}
	with := func(k, v string) map[string]string {
		m := without(k)
		m[k] = v
		return m
	}
	for _, tc := range []struct {
		name     string
		labels   map[string]string
		noLabels bool
		err      bool
		host     string
		repo     string
		layers   int
	}{
		{name: "full", labels: full, host: "123456789012.dkr.ecr.us-east-1.amazonaws.com", repo: "team/app", layers: 2},
		{name: "docker hub short name", labels: with("containerd.io/snapshot/cri.image-ref", "nginx:1"), host: "docker.io", repo: "library/nginx", layers: 2},
		{name: "registry with port", labels: with("containerd.io/snapshot/cri.image-ref", "127.0.0.1:5000/a/b@"+l1.String()), host: "127.0.0.1:5000", repo: "a/b", layers: 2},
		{name: "no layer list", labels: without("containerd.io/snapshot/cri.image-layers"), host: "123456789012.dkr.ecr.us-east-1.amazonaws.com", repo: "team/app"},
		{name: "plain prepare", labels: map[string]string{}, noLabels: true},
		{name: "no layer digest", labels: without("containerd.io/snapshot/cri.layer-digest"), noLabels: true},
		{name: "no image ref", labels: without("containerd.io/snapshot/cri.image-ref"), noLabels: true},
		{name: "bad layer digest", labels: with("containerd.io/snapshot/cri.layer-digest", "sha256:xyz"), err: true},
		{name: "bad image ref", labels: with("containerd.io/snapshot/cri.image-ref", "UPPER/Case"), err: true},
		// The diff ID label is never read: containerd 1.7 does not send it,
		// and an image can forge it. The chain ID decides (chain.go).
		{name: "diff id label ignored", labels: with("containerd.io/snapshot/diff-id", "nope"), host: "123456789012.dkr.ecr.us-east-1.amazonaws.com", repo: "team/app", layers: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseRequest(tc.labels)
			var nl errNoLabels
			if tc.noLabels != errors.As(err, &nl) {
				t.Fatalf("err = %v, want errNoLabels=%v", err, tc.noLabels)
			}
			if tc.noLabels {
				return
			}
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error=%v", err, tc.err)
			}
			if tc.err {
				return
			}
			if r.host != tc.host || r.repo != tc.repo || len(r.layers) != tc.layers || r.layer != l1 {
				t.Errorf("got host=%q repo=%q layers=%d layer=%s", r.host, r.repo, len(r.layers), r.layer)
			}
		})
	}
}
