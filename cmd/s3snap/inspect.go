package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/s3snap/s3snap/store"
)

// inspectDoc is inspect's JSON output.
type inspectDoc struct {
	Reference  string `json:"reference"`
	Repository string `json:"repository"`
	Tag        string `json:"tag,omitempty"`
	manifestDoc
}

// manifestDoc describes an image manifest (config, layers) or an index (its
// manifests, each described the same way).
type manifestDoc struct {
	Digest       digest.Digest     `json:"digest"`
	MediaType    string            `json:"mediaType"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Platform     *ocispec.Platform `json:"platform,omitempty"`
	// Image manifests.
	Config    *blobDoc  `json:"config,omitempty"`
	Layers    []blobDoc `json:"layers,omitempty"`
	TotalSize int64     `json:"totalSize,omitempty"` // config + layers
	// Indexes.
	Manifests []manifestDoc `json:"manifests,omitempty"`
	// Error says why an index child could not be described.
	Error string `json:"error,omitempty"`
}

type blobDoc struct {
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"mediaType"`
	Size      int64         `json:"size"`
}

func newInspectCmd(g *globals) *cobra.Command {
	var (
		prefix prefixFlag
		raw    bool
	)
	cmd := &cobra.Command{
		Use:   "inspect s3://BUCKET[/PREFIX]/REPOSITORY(:TAG|@sha256:DIGEST)",
		Short: "Show the manifest a tag or digest names: config, layers, platforms",
		Long: `Show the manifest a tag or digest names in the bucket.

For an image: its digest, media type and size, the config digest, every layer
(digest, media type, size) and the total size. For an index (multi-arch
image): each manifest with its platform (os/architecture/variant) and the
same summary.

--raw prints the manifest exactly as stored, byte for byte (like
'crane manifest'); -o json prints the summary as a JSON document.`,
		Example: `  s3snap inspect s3://my-images/team/app:v1
  s3snap inspect -o json s3://my-images/team/app@sha256:0123...
  s3snap inspect --raw s3://my-images/team/app:v1 | jq .`,
		Args: exactArgs(1, "s3://BUCKET[/PREFIX]/REPOSITORY:TAG"),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := parseURL(args[0])
			if err != nil {
				return err
			}
			if err := checkImageURL(u); err != nil {
				return err
			}
			ctx := cmd.Context()
			loc, d, err := g.locateImage(ctx, u, prefix.explicit(cmd))
			if err != nil {
				return err
			}
			m, err := loc.store.GetManifest(ctx, loc.repo, d)
			if err != nil {
				return err
			}
			if raw {
				_, err := g.stdout.Write(m.Raw)
				return err
			}
			doc := inspectDoc{Reference: loc.ref(), Repository: loc.repo, Tag: u.Tag}
			doc.manifestDoc, err = describe(ctx, loc.store, loc.repo, m, ocispec.Descriptor{}, 0)
			if err != nil {
				return err
			}
			if g.json() {
				return writeJSON(g.stdout, doc)
			}
			return printInspect(g.stdout, &doc)
		},
	}
	prefix.register(cmd)
	cmd.Flags().BoolVar(&raw, "raw", false, "print the manifest bytes exactly as stored")
	return cmd
}

// describe summarises m; for an index it reads and describes each child. desc
// is how m was referenced (by an index: with its platform).
func describe(ctx context.Context, st *store.Store, repo string, m *store.Manifest, desc ocispec.Descriptor, depth int) (manifestDoc, error) {
	doc := manifestDoc{Digest: m.Digest, MediaType: m.MediaType, Size: int64(len(m.Raw)), Platform: desc.Platform, ArtifactType: desc.ArtifactType}
	if m.Image != nil {
		if doc.ArtifactType == "" {
			doc.ArtifactType = m.Image.ArtifactType
		}
		doc.Config = &blobDoc{Digest: m.Image.Config.Digest, MediaType: m.Image.Config.MediaType, Size: m.Image.Config.Size}
		doc.TotalSize = m.Image.Config.Size
		doc.Layers = make([]blobDoc, 0, len(m.Image.Layers))
		for _, l := range m.Image.Layers {
			doc.Layers = append(doc.Layers, blobDoc{Digest: l.Digest, MediaType: l.MediaType, Size: l.Size})
			doc.TotalSize += l.Size
		}
		return doc, nil
	}
	doc.Manifests = make([]manifestDoc, 0, len(m.Index.Manifests))
	for _, c := range m.Index.Manifests {
		child := manifestDoc{Digest: c.Digest, MediaType: c.MediaType, Size: c.Size, Platform: c.Platform, ArtifactType: c.ArtifactType}
		cm, err := st.GetManifest(ctx, repo, c.Digest)
		switch {
		case errors.Is(err, store.ErrNotFound):
			child.Error = "not in the store"
		case err != nil:
			return doc, err
		case depth >= 4:
			child.Error = "indexes nested too deep to describe"
		default:
			if child, err = describe(ctx, st, repo, cm, c, depth+1); err != nil {
				return doc, err
			}
		}
		doc.Manifests = append(doc.Manifests, child)
	}
	return doc, nil
}

// platformString formats a platform as os/arch[/variant].
func platformString(p *ocispec.Platform) string {
	if p == nil {
		return "-"
	}
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	if p.OSVersion != "" {
		s += " (" + p.OSVersion + ")"
	}
	return s
}

func printInspect(w io.Writer, doc *inspectDoc) error {
	tw := newTable(w)
	fmt.Fprintf(tw, "Reference:\t%s\n", doc.Reference)
	printManifest(tw, &doc.manifestDoc, "")
	return tw.Flush()
}

func printManifest(w io.Writer, m *manifestDoc, indent string) {
	fmt.Fprintf(w, "%sDigest:\t%s\n", indent, m.Digest)
	fmt.Fprintf(w, "%sMedia type:\t%s\n", indent, m.MediaType)
	if m.ArtifactType != "" {
		fmt.Fprintf(w, "%sArtifact type:\t%s\n", indent, m.ArtifactType)
	}
	fmt.Fprintf(w, "%sSize:\t%s\n", indent, sizeString(m.Size))
	if m.Error != "" {
		fmt.Fprintf(w, "%sError:\t%s\n", indent, m.Error)
	}
	if m.Config != nil {
		fmt.Fprintf(w, "%sConfig:\t%s\t%s\t%s\n", indent, m.Config.Digest, m.Config.MediaType, humanSize(m.Config.Size))
		fmt.Fprintf(w, "%sLayers:\t%d\n", indent, len(m.Layers))
		for i, l := range m.Layers {
			fmt.Fprintf(w, "%sLayer %d:\t%s\t%s\t%s\n", indent, i+1, l.Digest, l.MediaType, humanSize(l.Size))
		}
		fmt.Fprintf(w, "%sTotal size:\t%s\n", indent, sizeString(m.TotalSize))
	}
	if m.Manifests != nil {
		fmt.Fprintf(w, "%sManifests:\t%d\n", indent, len(m.Manifests))
		for i := range m.Manifests {
			c := &m.Manifests[i]
			fmt.Fprintf(w, "%sManifest %d:\t%s\n", indent, i+1, platformString(c.Platform))
			printManifest(w, c, indent+"  ")
		}
	}
}

// sizeString is a size in a human unit and in exact bytes.
func sizeString(n int64) string {
	if n < 1024 {
		return humanSize(n)
	}
	return fmt.Sprintf("%s (%d bytes)", humanSize(n), n)
}
