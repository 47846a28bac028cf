package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/containerd/log"
	"github.com/spf13/cobra"

	"github.com/s3snap/s3snap/internal/atomicfile"
	"github.com/s3snap/s3snap/migrator"
)

const migrateLong = `Copy images from ECR, any OCI registry or a bucket into a bucket (in
Distribution's layout), or into another registry.

SRC is one of
  ecr://ACCOUNT.dkr.ecr.REGION.amazonaws.com[/REPO[:TAG|@DIGEST]]
      the whole registry (every repository, every tag, untagged images by
      digest), listed with ECR's own API, never _catalog
  docker://HOST[:PORT]/REPO[:TAG|@DIGEST]
      one repository (every tag) or one image of any OCI registry
  s3://BUCKET[/PREFIX][/REPO[:TAG]]
      a bucket written by s3snap or a Distribution registry
DST is s3://BUCKET[/PREFIX] (the path is the store prefix), or
docker://HOST[/REPO] or ecr://HOST[/REPO]; a DST repository renames a single
source repository, or prefixes many.

Indexes are copied whole, byte for byte: every digest is preserved (unless
--platform cuts indexes down; the report says so). Blobs stream from the
registry into S3 multipart uploads, verified against their digest on the way,
with no local disk; memory is bounded by --jobs (about 80 MiB per blob in
flight). Blobs already in the bucket are not copied again, from any
repository, and a tag is written only after everything it reaches is in
place, so a re-run (after a kill, or with --watch during a cutover) copies
only what is new or moved.

ECR tokens come from GetAuthorizationToken with the AWS SDK's default
credentials (or --src-profile/--dst-profile, --src-role-arn/--dst-role-arn)
and are renewed before they expire and on any 401. Other registries use
~/.docker/config.json and its credential helpers, or USER:PASSWORD from
--src-creds-file/--dst-creds-file FILE (keep it 0600), $S3SNAP_SRC_CREDS/
$S3SNAP_DST_CREDS, or --src-creds/--dst-creds (in that order of precedence:
flag, file, environment). Prefer the file or the environment: a flag's value
is visible to every user in ps and often in CI logs.
429s are retried after Retry-After, 5xx and broken connections with backoff.

One failed image never stops the others; the exit code is 1 if any failed.
Progress goes to stderr (a bar on a terminal, one line per image otherwise),
the summary to stdout (-o json: the whole report), and --report FILE writes
the JSON report: per tag, source digest, destination digest, status, reason.

--dry-run writes nothing anywhere. It reads every manifest and asks the
destination which blobs it already has, then prints the inventory a budget
owner needs: per image its repository, tag (or digest), platforms, size
(manifests, configs and layers; an index with every child kept) and push
time (ECR); then the bytes as listed, after deduplication (each blob once
across the run), already in the destination, and to transfer (the rest:
what a real run moves), with an estimate of the transfer, S3 PUT request
(multipart parts included) and monthly S3 Standard storage cost. The
assumed prices are AWS us-east-1 list prices (2025): $0.09/GB data transfer
out to the internet (first 10 TB; ECR to S3 in one region is free, across
regions $0.02), $0.005 per 1,000 PUT requests, $0.023/GB-month S3 Standard
(first 50 TB), with GB = 2^30 bytes; override them with --price-transfer-gb,
--price-put-1000 and --price-storage-gb-month. -o json writes one document:
images[], totals, prices.

` + limitsHelp

const migrateExample = `  # A whole ECR registry into a bucket, then prove it
  s3snap migrate ecr://123456789012.dkr.ecr.us-east-1.amazonaws.com s3://my-images --report migrate.json
  s3snap verify  ecr://123456789012.dkr.ecr.us-east-1.amazonaws.com s3://my-images

  # What would be copied, and what it would cost, without copying
  s3snap migrate --dry-run --repo '^team/' --tag '^v' ecr://123456789012.dkr.ecr.us-east-1.amazonaws.com s3://my-images
  # ... as JSON, for ECR to S3 in one region (no transfer charge)
  s3snap migrate --dry-run -o json --price-transfer-gb 0 ecr://123456789012.dkr.ecr.us-east-1.amazonaws.com s3://my-images

  # A big move that leaves room for others: 50 MiB/s, 20 requests/s per registry host
  s3snap migrate --max-bandwidth 50MiB --max-requests 20 docker://registry.example.com/team/app s3://my-images

  # Keep syncing every 5 minutes during the cutover window
  s3snap migrate --watch 5m ecr://123456789012.dkr.ecr.us-east-1.amazonaws.com s3://my-images

  # Shard 3 of 16 (a Kubernetes Indexed Job sets JOB_COMPLETION_INDEX)
  s3snap migrate --shard 3/16 ecr://123456789012.dkr.ecr.us-east-1.amazonaws.com s3://my-images

  # Registry to registry, keeping digests; Docker Hub to ECR, creating repositories
  s3snap migrate docker://registry.gitlab.com/team/app docker://europe-docker.pkg.dev/proj/repo/app
  s3snap migrate --ecr-create docker://docker.io/library/nginx ecr://123456789012.dkr.ecr.us-east-1.amazonaws.com/nginx`

func newMigrateCmd(g *globals) *cobra.Command {
	var (
		f      migrateFlags
		prices priceFlags
		dryRun bool
		keep   bool
		watch  time.Duration
	)
	cmd := &cobra.Command{
		Use:     "migrate SRC DST",
		Short:   "Copy images from ECR or any registry into a bucket, or registry to registry",
		Long:    migrateLong,
		Example: migrateExample,
		Args:    exactArgs(2, "SRC", "DST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if watch < 0 || (watch > 0 && dryRun) {
				return usagef("--watch wants a positive interval and no --dry-run")
			}
			priceOpts, err := prices.options(cmd, dryRun)
			if err != nil {
				return err
			}
			src, dst, opts, err := f.open(ctx, g, args[0], args[1])
			if err != nil {
				return err
			}
			opts = append(opts, migrator.WithDryRun(dryRun), migrator.WithKeepGoing(keep))
			opts = append(opts, priceOpts...)
			for pass := 1; ; pass++ {
				rep, err := runPass(ctx, g, &f, "migrate", opts, func(o ...migrator.RunOption) (*migrator.Report, error) {
					return migrator.Migrate(ctx, src, dst, o...)
				})
				if watch == 0 || ctx.Err() != nil {
					return passResult(rep, err)
				}
				if err != nil {
					log.G(ctx).WithError(err).Error("migration pass failed")
				}
				fmt.Fprintf(g.stderr, "pass %d done; next in %s (interrupt to stop)\n", pass, watch)
				select {
				case <-ctx.Done():
					return passResult(rep, err)
				case <-time.After(watch):
				}
			}
		},
	}
	f.register(cmd, true)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan (images, bytes, what is already there) and copy nothing")
	cmd.Flags().BoolVar(&keep, "keep-going", true, "go on after an image fails (--keep-going=false stops at the first failure)")
	cmd.Flags().DurationVar(&watch, "watch", 0, "after a pass, wait this long and sync again, until interrupted (e.g. 5m)")
	prices.register(cmd)
	return cmd
}

// runPass runs one migrate or verify pass with progress, prints the summary
// and writes the report.
func runPass(ctx context.Context, g *globals, f *migrateFlags, verb string, opts []migrator.RunOption, run func(...migrator.RunOption) (*migrator.Report, error)) (*migrator.Report, error) {
	p := newProgress(g.stderr, verb)
	opts = append(opts, migrator.WithStats(p.stats), migrator.WithEntries(p.entry))
	rep, err := run(opts...)
	p.finish()
	if err != nil {
		return nil, err
	}
	if f.reportPath != "" {
		if err := writeReport(f.reportPath, rep); err != nil {
			return rep, err
		}
	}
	if g.json() {
		if rep.Inventory != nil {
			return rep, writeJSON(g.stdout, rep.Inventory)
		}
		return rep, writeJSON(g.stdout, rep)
	}
	return rep, printSummary(g.stdout, rep)
}

// passResult is the command's error for a finished pass.
func passResult(rep *migrator.Report, err error) error {
	if err != nil {
		return err
	}
	if rep.Failed() {
		return fmt.Errorf("%d of %d images failed (listed above)", rep.Summary.Failed, rep.Summary.Images)
	}
	return nil
}

// writeReport writes the JSON report atomically.
func writeReport(path string, rep *migrator.Report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// printSummary prints the end-of-run summary and every failure.
func printSummary(w io.Writer, rep *migrator.Report) error {
	if rep.Inventory != nil {
		return printInventory(w, rep)
	}
	s := rep.Summary
	tw := newTable(w)
	fmt.Fprintf(tw, "%s:\t%s -> %s\n", rep.Command, rep.Source, rep.Destination)
	if rep.Shard != "" {
		fmt.Fprintf(tw, "Shard:\t%s\n", rep.Shard)
	}
	fmt.Fprintf(tw, "Images:\t%d (%d tags, %d untagged)\n", s.Images, s.Tags, s.Untagged)
	switch {
	case rep.Command == "verify":
		fmt.Fprintf(tw, "Verified:\t%d ok, %d failed\n", s.OK, s.Failed)
	case rep.DryRun:
		fmt.Fprintf(tw, "Plan:\t%d to copy (%s), %d already there, %d failed\n", s.Planned, humanSize(s.BytesPlanned), s.Unchanged, s.Failed)
	default:
		fmt.Fprintf(tw, "Copied:\t%d copied, %d unchanged, %d failed\n", s.Copied, s.Unchanged, s.Failed)
		fmt.Fprintf(tw, "Bytes moved:\t%s\n", humanSize(s.BytesMoved))
		fmt.Fprintf(tw, "Bytes deduplicated:\t%s\n", humanSize(s.BytesDeduplicated))
		if s.LazyIndexes > 0 {
			fmt.Fprintf(tw, "Lazy indexes:\t%d built (%s)\n", s.LazyIndexes, humanSize(s.LazyIndexBytes))
		}
	}
	fmt.Fprintf(tw, "Took:\t%s\n", rep.Finished.Sub(rep.Started).Round(time.Millisecond))
	if err := tw.Flush(); err != nil {
		return err
	}
	if rep.DryRun {
		for _, e := range rep.Entries {
			fmt.Fprintln(w, entryLine(e))
		}
	}
	if fails := rep.Failures(); len(fails) > 0 {
		fmt.Fprintln(w, "Failures:")
		for _, e := range fails {
			fmt.Fprintf(w, "  %s: %s\n", e.Key(), e.Reason)
		}
	}
	return nil
}
