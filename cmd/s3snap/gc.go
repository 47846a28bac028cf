package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/middleware"
	"github.com/spf13/cobra"

	"github.com/s3snap/s3snap/lifecycle"
	"github.com/s3snap/s3snap/store"
)

func newGcCmd(g *globals) *cobra.Command {
	var (
		prefix       prefixFlag
		dryRun       bool
		grace        time.Duration
		keepUntagged time.Duration
		jobs         int
	)
	cmd := &cobra.Command{
		Use:   "gc s3://BUCKET[/PREFIX]",
		Short: "Delete the blobs, links and lazy indexes no tag reaches any more",
		Long: fmt.Sprintf(`Reclaim the space of what no tag reaches: ECR's lifecycle clean-up, for a bucket.

Mark: every tag of every repository is read, and the manifest it points at,
the children of an index, the config and layers of an image and their lazy
indexes are marked. Untagged manifests are kept only while younger than the
grace period or, with --keep-untagged, the retention given.

Sweep: the rest goes. Blobs (layers, configs, manifests), revision links of
untagged manifests (the digest no longer resolves in the repository) and the
tag history entries naming them, layer links, lazy indexes of deleted layers,
and incomplete multipart uploads left by a push or migration that died.

The grace period (--grace, default %s) protects what is being written now:
a push or migration uploads blobs and manifests before the tag that makes
them reachable, so nothing written (by the object's LastModified) within the
grace period is deleted, and the repositories are listed again just before
the sweep so what was tagged meanwhile is kept. --grace 0 is only safe when
nothing writes to the bucket.

Nodes cope with a blob deleted under a pull (the agent falls back to the
upstream registry), and a stock registry serving the bucket still serves every
tag afterwards.

--dry-run prints each object that would be deleted and the totals, deleting
nothing. The report gives objects and bytes per kind, the bytes freed and
the monthly saving at $%.3f per GB-month (S3 Standard storage, us-east-1,
first 50 TB; other regions and classes differ), and the S3 requests made.
With -o json it is one object (see lifecycle.GCReport).

Blobs are listed in parallel over the 256 blobs/sha256/<hh>/ prefixes and
deleted 1000 a request. Memory grows with what is in use (about 100 bytes a
link and 60 a marked digest), not with the bucket.`, lifecycle.DefaultGrace, lifecycle.PricePerGBMonth),
		Example: `  # See what would go, then collect
  s3snap gc --dry-run s3://my-images
  s3snap gc s3://my-images

  # Keep untagged images pushed in the last week, report as JSON
  s3snap gc --keep-untagged 168h -o json s3://my-images/mirror

  # A bucket nothing writes to: no grace period
  s3snap gc --grace 0 s3://my-images`,
		Args: exactArgs(1, "s3://BUCKET[/PREFIX]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := parseURL(args[0])
			if err != nil {
				return err
			}
			if u.Tag != "" || u.Digest != "" {
				return usagef("gc takes a bucket and prefix, not an image (%s); remove an image with s3snap rm", u)
			}
			if grace < 0 || keepUntagged < 0 {
				return usagef("--grace and --keep-untagged must not be negative")
			}
			if jobs < 1 || jobs > 256 {
				return usagef("--jobs %d: want 1 to 256", jobs)
			}
			ctx := cmd.Context()
			loc, err := g.locate(ctx, u, prefix.explicit(cmd), false)
			if err != nil {
				return err
			}
			if loc.repo != "" {
				return usagef("%s names repository %q: gc works on a whole store (s3://%s/%s), since blobs are shared between repositories",
					u, loc.repo, u.Bucket, loc.store.Prefix())
			}
			st, requests, err := g.countingStore(ctx, loc.store)
			if err != nil {
				return err
			}
			opts := []lifecycle.GCOption{lifecycle.WithGrace(grace), lifecycle.WithKeepUntagged(keepUntagged), lifecycle.WithDryRun(dryRun), lifecycle.WithJobs(jobs)}
			if dryRun && !g.json() {
				var mu sync.Mutex
				opts = append(opts, lifecycle.WithObserver(func(d lifecycle.Deletion) {
					mu.Lock()
					defer mu.Unlock()
					fmt.Fprintf(g.stdout, "would delete %-13s s3://%s/%s (%s)\n", d.Kind, st.Bucket(), d.Key, humanSize(d.Size))
				}))
			}
			rep, err := lifecycle.GC(ctx, st, opts...)
			if rep != nil {
				rep.Requests = requests.Load()
			}
			if err != nil {
				if rep != nil {
					fmt.Fprintf(g.stderr, "gc stopped part way; done so far:\n%s", rep)
				}
				return err
			}
			if g.json() {
				return writeJSON(g.stdout, rep)
			}
			fmt.Fprint(g.stdout, rep)
			return nil
		},
	}
	prefix.register(cmd)
	f := cmd.Flags()
	f.BoolVar(&dryRun, "dry-run", false, "print what would be deleted and the space and money saved; delete nothing")
	f.DurationVar(&grace, "grace", lifecycle.DefaultGrace, "leave alone anything written less than this long ago (pushes and migrations in progress)")
	f.DurationVar(&keepUntagged, "keep-untagged", 0, "keep untagged manifests (and what they reach) younger than this, e.g. 168h")
	f.IntVar(&jobs, "jobs", 16, "S3 requests in flight at once")
	return cmd
}

// countingStore is st again, on a client that counts every S3 request
// (each attempt of each call).
func (g *globals) countingStore(ctx context.Context, st *store.Store) (*store.Store, *atomic.Int64, error) {
	c, err := g.client(ctx)
	if err != nil {
		return nil, nil, err
	}
	n := new(atomic.Int64)
	counted := s3.New(c.Options(), countRequests(n))
	return store.New(counted, st.Bucket(), store.WithPrefix(st.Prefix())), n, nil
}

// countRequests is an S3 client option adding one to n for every request
// sent (retries included).
func countRequests(n *atomic.Int64) func(*s3.Options) {
	return func(o *s3.Options) {
		o.APIOptions = append(o.APIOptions, func(s *middleware.Stack) error {
			return s.Finalize.Add(middleware.FinalizeMiddlewareFunc("s3snapcountRequests",
				func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
					n.Add(1)
					return next.HandleFinalize(ctx, in)
				}), middleware.After)
		})
	}
}
