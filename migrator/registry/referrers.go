package registry

import (
	"context"

	"github.com/containerd/log"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/migrator"
)

// cosignSuffixes are the tag suffixes cosign stores signatures,
// attestations and SBOMs under: sha256-<hex>.sig and so on.
var cosignSuffixes = []string{".sig", ".att", ".sbom"}

// CosignTags returns the cosign tags of d that are among tags, and the OCI
// referrers fallback tag (sha256-<hex>) if present.
func CosignTags(tags []string, d digest.Digest) []string {
	base := d.Algorithm().String() + "-" + d.Encoded()
	have := map[string]bool{}
	for _, t := range tags {
		have[t] = true
	}
	var out []string
	for _, s := range append([]string{""}, cosignSuffixes...) {
		if have[base+s] {
			out = append(out, base+s)
		}
	}
	return out
}

// Referrers returns what refers to manifest d of repo: cosign's tags and
// the manifests the OCI referrers API (or its tag fallback) lists.
func (r *Registry) Referrers(ctx context.Context, repo string, d digest.Digest) ([]migrator.Item, error) {
	tags, err := r.Tags(ctx, repo)
	if err != nil {
		return nil, err
	}
	var items []migrator.Item
	for _, t := range CosignTags(tags, d) {
		items = append(items, migrator.Item{Repository: repo, Tag: t})
	}
	rp, err := r.repository(repo)
	if err != nil {
		return nil, err
	}
	idx, err := remote.Referrers(rp.Digest(d.String()), remote.Reuse(r.puller), remote.WithContext(ctx))
	if err != nil {
		// Registries without the API (and without referrers) answer 404.
		log.G(ctx).WithError(err).WithField("manifest", d).Debug("no OCI referrers")
		return items, nil
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return items, nil
	}
	for _, m := range im.Manifests {
		items = append(items, migrator.Item{Repository: repo, Digest: digest.Digest(m.Digest.String()), MediaType: string(m.MediaType)})
	}
	return items, nil
}
