package lifecycle

import (
	"strings"
	"testing"
	"time"

	"github.com/s3snap/s3snap/store"
)

// TestRepoScanAdd: only keys of Distribution's layout are recorded, each as
// what it is; anything else under a repository is left alone.
func TestRepoScanAdd(t *testing.T) {
	hex := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		tail                         string
		revisions, layers, tags, idx int
		current                      bool
	}{
		{tail: "_layers/sha256/" + hex + "/link", layers: 1},
		{tail: "_manifests/revisions/sha256/" + hex + "/link", revisions: 1},
		{tail: "_manifests/tags/v1/current/link", tags: 1, current: true},
		{tail: "_manifests/tags/v1/index/sha256/" + hex + "/link", tags: 1, idx: 1},
		{tail: "_manifests/revisions/sha256/" + strings.ToUpper(hex) + "/link"},
		{tail: "_manifests/revisions/sha256/" + hex[:62] + "/link"},
		{tail: "_layers/sha256/" + hex + "/data"},
		{tail: "_layers/sha512/" + hex + "/link"},
		{tail: "_uploads/0f3c/data"},
		{tail: "_manifests/tags/.bad/current/link"},
		{tail: "_manifests/tags/v1"},
	} {
		t.Run(tc.tail, func(t *testing.T) {
			r := &repoScan{revisions: map[sum]stamp{}, layers: map[sum]stamp{}, tags: map[string]*tagScan{}}
			r.add(tc.tail, store.Object{Key: "k", Size: 71, LastModified: time.Unix(1, 0)})
			idx := 0
			current := false
			for _, tg := range r.tags {
				idx += len(tg.index)
				current = current || tg.current != nil
			}
			if len(r.revisions) != tc.revisions || len(r.layers) != tc.layers || len(r.tags) != tc.tags || idx != tc.idx || current != tc.current {
				t.Errorf("revisions %d layers %d tags %d index %d current %v; want %+v", len(r.revisions), len(r.layers), len(r.tags), idx, current, tc)
			}
		})
	}
}

func TestMonthlyCost(t *testing.T) {
	if got := MonthlyCost(1 << 40); got < 23.55 || got > 23.56 { // 1 TiB = 1024 GB at $0.023
		t.Errorf("MonthlyCost(1 TiB) = %v, want 23.552", got)
	}
}
