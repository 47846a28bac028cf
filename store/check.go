package store

import (
	"context"

	"github.com/opencontainers/go-digest"
)

// CheckComplete reports whether manifest d of repository name and everything
// it reaches (child manifests, configs, layers, and their links into the
// repository) is in place: nil, or an error wrapping ErrMissingReference
// naming what is missing. It is the check Tag makes before publishing.
func (s *Store) CheckComplete(ctx context.Context, name string, d digest.Digest) error {
	if err := ValidateRepository(name); err != nil {
		return err
	}
	return s.checkComplete(ctx, name, d)
}
