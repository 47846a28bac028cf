package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/s3snap/s3snap/rewrite"
)

const rewriteLong = `Rewrite container image references in YAML from one registry (and path
prefix) to another, for the cutover from ECR to a registry serving the
migrated images.

Rewritten, in every document of a file:
  - any image: (or fooImage:) string: containers, initContainers and
    ephemeralContainers of Pods, Deployments, StatefulSets, DaemonSets,
    ReplicaSets, Jobs, CronJobs and any other object with a pod spec;
  - Helm values image blocks: repository, tag and optional registry and
    digest (a registry that held the whole --from takes the whole --to);
  - kustomization.yaml images: entries (name, newName; newTag, digest).
ConfigMap and Secret data are left alone.

Only references whose registry matches --from, and whose path starts with
its prefix on a path-component boundary, change: --from r.example.com/team
moves r.example.com/team/app, not r.example.com/teamx/app. Everything else,
and every other byte (comments, key order, quoting, indentation, anchors),
stays exactly as it was: only the changed scalars are replaced. A second run
changes nothing.

--pin-digests takes the JSON report of s3snap verify (-o json or --report)
and replaces each tag it verified (status ok) with the digest it verified:
r.example.com/team/app:v1 becomes registry.example.com/mirror/app@sha256:...
(with --from r.example.com/team --to registry.example.com/mirror).
A tag the report does not show as verified keeps its tag and is listed as
a warning. In a Helm block the digest goes into its digest field; in a
kustomization newTag becomes digest.

PATH is a file (any name) or a directory, walked for *.yaml and *.yml.
Files that are not YAML, do not parse (Helm templates with {{ }}) or have
no image field are left byte for byte and listed as skipped; the text
output names those that mention the --from registry, to check by hand.
Files are replaced atomically (a temporary file, then a rename), keeping
their mode. A kustomization's name: is rewritten like the manifests it
matches: run over a base and its overlays together.

--dry-run prints a unified diff (patch -p1 applies it) and writes nothing;
the exit code is 0 whether or not something would change. With -o json:
{"files": [{"file", "status", "references": [{"old", "new", "location",
"field"}], "warnings": [...], "diff"}], "summary": {...}}.`

const rewriteExample = `  # Point every manifest in a repository at the new registry
  s3snap rewrite --from 123456789012.dkr.ecr.us-east-1.amazonaws.com \
      --to registry.example.com/mirror ./deploy ./charts/payments/values.yaml

  # See the change first, as a diff
  s3snap rewrite --dry-run --from 123456789012.dkr.ecr.us-east-1.amazonaws.com \
      --to registry.example.com/mirror ./deploy

  # Pin tags to the digests verify proved equal at both ends
  s3snap verify -o json ecr://123456789012.dkr.ecr.us-east-1.amazonaws.com \
      docker://registry.example.com/mirror > verify.json
  s3snap rewrite --pin-digests verify.json \
      --from 123456789012.dkr.ecr.us-east-1.amazonaws.com --to registry.example.com/mirror ./deploy`

// rewriteRef is one rewritten reference in rewrite's JSON output.
type rewriteRef struct {
	Old      string `json:"old"`
	New      string `json:"new"`
	Location string `json:"location"` // file:line
	Field    string `json:"field"`
}

type rewriteWarning struct {
	Location  string `json:"location"`
	Field     string `json:"field"`
	Reference string `json:"reference"`
	Message   string `json:"message"`
}

type rewriteFile struct {
	File       string           `json:"file"`
	Status     rewrite.Status   `json:"status"`
	Reason     string           `json:"reason,omitempty"`
	Error      string           `json:"error,omitempty"`
	References []rewriteRef     `json:"references,omitempty"`
	Warnings   []rewriteWarning `json:"warnings,omitempty"`
	Diff       string           `json:"diff,omitempty"`
}

type rewriteSummary struct {
	Files      int `json:"files"`
	Changed    int `json:"changed"`
	Unchanged  int `json:"unchanged"`
	Skipped    int `json:"skipped"`
	Failed     int `json:"failed"`
	References int `json:"references"`
	Warnings   int `json:"warnings"`
}

type rewriteOutput struct {
	From    string         `json:"from"`
	To      string         `json:"to"`
	DryRun  bool           `json:"dryRun"`
	Files   []rewriteFile  `json:"files"`
	Summary rewriteSummary `json:"summary"`
}

func newRewriteCmd(g *globals) *cobra.Command {
	var from, to, pinPath string
	var dryRun bool
	cmd := &cobra.Command{
		Use:     "rewrite --from REGISTRY[/PREFIX] --to REGISTRY[/PREFIX] PATH...",
		Short:   "Rewrite image references in Kubernetes YAML, Helm values and kustomizations to another registry",
		Long:    rewriteLong,
		Example: rewriteExample,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("%s takes one or more PATHs (files or directories)", cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if from == "" || to == "" {
				return usagef("give both --from and --to, e.g. --from 123456789012.dkr.ecr.us-east-1.amazonaws.com --to registry.example.com/mirror")
			}
			var opts []rewrite.Option
			if pinPath != "" {
				pins, err := rewrite.LoadPins(pinPath)
				switch {
				case errors.Is(err, rewrite.ErrNotVerifyReport):
					return usagef("--pin-digests: %w: give the output of s3snap verify -o json or its --report file", err)
				case err != nil:
					return fmt.Errorf("--pin-digests: %w", err)
				}
				opts = append(opts, rewrite.WithPins(pins))
			}
			// The flags are named here: the library speaks of source and
			// destination.
			if _, err := rewrite.ParseLocation(from); err != nil {
				return usagef("--from: %w", err)
			}
			if _, err := rewrite.ParseLocation(to); err != nil {
				return usagef("--to: %w", err)
			}
			rw, err := rewrite.New(from, to, opts...)
			if errors.Is(err, rewrite.ErrOverlap) {
				return usagef("--from lies inside --to: %w", err)
			}
			if err != nil {
				return asUsage(err)
			}
			files, err := rewrite.Files(args)
			if err != nil {
				return err
			}
			out := rewriteOutput{From: from, To: to, DryRun: dryRun, Files: []rewriteFile{}}
			for _, path := range files {
				res, err := rw.File(cmd.Context(), path, !dryRun)
				out.add(path, res, err, dryRun)
			}
			if g.json() {
				if err := writeJSON(g.stdout, out); err != nil {
					return err
				}
			} else {
				printRewrite(g.stdout, g.stderr, &out)
			}
			if out.Summary.Failed > 0 {
				return fmt.Errorf("%d of %d files could not be rewritten (listed above)", out.Summary.Failed, out.Summary.Files)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "the registry (and path prefix) to move references away from, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com")
	f.StringVar(&to, "to", "", "the registry (and path prefix) to move them to, e.g. registry.example.com/mirror")
	f.StringVar(&pinPath, "pin-digests", "", "replace tags with the digests this s3snap verify JSON report proved equal")
	f.BoolVar(&dryRun, "dry-run", false, "print a unified diff and write nothing")
	return cmd
}

// add records one file's outcome.
func (o *rewriteOutput) add(path string, res *rewrite.Result, err error, dryRun bool) {
	f := rewriteFile{File: path}
	o.Summary.Files++
	if res != nil {
		f.Status, f.Reason = res.Status, res.Reason
		for _, c := range res.Changes {
			f.References = append(f.References, rewriteRef{Old: c.Old, New: c.New, Location: path + ":" + strconv.Itoa(c.Line), Field: c.Field})
		}
		for _, w := range res.Warnings {
			f.Warnings = append(f.Warnings, rewriteWarning{Location: path + ":" + strconv.Itoa(w.Line), Field: w.Field, Reference: w.Reference, Message: w.Message})
		}
		if dryRun {
			f.Diff = res.Diff()
		}
		o.Summary.References += len(f.References)
		o.Summary.Warnings += len(f.Warnings)
	}
	switch {
	case err != nil:
		f.Error = err.Error()
		o.Summary.Failed++
	case f.Status == rewrite.StatusChanged:
		o.Summary.Changed++
	case f.Status == rewrite.StatusSkipped:
		o.Summary.Skipped++
	default:
		o.Summary.Unchanged++
	}
	o.Files = append(o.Files, f)
}

// printRewrite prints the text output: with --dry-run the diff on stdout
// (so it can go to patch) and the rest on stderr; otherwise every
// rewritten reference on stdout.
func printRewrite(stdout, stderr io.Writer, o *rewriteOutput) {
	notes := stdout
	if o.DryRun {
		notes = stderr
	}
	for _, f := range o.Files {
		if o.DryRun {
			fmt.Fprint(stdout, f.Diff)
		} else {
			for _, r := range f.References {
				fmt.Fprintf(stdout, "%s: %s -> %s\n", r.Location, r.Old, r.New)
			}
		}
		for _, w := range f.Warnings {
			fmt.Fprintf(notes, "%s: warning: %s: %s\n", w.Location, w.Reference, w.Message)
		}
		switch {
		case f.Error != "":
			fmt.Fprintf(notes, "%s: error: %s\n", f.File, f.Error)
		case f.Status == rewrite.StatusSkipped && f.Reason != rewrite.ReasonNoImages:
			// Parse failures, and YAML with no image field that names --from
			fmt.Fprintf(notes, "%s: skipped: %s\n", f.File, f.Reason)
		}
	}
	s := o.Summary
	verb := "rewrote"
	if o.DryRun {
		verb = "dry run, nothing written: would rewrite"
	}
	fmt.Fprintf(notes, "%s %d references in %d of %d files; skipped %d files; %d warnings\n", verb, s.References, s.Changed, s.Files, s.Skipped, s.Warnings)
}
