package registry

import (
	"context"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/migrator"
)

var _ migrator.BlobPresence = (*Registry)(nil)

// BlobPresent reports whether repo already has desc, asking with a HEAD.
func (r *Registry) BlobPresent(ctx context.Context, repo string, desc ocispec.Descriptor) (bool, error) {
	rp, err := r.repository(repo)
	if err != nil {
		return false, err
	}
	return r.hasBlob(ctx, rp, desc.Digest)
}

// A registry keeps blobs per repository (the copy does not mount across).
func (r *Registry) BlobKey(repo string, desc ocispec.Descriptor) string {
	return repo + "@" + desc.Digest.String()
}

// WithRequestRate sends the registry's requests (token requests and
// redirects to blob storage included, each to its own host's limit) through
// r. It wraps the base transport set so far, so give it after
// WithBaseTransport.
func WithRequestRate(r *migrator.RequestRate) RegistryOption {
	return func(o *registryOptions) {
		if r != nil {
			o.base = r.Transport(o.base)
		}
	}
}
