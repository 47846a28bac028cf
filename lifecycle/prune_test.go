package lifecycle

import (
	"testing"

	"github.com/opencontainers/go-digest"
)

// Expired indexes go before what they hold, nested ones included, so a
// tag never names an index whose child is already gone.
func TestParentsFirst(t *testing.T) {
	d := func(s string) digest.Digest { return digest.FromString(s) }
	ds := []Decision{
		{Image: Image{Digest: d("child")}, Expire: true},
		{Image: Image{Digest: d("inner"), Children: []digest.Digest{d("child"), d("kept")}}, Expire: true},
		{Image: Image{Digest: d("kept")}},
		{Image: Image{Digest: d("outer"), Children: []digest.Digest{d("inner")}}, Expire: true},
		{Image: Image{Digest: d("alone")}, Expire: true},
	}
	level := parentsFirst(ds, []int{0, 1, 3, 4})
	if level[3] != 0 || level[4] != 0 || level[1] != 1 || level[0] != 2 {
		t.Errorf("levels %v: want outer and alone 0, inner 1, child 2", level)
	}
}
