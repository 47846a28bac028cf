package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/s3snap/s3snap/lifecycle"
	"github.com/s3snap/s3snap/store"
)

// Where a repository's policy came from, in prune's output.
const (
	policyFile   = "file"
	policyStored = "stored"
	policyNone   = "none"
)

// pruneRepo is one repository in prune's JSON output.
type pruneRepo struct {
	Repository string `json:"repository"`
	// Policy is "file" (--policy), "stored" (copied by migrate) or "none"
	// (skipped).
	Policy string `json:"policy"`
	*lifecycle.Result
}

const pruneLong = `Expire images by an Amazon ECR lifecycle policy: the same JSON, evaluated
the way ECR documents it, per repository.

The policy is --policy FILE (applied to every repository the URL names) or,
without it, each repository's own policy that 's3snap migrate ecr://...'
copied from ECR into <prefix>/s3snap/lifecycle/<repo>/policy.json;
repositories with neither are skipped. A URL with a repository prunes that
one, a bucket (or prefix) every repository in it.

How a policy is applied (as ECR does it):
  - Rules go by rulePriority, lowest first; every rule must have its own, and
    a tagStatus "any" rule must be the last.
  - tagStatus "tagged" selects images by tagPrefixList (each entry a tag
    prefix) or tagPatternList (each entry a tag with up to four '*'
    wildcards); with several entries an image must match them all (each by
    one of its tags). "untagged" selects images without tags, "any" all.
  - countType imageCountMoreThan keeps the countNumber most recently pushed
    images the rule selects and expires the rest; sinceImagePushed (with
    countUnit "days") expires images pushed more than countNumber days ago.
  - Each rule counts every image it selects, but an image is expired only
    by the highest-priority rule whose tags it matches, and only if that
    rule marks it: an image a rule keeps is safe from every later rule.
  - An image is pushed when its manifest's revision link was written (the
    object's LastModified). A manifest an index (multi-arch image) references
    is kept while the index is.

Expiring an image removes its manifest from the repository: every tag
pointing at it, then its revision link. Layers and configs stay until
's3snap gc' finds nothing references them.

--dry-run lists every image with its tags, push time and what happens to it:
"expire" or "keep", and the rule (priority and description) that decides
it. --now evaluates ages at another time ("what would go in a week"). With
-o json: a list of {"repository", "policy", "images": [{"digest", "tags",
"pushedAt", "action", "rulePriority", "ruleDescription", "keptByIndex",
"keys", "error"}], "expired", "kept", "failed"}.

An example policy (policy.json):

  {"rules": [
    {"rulePriority": 1, "description": "keep the last 10 releases",
     "selection": {"tagStatus": "tagged", "tagPrefixList": ["v"],
                   "countType": "imageCountMoreThan", "countNumber": 10},
     "action": {"type": "expire"}},
    {"rulePriority": 2, "description": "expire untagged images after 7 days",
     "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed",
                   "countUnit": "days", "countNumber": 7},
     "action": {"type": "expire"}},
    {"rulePriority": 3, "description": "keep at most 30 other images",
     "selection": {"tagStatus": "any", "countType": "imageCountMoreThan",
                   "countNumber": 30},
     "action": {"type": "expire"}}
  ]}`

func newPruneCmd(g *globals) *cobra.Command {
	var (
		prefix     prefixFlag
		policyPath string
		dryRun     bool
		nowFlag    string
	)
	cmd := &cobra.Command{
		Use:   "prune [--policy FILE] s3://BUCKET[/PREFIX][/REPOSITORY]",
		Short: "Expire images by an ECR lifecycle policy (from a file, or the one migrate copied from ECR)",
		Long:  pruneLong,
		Example: `  # See what a policy would expire in one repository, then apply it
  s3snap prune --dry-run --policy policy.json s3://my-images/team/app
  s3snap prune --policy policy.json s3://my-images/team/app

  # Apply the policies migrate copied from ECR, to every repository
  s3snap migrate ecr://123456789012.dkr.ecr.us-east-1.amazonaws.com s3://my-images
  s3snap prune --dry-run s3://my-images

  # What would expire a week from now
  s3snap prune --dry-run --now 168h --policy policy.json s3://my-images -o json

  # Then reclaim the space of what no tag reaches any more
  s3snap gc s3://my-images`,
		Args: exactArgs(1, "s3://BUCKET[/PREFIX][/REPOSITORY]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := parseURL(args[0])
			if err != nil {
				return err
			}
			if u.Tag != "" || u.Digest != "" {
				return usagef("prune takes a repository or a bucket, not a tag or digest (%s); use s3snap rm for one image", u)
			}
			now := time.Now()
			if nowFlag != "" {
				if now, err = parseNow(nowFlag, now); err != nil {
					return usagef("--now %q: %v", nowFlag, err)
				}
			}
			var policy *lifecycle.Policy
			if policyPath != "" {
				if policy, err = readPolicyFile(policyPath); err != nil {
					return err
				}
			}
			ctx := cmd.Context()
			loc, err := g.locate(ctx, u, prefix.explicit(cmd), false)
			if err != nil {
				return err
			}
			repos := []string{loc.repo}
			if loc.repo == "" {
				if repos, err = loc.store.ListRepositories(ctx); err != nil {
					return fmt.Errorf("list repositories in %s: %w", loc.store.URL(), err)
				}
			}
			out, err := g.prune(ctx, loc.store, repos, policy, loc.repo != "", lifecycle.WithEvaluationTime(now), lifecycle.WithPruneDryRun(dryRun))
			if g.json() {
				if jerr := writeJSON(g.stdout, out); jerr != nil && err == nil {
					err = jerr
				}
			}
			return err
		},
	}
	prefix.register(cmd)
	cmd.Flags().StringVar(&policyPath, "policy", "", "ECR lifecycle policy JSON file (\"-\": stdin) to apply (default: each repository's policy copied by migrate)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list every image and the rule that expires or keeps it; remove nothing")
	cmd.Flags().StringVar(&nowFlag, "now", "", "evaluate ages at this time (RFC 3339 or 2006-01-02) or this long from now (e.g. 168h)")
	return cmd
}

// prune applies the policy (or each repository's stored one) to repos,
// printing each repository as it is done (text output). With one named
// repository (single) a missing stored policy is an error; across a bucket
// such repositories are skipped.
func (g *globals) prune(ctx context.Context, st *store.Store, repos []string, policy *lifecycle.Policy, single bool, opts ...lifecycle.PruneOption) ([]pruneRepo, error) {
	out := []pruneRepo{}
	var failed error
	for _, repo := range repos {
		p, source := policy, policyFile
		if p == nil {
			source = policyStored
			var err error
			p, err = lifecycle.LoadPolicy(ctx, st, repo)
			if errors.Is(err, lifecycle.ErrNoPolicy) {
				if single {
					return out, fmt.Errorf("%s has no stored lifecycle policy (migrate copies one from ECR): give --policy FILE: %w", repo, err)
				}
				out = append(out, pruneRepo{Repository: repo, Policy: policyNone})
				if !g.json() {
					fmt.Fprintf(g.stdout, "%s: no lifecycle policy, skipped\n", repo)
				}
				continue
			}
			if err != nil {
				return out, err
			}
		}
		res, err := lifecycle.Prune(ctx, st, repo, p, opts...)
		if res != nil {
			out = append(out, pruneRepo{Repository: repo, Policy: source, Result: res})
			if !g.json() {
				printPrune(g.stdout, res, source)
			}
		}
		switch {
		case errors.Is(err, lifecycle.ErrPartial):
			failed = err // the other repositories still go
		case err != nil:
			return out, err
		}
	}
	return out, failed
}

// printPrune prints one repository's images and what happened to them.
func printPrune(w io.Writer, res *lifecycle.Result, source string) {
	fmt.Fprintf(w, "%s (policy: %s, now: %s)\n", res.Repository, source, res.Now.Format(time.RFC3339))
	tw := newTable(w)
	fmt.Fprintln(tw, "ACTION\tDIGEST\tTAGS\tPUSHED\tRULE")
	for _, im := range res.Images {
		action := im.Action
		if action == lifecycle.ActionExpire && res.DryRun {
			action = "would expire"
		}
		if im.Error != "" {
			action = "FAILED"
		}
		tags := strings.Join(im.Tags, ",")
		if tags == "" {
			tags = "<untagged>"
		}
		rule := "-"
		if im.RulePriority != 0 {
			rule = fmt.Sprintf("%d", im.RulePriority)
			if im.RuleDescription != "" {
				rule += " " + im.RuleDescription
			}
		}
		if im.Index != "" {
			rule += " (kept: child of index " + shortDigest(im.Index) + ")"
		}
		if im.Error != "" {
			rule += ": " + im.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", action, shortDigest(im.Digest), tags, im.PushedAt.Format("2006-01-02 15:04:05"), rule)
	}
	_ = tw.Flush()
	verb := "expired"
	if res.DryRun {
		verb = "would expire"
	}
	fmt.Fprintf(w, "%s: %s %d, kept %d", res.Repository, verb, res.Expired, res.Kept)
	if res.Failed > 0 {
		fmt.Fprintf(w, ", %d failed", res.Failed)
	}
	fmt.Fprintln(w)
}

// readPolicyFile reads and validates a policy file; a bad one is a usage
// error.
func readPolicyFile(path string) (*lifecycle.Policy, error) {
	var r io.Reader = os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, usagef("--policy: %w", err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, lifecycle.MaxPolicySize+1))
	if err != nil {
		return nil, usagef("--policy %s: %w", path, err)
	}
	p, err := lifecycle.Parse(b)
	if err != nil {
		return nil, usagef("--policy %s: %w", path, err)
	}
	return p, nil
}

// parseNow parses --now: a time, or a duration from now.
func parseNow(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(strings.TrimPrefix(s, "+")); err == nil {
		return now.Add(d), nil
	}
	for _, layout := range []string{time.RFC3339, "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("want a time (RFC 3339 or 2006-01-02) or a duration from now (168h)")
}
