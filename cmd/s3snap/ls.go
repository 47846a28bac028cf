package main

import (
	"context"
	"fmt"
	"slices"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/s3snap/s3snap/store"
)

// resolveJobs bounds the tag lookups ls runs at once.
const resolveJobs = 8

// lsRepo is one repository in ls's JSON output.
type lsRepo struct {
	Repository string  `json:"repository"`
	Tags       []lsTag `json:"tags"`
}

type lsTag struct {
	Tag    string        `json:"tag"`
	Digest digest.Digest `json:"digest"`
}

func newLsCmd(g *globals) *cobra.Command {
	var prefix prefixFlag
	cmd := &cobra.Command{
		Use:   "ls s3://BUCKET[/PREFIX][/REPOSITORY]",
		Short: "List the repositories in a bucket, or the tags of a repository",
		Long: `List what a bucket holds in Distribution's layout.

Without a repository, ls prints the repositories, one per line (with -o json:
a list of {"repository", "tags": [{"tag", "digest"}]}). With a repository, it
prints its tags and the manifest digest each points at (with -o json: one
{"repository", "tags"} object).

The prefix is found by looking for <PREFIX>/docker/registry/v2/ in the bucket,
shortest first; --prefix states it instead.`,
		Example: `  # Repositories at the bucket root, or under a prefix
  s3snap ls s3://my-images
  s3snap ls s3://my-images/mirror

  # Tags and digests of one repository
  s3snap ls s3://my-images/mirror/team/app
  s3snap ls --prefix mirror s3://my-images/mirror/team/app -o json`,
		Args: exactArgs(1, "s3://BUCKET[/PREFIX][/REPOSITORY]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := parseURL(args[0])
			if err != nil {
				return err
			}
			if u.Tag != "" || u.Digest != "" {
				return usagef("ls takes a repository, not a tag or digest (%s); use s3snap inspect", u)
			}
			loc, err := g.locate(cmd.Context(), u, prefix.explicit(cmd), false)
			if err != nil {
				return err
			}
			if loc.repo == "" {
				return g.lsRepositories(cmd.Context(), loc.store)
			}
			return g.lsTags(cmd.Context(), loc)
		},
	}
	prefix.register(cmd)
	return cmd
}

func (g *globals) lsRepositories(ctx context.Context, st *store.Store) error {
	repos, err := st.ListRepositories(ctx)
	if err != nil {
		return fmt.Errorf("list repositories in %s: %w", st.URL(), err)
	}
	if !g.json() {
		for _, r := range repos {
			fmt.Fprintln(g.stdout, r)
		}
		return nil
	}
	out := make([]lsRepo, len(repos))
	for i, r := range repos {
		tags, err := resolveTags(ctx, st, r)
		if err != nil {
			return err
		}
		out[i] = lsRepo{Repository: r, Tags: tags}
	}
	return writeJSON(g.stdout, out)
}

func (g *globals) lsTags(ctx context.Context, loc *location) error {
	tags, err := resolveTags(ctx, loc.store, loc.repo)
	if err != nil {
		return err
	}
	if len(tags) == 0 {
		// No tags: tell an untagged repository from a missing one.
		repos, err := loc.store.ListRepositories(ctx)
		if err != nil {
			return fmt.Errorf("list repositories in %s: %w", loc.store.URL(), err)
		}
		if !slices.Contains(repos, loc.repo) {
			return fmt.Errorf("repository %s in %s: %w", loc.repo, loc.store.URL(), store.ErrNotFound)
		}
	}
	if g.json() {
		return writeJSON(g.stdout, lsRepo{Repository: loc.repo, Tags: tags})
	}
	tw := newTable(g.stdout)
	fmt.Fprintln(tw, "TAG\tDIGEST")
	for _, t := range tags {
		fmt.Fprintf(tw, "%s\t%s\n", t.Tag, t.Digest)
	}
	return tw.Flush()
}

// resolveTags lists repo's tags with their digests, sorted by tag.
func resolveTags(ctx context.Context, st *store.Store, repo string) ([]lsTag, error) {
	names, err := st.ListTags(ctx, repo)
	if err != nil {
		return nil, fmt.Errorf("list tags of %s: %w", repo, err)
	}
	tags := make([]lsTag, len(names))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(resolveJobs)
	for i, name := range names {
		g.Go(func() error {
			d, err := st.Resolve(gctx, repo, name)
			if err != nil {
				return err
			}
			tags[i] = lsTag{Tag: name, Digest: d}
			return nil
		})
	}
	return tags, g.Wait()
}
