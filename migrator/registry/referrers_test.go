package registry

import (
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestCosignTags(t *testing.T) {
	d := "sha256:0123456789012345678901234567890123456789012345678901234567890123"
	hex := d[len("sha256:"):]
	tags := []string{"v1", "sha256-" + hex + ".sig", "sha256-" + hex + ".att", "sha256-" + hex, "sha256-ffff.sig"}
	got := CosignTags(tags, digest.Digest(d))
	if len(got) != 3 || got[0] != "sha256-"+hex || got[1] != "sha256-"+hex+".sig" || got[2] != "sha256-"+hex+".att" {
		t.Errorf("CosignTags = %v", got)
	}
}
