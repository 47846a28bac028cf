package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/s3snap/s3snap/lifecycle"
)

func newRmCmd(g *globals) *cobra.Command {
	var (
		prefix prefixFlag
		dryRun bool
		force  bool
	)
	cmd := &cobra.Command{
		Use:   "rm s3://BUCKET[/PREFIX]/REPOSITORY:TAG | s3://BUCKET[/PREFIX]/REPOSITORY@sha256:DIGEST",
		Short: "Remove a tag, or a manifest and every tag pointing at it",
		Long: `Remove a tag, or a manifest and its tags, from a repository in the bucket.

With :TAG, rm removes the tag (its current link, then its history of index
links): the tag no longer resolves. The manifest it pointed at stays, reachable
by digest and by any other tag.

With @sha256:DIGEST, rm removes the manifest from the repository: every tag of
the repository pointing at it, the history entries of other tags naming it,
and last its revision link, so neither a tag nor the digest resolves in the
repository any more.

rm deletes links only, a few small objects. Layers, configs and manifest
blobs can be shared with other tags and repositories; run s3snap gc to
reclaim the space of what no tag reaches any more.

A URL naming a repository or bucket without a tag or digest is refused: rm
never removes more than one image. Nor does it remove a manifest that an
index tagged in the same repository lists (a platform of a multi-arch tag),
as ECR refuses to: remove that tag first, or give --force. --dry-run prints
what would go and deletes nothing. With -o json the result is {"repository", "digest", "tags", "keys"}.`,
		Example: `  # Remove a tag; the image stays reachable by digest until gc
  s3snap rm s3://my-images/team/app:v1

  # See what removing a manifest would delete, then do it
  s3snap rm --dry-run s3://my-images/team/app@sha256:4f1c...
  s3snap rm s3://my-images/team/app@sha256:4f1c...

  # Then reclaim the blobs nothing references any more
  s3snap gc s3://my-images`,
		Args: exactArgs(1, "s3://BUCKET[/PREFIX]/REPOSITORY:TAG|@sha256:DIGEST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := parseURL(args[0])
			if err != nil {
				return err
			}
			if u.Tag != "" && u.Digest != "" {
				return usagef("%s names both a tag and a digest: rm takes one (the tag alone, or the manifest and all its tags)", u)
			}
			if err := checkImageURL(u); err != nil {
				return usagef("%s names no tag or digest: rm removes one tag (REPOSITORY:TAG) or one manifest (REPOSITORY@sha256:DIGEST), never a repository or bucket", u)
			}
			ctx := cmd.Context()
			loc, err := g.locate(ctx, u, prefix.explicit(cmd), false)
			if err != nil {
				return err
			}
			if loc.repo == "" {
				return usagef("%s names no repository (the path is the store prefix %q)", u, loc.store.Prefix())
			}
			var r lifecycle.Removal
			if u.Digest != "" {
				if !force {
					if err := lifecycle.CheckUnreferenced(ctx, loc.store, loc.repo, u.Digest); err != nil {
						if errors.Is(err, lifecycle.ErrReferenced) {
							return fmt.Errorf("%w (remove that tag first, or --force to break it)", err)
						}
						return err
					}
				}
				r, err = lifecycle.RemoveManifest(ctx, loc.store, loc.repo, u.Digest, dryRun)
			} else {
				r, err = lifecycle.RemoveTag(ctx, loc.store, loc.repo, u.Tag, dryRun)
			}
			if err != nil {
				return err
			}
			if g.json() {
				return writeJSON(g.stdout, r)
			}
			verb := "removed"
			if dryRun {
				verb = "would remove"
				for _, k := range r.Keys {
					fmt.Fprintf(g.stdout, "would delete s3://%s/%s\n", loc.store.Bucket(), k)
				}
			}
			switch {
			case u.Digest != "" && len(r.Tags) == 0:
				fmt.Fprintf(g.stdout, "%s manifest %s from %s (no tag pointed at it)\n", verb, r.Digest, r.Repo)
			case u.Digest != "":
				fmt.Fprintf(g.stdout, "%s manifest %s from %s and its tags: %v\n", verb, r.Digest, r.Repo, r.Tags)
			default:
				fmt.Fprintf(g.stdout, "%s tag %s:%s (was %s)\n", verb, r.Repo, r.Tags[0], r.Digest)
			}
			if !dryRun {
				fmt.Fprintf(g.stdout, "%d objects deleted; blobs stay until s3snap gc\n", len(r.Keys))
			}
			return nil
		},
	}
	prefix.register(cmd)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be removed, delete nothing")
	cmd.Flags().BoolVar(&force, "force", false, "remove a manifest even if a tagged index lists it (that tag then lacks a platform)")
	return cmd
}
