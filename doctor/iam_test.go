package doctor

import (
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/store"
)

// policy is the part of an IAM policy document the test evaluates.
type policy struct {
	Statement []struct {
		Effect    string
		Action    oneOrMany
		Resource  oneOrMany
		Condition map[string]map[string]oneOrMany
	}
}

// oneOrMany is an IAM field that is a string or a list of strings.
type oneOrMany []string

func (o *oneOrMany) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*o = []string{one}
		return nil
	}
	return json.Unmarshal(b, (*[]string)(o))
}

// globMatch is IAM's wildcard match: * any run of characters, ? one.
func globMatch(pattern, s string) bool {
	// path.Match's * stops at /, IAM's does not: match / as an ordinary
	// character by swapping it out on both sides.
	ok, err := path.Match(strings.ReplaceAll(pattern, "/", "\x00"), strings.ReplaceAll(s, "/", "\x00"))
	return err == nil && ok
}

// allows reports whether p allows action on resource; prefix is the
// request's s3:prefix ("" for none).
func (p policy) allows(action, resource, prefix string) bool {
	for _, st := range p.Statement {
		if st.Effect != "Allow" || !anyMatch(st.Action, action) || !anyMatch(st.Resource, resource) {
			continue
		}
		ok := true
		for op, keys := range st.Condition {
			for key, values := range keys {
				if op != "StringLike" || key != "s3:prefix" || !anyMatch(values, prefix) {
					ok = false
				}
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func anyMatch(patterns []string, s string) bool {
	for _, p := range patterns {
		if globMatch(p, s) {
			return true
		}
	}
	return false
}

// TestNodePolicy: docs/iam/node-policy.json, filled in for a bucket and
// prefix, lets a node read what the agent reads, the registry layout and
// the lazy-pull indexes (TOC and data, at the keys the lazy package
// uses), and list both for doctor and for S3's 404s; nothing else.
func TestNodePolicy(t *testing.T) {
	const bucket, prefix = "my-images", "ecr"
	b, err := os.ReadFile(filepath.Join("..", "docs", "iam", "node-policy.json"))
	if err != nil {
		t.Fatal(err)
	}
	b = []byte(strings.NewReplacer("BUCKET", bucket, "PREFIX", prefix).Replace(string(b)))
	var p policy
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatalf("node-policy.json: %v", err)
	}
	st := store.New(nil, bucket, store.WithPrefix(prefix))
	layer := digest.FromString("a layer")
	extra := func(name string) string {
		k, err := st.ExtraKey(name)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	obj := func(key string) string { return "arn:aws:s3:::" + bucket + "/" + key }
	for _, tc := range []struct {
		what, action, resource, prefix string
		allowed                        bool
	}{
		{"a blob", "s3:GetObject", obj(prefix + "/docker/registry/v2/blobs/sha256/ab/" + layer.Encoded() + "/data"), "", true},
		{"a tag link", "s3:GetObject", obj(prefix + "/docker/registry/v2/repositories/team/app/_manifests/tags/v1/current/link"), "", true},
		{"a lazy TOC", "s3:GetObject", obj(extra(lazy.Key(layer, "toc"))), "", true},
		{"a lazy data object", "s3:GetObject", obj(extra(lazy.Key(layer, "data"))), "", true},
		{"listing the layout", "s3:ListBucket", "arn:aws:s3:::" + bucket, prefix + "/docker/registry/v2/repositories/", true},
		{"listing the lazy indexes", "s3:ListBucket", "arn:aws:s3:::" + bucket, extra("lazy") + "/", true},
		{"another prefix", "s3:GetObject", obj("other/docker/registry/v2/blobs/sha256/ab/x/data"), "", false},
		{"s3snap's other objects", "s3:GetObject", obj(extra("journal/x")), "", false},
		// S3 answers 404 for a missing key only to a principal that may
		// list the bucket (a prefix condition does not count: GET and HEAD
		// carry no s3:prefix); otherwise 403, which reads as S3 refusing
		// the node and trips the store's breaker.
		{"listing the bucket", "s3:ListBucket", "arn:aws:s3:::" + bucket, "", true},
		{"writing", "s3:PutObject", obj(prefix + "/docker/registry/v2/blobs/sha256/ab/x/data"), "", false},
	} {
		if got := p.allows(tc.action, tc.resource, tc.prefix); got != tc.allowed {
			t.Errorf("%s: %s on %s (prefix %q) allowed = %v, want %v", tc.what, tc.action, tc.resource, tc.prefix, got, tc.allowed)
		}
	}
}
