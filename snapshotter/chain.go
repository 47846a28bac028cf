package snapshotter

import (
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
)

// ErrChainMismatch means what a layer unpacks to (or what its lazy index
// says it is) does not make the chain ID containerd asked for: nothing is
// committed, and containerd pulls the layer itself.
var ErrChainMismatch = errors.New("layer does not make the requested chain id")

// parentChainID is the chain ID a parent snapshot key names. A layer this
// snapshotter provided is committed under its bare chain ID; one containerd
// pulled itself is committed through its metadata store, whose backend
// keys read "<namespace>/<n>/<name>", the name being the chain ID its
// unpacker verified.
func parentChainID(key string) string {
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		return key[i+1:]
	}
	return key
}

// checkChain decides whether a layer whose uncompressed digest is diffID
// may be committed as chainID on top of parent. It trusts nothing a label
// or the bucket states: the chain ID of (parent chain ID, diff ID) is
// computed and must equal the one requested. containerd names committed
// layer snapshots by chain ID, so parent is the parent layer's chain ID,
// or "" for a base layer.
func checkChain(parent string, diffID digest.Digest, chainID string) error {
	if err := diffID.Validate(); err != nil {
		return fmt.Errorf("diff id %q: %w", diffID, err)
	}
	ids := []digest.Digest{diffID}
	if parent != "" {
		p, err := digest.Parse(parentChainID(parent))
		if err != nil {
			return fmt.Errorf("parent %q is not a chain id: %w", parent, ErrChainMismatch)
		}
		ids = []digest.Digest{p, diffID}
	}
	// identity.ChainID of [parent, diff] is H(parent + " " + diff), which
	// is exactly how the parent's own chain extends by one layer.
	if got := identity.ChainID(ids); got.String() != chainID {
		return fmt.Errorf("parent %q plus diff id %s makes chain %s, containerd asked for %s: %w", parent, diffID, got, chainID, ErrChainMismatch)
	}
	return nil
}
