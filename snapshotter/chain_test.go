package snapshotter

import (
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
)

func TestCheckChain(t *testing.T) {
	d1 := digest.FromString("layer one")
	d2 := digest.FromString("layer two")
	chain := identity.ChainIDs([]digest.Digest{d1, d2})
	for _, tc := range []struct {
		name    string
		parent  string
		diffID  digest.Digest
		chainID string
		wantErr bool
	}{
		{"base layer", "", d1, chain[0].String(), false},
		{"second layer", chain[0].String(), d2, chain[1].String(), false},
		{"parent committed through containerd's metadata", "k8s.io/12/" + chain[0].String(), d2, chain[1].String(), false},
		{"metadata key of another chain", "k8s.io/12/" + d2.String(), d2, chain[1].String(), true},
		{"base layer lies", "", d2, chain[0].String(), true},
		{"second layer lies", chain[0].String(), d1, chain[1].String(), true},
		{"right diff, wrong parent", d2.String(), d2, chain[1].String(), true},
		{"parent is not a digest", "some-key", d2, chain[1].String(), true},
		{"no parent for a second layer", "", d2, chain[1].String(), true},
		{"invalid diff id", "", digest.Digest("sha256:zz"), chain[0].String(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkChain(tc.parent, tc.diffID, tc.chainID)
			if (err != nil) != tc.wantErr {
				t.Fatalf("checkChain = %v, want error %v", err, tc.wantErr)
			}
			if err != nil && tc.diffID.Validate() == nil && tc.parent != "some-key" && !errors.Is(err, ErrChainMismatch) {
				t.Errorf("error %v does not wrap ErrChainMismatch", err)
			}
		})
	}
}
