package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/s3snap/s3snap/migrator"
)

// pushDoc is push's JSON summary.
type pushDoc struct {
	Reference string `json:"reference"`
	Source    string `json:"source"`
	*migrator.Result
}

const pushLong = `Push an image from an OCI image layout directory into a bucket.

DIR is what 'crane pull --format oci' or 'docker buildx build --output
type=oci,tar=false' write. s3snap pushes the manifest index.json lists (the
first one if it lists several), or the one whose
org.opencontainers.image.ref.name annotation is --ref. A multi-arch index is
copied whole, byte for byte, so every digest is preserved.

Blobs go first (--jobs at once, each verified against its digest and size
while it streams); blobs already in the bucket are not uploaded again, which
makes a re-run cheap. Then the manifests, and the tag last: a reader never
sees a tag whose content is incomplete.

The store prefix is the one the bucket already has (found by looking for
<PREFIX>/docker/registry/v2/); in a bucket without one, --prefix (default: none,
the bucket root), and the rest of the path is the repository.

Progress goes to stderr, one line per blob; the summary to stdout (with -o
json as a JSON document).`

const pushExample = `  crane pull --format oci registry.example.com/team/app:v1 ./app
  s3snap push ./app s3://my-images/team/app:v1

  # Into a new bucket, under the prefix "mirror" (repository team/app)
  s3snap push --prefix mirror ./app s3://my-images/mirror/team/app:v1

  # One of several images in a layout, selected by its ref.name annotation
  crane pull --format oci --annotate-ref example.com/a:v1 example.com/b:v2 ./images
  s3snap push --ref example.com/b:v2 ./images s3://my-images/b:v2`

func newPushCmd(g *globals) *cobra.Command {
	var (
		prefix prefixFlag
		ref    string
		jobs   int
	)
	cmd := &cobra.Command{
		Use:     "push DIR s3://BUCKET[/PREFIX]/REPOSITORY:TAG",
		Short:   "Push an OCI image layout directory into a bucket",
		Long:    pushLong,
		Example: pushExample,
		Args:    exactArgs(2, "DIR", "s3://BUCKET[/PREFIX]/REPOSITORY:TAG"),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			u, err := parseURL(args[1])
			if err != nil {
				return err
			}
			if u.Tag == "" && u.Digest == "" {
				return usagef("%s names no tag: want s3://BUCKET[/PREFIX]/REPOSITORY:TAG (or @sha256:DIGEST to push untagged)", u)
			}
			if jobs < 1 {
				return usagef("--jobs %d: want at least 1", jobs)
			}
			ctx := cmd.Context()
			src, err := migrator.OpenLayout(dir, ref)
			if err != nil {
				return err
			}
			root, err := src.Root(ctx)
			if err != nil {
				return err
			}
			if u.Digest != "" && u.Digest != root.Digest {
				return fmt.Errorf("%s holds %s, not %s as the URL says", dir, root.Digest, u.Digest)
			}
			loc, err := g.locate(ctx, u, prefix.explicit(cmd), true)
			if err != nil {
				return err
			}
			if loc.repo == "" {
				return usagef("%s names no repository (the path is the store prefix %q)", u, loc.store.Prefix())
			}
			fmt.Fprintf(g.stderr, "pushing %s (%s) to %s\n", dir, root.Digest, loc.ref())
			res, err := migrator.Copy(ctx, src, loc.store, loc.repo, u.Tag,
				migrator.WithJobs(jobs), migrator.WithProgress(progressPrinter(g.stderr)))
			if err != nil {
				return fmt.Errorf("push %s to %s: %w", dir, loc.ref(), err)
			}
			if u.Tag == "" {
				loc.url.Digest = res.Digest
			}
			doc := pushDoc{Reference: loc.ref(), Source: dir, Result: res}
			if g.json() {
				return writeJSON(g.stdout, doc)
			}
			return printPush(g.stdout, &doc)
		},
	}
	prefix.register(cmd)
	cmd.Flags().StringVar(&ref, "ref", "", "push the manifest of DIR whose org.opencontainers.image.ref.name annotation is NAME (default: the first)")
	cmd.Flags().IntVarP(&jobs, "jobs", "j", migrator.DefaultJobs, "blobs uploaded at once")
	return cmd
}

// progressPrinter prints one plain line per blob, manifest and tag.
func progressPrinter(w io.Writer) func(migrator.Event) {
	return func(ev migrator.Event) {
		d := ev.Descriptor
		switch ev.Kind {
		case migrator.EventBlob:
			state := "uploaded"
			if ev.Existed {
				state = "exists  "
			}
			fmt.Fprintf(w, "%s %s %s\n", state, d.Digest, humanSize(d.Size))
		case migrator.EventManifest:
			fmt.Fprintf(w, "manifest %s %s\n", d.Digest, d.MediaType)
		case migrator.EventTag:
			fmt.Fprintf(w, "tagged   %s\n", d.Digest)
		}
	}
}

func printPush(w io.Writer, doc *pushDoc) error {
	tw := newTable(w)
	fmt.Fprintf(tw, "Pushed:\t%s\n", doc.Reference)
	fmt.Fprintf(tw, "Digest:\t%s\n", doc.Digest)
	fmt.Fprintf(tw, "Media type:\t%s\n", doc.MediaType)
	fmt.Fprintf(tw, "Manifests:\t%d\n", doc.Manifests)
	fmt.Fprintf(tw, "Blobs:\t%d uploaded, %d already in the bucket\n", doc.BlobsUploaded, doc.BlobsSkipped)
	fmt.Fprintf(tw, "Bytes:\t%s uploaded, %s deduplicated\n", humanSize(doc.BytesUploaded), humanSize(doc.BytesDeduplicated))
	return tw.Flush()
}
