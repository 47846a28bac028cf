package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/s3snap/s3snap/lazy"
)

// indexDoc is index's JSON output.
type indexDoc struct {
	Reference string        `json:"reference"`
	Layers    []lazy.Result `json:"layers"`
	Built     int           `json:"built"`
	Existed   int           `json:"existed"`
	Failed    int           `json:"failed"`
	Seconds   float64       `json:"seconds"`
}

func newIndexCmd(g *globals) *cobra.Command {
	var (
		prefix    prefixFlag
		chunkSize int64
	)
	cmd := &cobra.Command{
		Use:   "index s3://BUCKET[/PREFIX]/REPOSITORY(:TAG|@sha256:DIGEST)",
		Short: "Build the lazy-pull indexes of an image's layers in the bucket",
		Long: `Build the lazy-pull index of every layer of an image already in the bucket
(every platform's, for a multi-arch index), so node agents with [lazy]
enabled mount those layers with FUSE and fetch file data on demand instead
of downloading and unpacking whole layers before a container starts.

Each layer blob is read from the bucket (its digest verified), its files'
contents re-chunked and compressed with zstd into
<PREFIX>/s3snap/lazy/v2/sha256/<layer>/data, and a table of contents with
every entry, its raw tar headers and each chunk's sha256 written last, as
.../toc: enough to rebuild the layer's tar byte for byte, which agents check
against the image's diff ID. The registry layout is not touched: image
digests and layer blobs stay exactly the same. Layers that already have a
(v2) index are skipped, so re-running is cheap; a v1 index (which agents
serve unverified) is rewritten as v2. migrate and push --lazy-index build
the same indexes while they copy.

Progress goes to stderr, one line per layer; the summary (or -o json) to
stdout. The exit code is 1 if any layer failed.`,
		Example: `  s3snap index s3://my-images/team/app:v1
  s3snap index -o json s3://my-images/ecr/team/app@sha256:0123...
  s3snap --endpoint http://127.0.0.1:9000 index s3://my-images/app:v1`,
		Args: exactArgs(1, "s3://BUCKET[/PREFIX]/REPOSITORY:TAG"),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := parseURL(args[0])
			if err != nil {
				return err
			}
			if err := checkImageURL(u); err != nil {
				return err
			}
			if chunkSize <= 0 || chunkSize > lazy.MaxChunkSize {
				return usagef("--chunk-size %d: want 1 to %d bytes", chunkSize, lazy.MaxChunkSize)
			}
			ctx := cmd.Context()
			loc, d, err := g.locateImage(ctx, u, prefix.explicit(cmd))
			if err != nil {
				return err
			}
			start := time.Now()
			progress := func(r lazy.Result) {
				switch {
				case r.Error != "":
					fmt.Fprintf(g.stderr, "failed   %s: %s\n", r.Layer, r.Error)
				case r.Skipped != "":
					fmt.Fprintf(g.stderr, "skipped  %s: %s\n", r.Layer, r.Skipped)
				case r.Existed:
					fmt.Fprintf(g.stderr, "indexed  %s (already)\n", r.Layer)
				default:
					fmt.Fprintf(g.stderr, "indexed  %s: %d entries, %s in %d chunks, %.1fs\n", r.Layer, r.Entries, humanSize(r.Size), r.Chunks, r.Seconds)
				}
			}
			results, runErr := lazy.IndexImage(ctx, loc.store, loc.repo, d, progress, lazy.WithChunkSize(chunkSize))
			doc := indexDoc{Reference: loc.ref(), Layers: results, Seconds: time.Since(start).Seconds()}
			if doc.Layers == nil {
				doc.Layers = []lazy.Result{}
			}
			for _, r := range results {
				switch {
				case r.Error != "":
					doc.Failed++
				case r.Existed:
					doc.Existed++
				case r.Skipped == "":
					doc.Built++
				}
			}
			if g.json() {
				if err := writeJSON(g.stdout, doc); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(g.stdout, "%s: %d layer index(es) built, %d already there, %d failed, %.1fs\n",
					doc.Reference, doc.Built, doc.Existed, doc.Failed, doc.Seconds)
			}
			if runErr != nil {
				return fmt.Errorf("index %s: %w", doc.Reference, runErr)
			}
			return nil
		},
	}
	prefix.register(cmd)
	cmd.Flags().Int64Var(&chunkSize, "chunk-size", lazy.DefaultChunkSize, "uncompressed bytes per data chunk (the unit fetched on a cache miss)")
	return cmd
}
