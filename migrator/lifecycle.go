package migrator

import (
	"context"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/lifecycle"
	"github.com/s3snap/s3snap/store"
)

// PolicyCopy is what a migration from ECR into a bucket did with one
// repository's lifecycle policy.
type PolicyCopy struct {
	Repository            string `json:"repository"`
	DestinationRepository string `json:"destinationRepository,omitempty"`
	// Status is "copied", "none" (the repository has no policy) or
	// "failed".
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
}

// PolicySource is a Catalog whose repositories carry lifecycle policies
// (ECR's): migrating it into a bucket copies them where s3snap prune finds
// them.
type PolicySource interface {
	// LifecyclePolicy returns repo's policy text, or nil when it has none.
	LifecyclePolicy(ctx context.Context, repo string) ([]byte, error)
}

// copyLifecycle copies the lifecycle policy of every repository items came
// from into st (lifecycle.PolicyName of the destination repository), where
// s3snap prune finds it, with the push times the source gave (a copy's own
// time is the migration's). A failure is reported, and does not fail the
// images.
func copyLifecycle(ctx context.Context, src PolicySource, st *store.Store, items []Item, rename func(string) string) []PolicyCopy {
	var out []PolicyCopy
	pushed := map[string]map[digest.Digest]time.Time{}
	var repos []string
	for _, it := range items {
		if pushed[it.Repository] == nil {
			pushed[it.Repository] = map[digest.Digest]time.Time{}
			repos = append(repos, it.Repository)
		}
		if it.Digest != "" && !it.PushedAt.IsZero() {
			pushed[it.Repository][it.Digest] = it.PushedAt
		}
	}
	for _, repo := range repos {
		pc := PolicyCopy{Repository: repo, Status: "copied"}
		dst := rename(repo)
		if dst != repo {
			pc.DestinationRepository = dst
		}
		text, err := src.LifecyclePolicy(ctx, repo)
		switch {
		case err == nil && text == nil:
			pc.Status = "none"
		case err == nil:
			err = lifecycle.SavePolicy(ctx, st, dst, text)
		}
		if err == nil && len(pushed[repo]) > 0 {
			err = lifecycle.RecordPushed(ctx, st, dst, pushed[repo])
		}
		if err != nil {
			pc.Status, pc.Reason = "failed", err.Error()
			log.G(ctx).WithError(err).WithField("repository", repo).Warn("lifecycle policy not copied")
		}
		out = append(out, pc)
	}
	return out
}
