package lifecycle

import (
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// FuzzPolicy: a lifecycle policy read back from the bucket is untrusted.
// Parse either refuses it or returns one Evaluate runs on without a panic,
// deciding every image once.
func FuzzPolicy(f *testing.F) {
	for _, seed := range []string{
		`{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["v"],"countType":"imageCountMoreThan","countNumber":10},"action":{"type":"expire"}}]}`,
		`{"rules":[{"rulePriority":1,"selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":7},"action":{"type":"expire"}},{"rulePriority":2,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}`,
		`{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPatternList":["*a*b*c*d*"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}`,
		`{"rules":[]}`, `{}`, `[]`, `{"rules":[{"rulePriority":-1}]}`,
	} {
		f.Add([]byte(seed))
	}
	now := time.Unix(1800000000, 0)
	images := []Image{
		{Digest: digest.FromString("a"), Tags: []string{"v1", "latest"}, PushedAt: now.Add(-48 * time.Hour)},
		{Digest: digest.FromString("b"), Tags: []string{"v2"}, PushedAt: now.Add(-time.Hour)},
		{Digest: digest.FromString("c"), PushedAt: now.Add(-30 * 24 * time.Hour)},
		{Digest: digest.FromString("d"), Tags: []string{"abcd"}, PushedAt: now, Children: []digest.Digest{digest.FromString("c")}},
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		if got := p.Evaluate(images, now); len(got) != len(images) {
			t.Fatalf("%d decisions for %d images", len(got), len(images))
		}
	})
}
