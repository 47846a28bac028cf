package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/s3snap/s3snap/migrator"
	"github.com/s3snap/s3snap/migrator/archive"
	"github.com/s3snap/s3snap/migrator/registry"
)

// pushDoc is push's JSON summary. The top level is the s3:// destination's
// result (as before --also existed); Destinations has one entry per
// destination, the bucket first.
type pushDoc struct {
	Reference  string        `json:"reference"`
	Source     string        `json:"source"`
	SourceKind string        `json:"sourceKind"`
	Digest     digest.Digest `json:"digest"`
	MediaType  string        `json:"mediaType"`
	*migrator.Result
	Destinations []pushResult `json:"destinations"`
}

// pushResult is one destination's outcome.
type pushResult struct {
	Destination string `json:"destination"`
	// Status is "ok" or "failed".
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
	*migrator.Result
	err error
}

// pushTarget is one place push writes.
type pushTarget struct {
	name string
	dst  migrator.Destination
	repo string
	tag  string
	// err is set when the destination could not even be opened.
	err error
	// indexed builds lazy indexes (--lazy-index), set after any wrapper.
	indexed *migrator.IndexedTarget
}

func runPush(cmd *cobra.Command, g *globals, f *pushFlags, srcArg, dstArg string) error {
	ctx := cmd.Context()
	u, err := parseURL(dstArg)
	if err != nil {
		return err
	}
	if u.Tag == "" && u.Digest == "" {
		return usagef("%s names no tag: want s3://BUCKET[/PREFIX]/REPOSITORY:TAG (or @sha256:DIGEST to push untagged)", u)
	}
	if f.jobs < 1 {
		return usagef("--jobs %d: want at least 1", f.jobs)
	}
	if f.bw, f.rr, err = f.limits.parse(); err != nil {
		return err
	}
	also, err := parseAlso(f.also, u.Tag)
	if err != nil {
		return err
	}
	for flag, creds := range map[string]string{"--src-creds": f.srcCreds, "--dst-creds": f.dstCreds} {
		if _, err := basicAuth(flag, creds); err != nil {
			return err
		}
	}
	kind, err := archive.DetectKind(srcArg)
	if err != nil {
		return usageIfScheme(srcArg, err)
	}
	if err := f.check(kind); err != nil {
		return err
	}
	src, closeSrc, err := f.openSource(ctx, g, kind, srcArg)
	if err != nil {
		return err
	}
	defer closeSrc()
	plan, err := migrator.MakePlan(ctx, src)
	if err != nil {
		return fmt.Errorf("read %s: %w", srcArg, err)
	}
	if u.Digest != "" && u.Digest != plan.Root.Digest {
		return fmt.Errorf("%s holds %s, not %s as the URL says", srcArg, plan.Root.Digest, u.Digest)
	}

	doc := pushDoc{Reference: u.String(), Source: srcArg, SourceKind: kind.String(), Digest: plan.Root.Digest, MediaType: plan.Root.MediaType}
	targets := []pushTarget{{name: u.String(), tag: u.Tag}}
	loc, err := g.locate(ctx, u, f.prefix.explicit(cmd), true)
	var ue usageError
	switch {
	case errors.As(err, &ue):
		return err
	case err == nil && loc.repo == "":
		return usagef("%s names no repository (the path is the store prefix %q)", u, loc.store.Prefix())
	case err == nil:
		loc.url.Digest = u.Digest
		if u.Tag == "" {
			loc.url.Digest = plan.Root.Digest
		}
		doc.Reference = loc.ref()
		targets[0] = pushTarget{name: loc.ref(), dst: migrator.StoreDestination(loc.store), repo: loc.repo, tag: u.Tag}
	default:
		targets[0].err = err
	}
	for _, a := range also {
		t := pushTarget{name: a.String(), repo: a.loc.Repository, tag: a.tag}
		r, err := f.registry(a.loc.Host, "--dst-creds", f.dstCreds)
		if err != nil {
			return err
		}
		t.dst = r
		targets = append(targets, t)
	}
	if len(targets) == 1 && targets[0].err != nil {
		return targets[0].err
	}
	lazyMin, err := f.lazy.size()
	if err != nil {
		return err
	}
	if f.bw != nil {
		// One budget for the whole push: every destination's blob
		// uploads share it.
		for i, t := range targets {
			if tg, ok := t.dst.(migrator.Target); ok {
				targets[i].dst = f.bw.Target(tg)
			}
		}
	}
	if tg, ok := targets[0].dst.(migrator.Target); ok && lazyMin != nil && targets[0].err == nil {
		ix := migrator.NewLazyIndexer(loc.store, *lazyMin).Wrap(tg)
		targets[0].dst, targets[0].indexed = ix, ix
	}

	doc.Destinations = pushAll(ctx, g, f, src, plan, srcArg, kind, targets)
	doc.Result = doc.Destinations[0].Result
	var failed []string
	for _, r := range doc.Destinations {
		if r.err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", r.Destination, r.err))
		}
	}
	if len(targets) == 1 && len(failed) == 1 {
		return fmt.Errorf("push %s to %s: %w", srcArg, targets[0].name, doc.Destinations[0].err)
	}
	if g.json() {
		err = writeJSON(g.stdout, doc)
	} else {
		err = printPush(g.stdout, &doc)
	}
	if err != nil {
		return err
	}
	switch {
	case len(failed) == len(targets):
		return fmt.Errorf("push failed for every destination: %s", strings.Join(failed, "; "))
	case len(failed) > 0:
		return fmt.Errorf("push failed for %d of %d destinations (the others are complete): %s", len(failed), len(targets), strings.Join(failed, "; "))
	}
	return nil
}

// openSource opens SRC of kind; close releases it.
func (f *pushFlags) openSource(ctx context.Context, g *globals, kind archive.Kind, srcArg string) (src migrator.Source, closeFn func(), err error) {
	switch kind {
	case archive.KindLayoutDir:
		l, err := archive.OpenLayout(srcArg, f.ref)
		return l, func() {}, err
	case archive.KindRegistry:
		l, err := parseLocation(srcArg)
		if err != nil {
			return nil, nil, err
		}
		if l.Repository == "" {
			return nil, nil, usagef("%s names no repository: want docker://HOST/REPO[:TAG|@DIGEST]", srcArg)
		}
		r, err := f.registry(l.Host, "--src-creds", f.srcCreds)
		if err != nil {
			return nil, nil, err
		}
		ref := l.Ref()
		if ref == "" {
			ref = "latest"
		}
		return r.Source(l.Repository, ref), func() {}, nil
	}
	if kind == archive.KindDockerArchive {
		fmt.Fprintf(g.stderr, "compressing the layers of %s (a docker save tar without an OCI layout)\n", srcArg)
	}
	a, err := archive.OpenArchive(ctx, srcArg, f.ref)
	if err != nil {
		return nil, nil, err
	}
	return a, func() { a.Close() }, nil
}

// registry opens the registry at host with creds (flag names them).
func (f *pushFlags) registry(host, flag, creds string) (*registry.Registry, error) {
	auth, err := basicAuth(flag, creds)
	if err != nil {
		return nil, err
	}
	opts := []registry.RegistryOption{registry.WithInsecure(f.insecure)}
	if f.rr != nil {
		opts = append(opts, registry.WithRequestRate(f.rr))
	}
	if auth != nil {
		opts = append(opts, registry.WithAuth(auth))
	}
	return registry.NewRegistry(host, opts...)
}

// pushAll copies plan into every target at once and returns one result
// per target, in order.
func pushAll(ctx context.Context, g *globals, f *pushFlags, src migrator.Source, plan *migrator.Plan, srcArg string, kind archive.Kind, targets []pushTarget) []pushResult {
	out := make([]pushResult, len(targets))
	var mu sync.Mutex // one progress line at a time across destinations
	var wg sync.WaitGroup
	for i, t := range targets {
		out[i] = pushResult{Destination: t.name, Status: "ok"}
		if t.err != nil {
			out[i].Status, out[i].Error, out[i].err = "failed", t.err.Error(), t.err
			continue
		}
		label := ""
		if len(targets) > 1 {
			label = t.name + ": "
		}
		mu.Lock()
		fmt.Fprintf(g.stderr, "%spushing %s (%s, %s)\n", label, srcArg, sourceKindName(kind), plan.Root.Digest)
		mu.Unlock()
		progress := progressPrinter(g.stderr, label)
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := migrator.CopyTo(ctx, src, t.dst, t.repo, t.tag, migrator.WithPlan(plan), migrator.WithJobs(f.jobs),
				migrator.WithProgress(func(ev migrator.Event) {
					mu.Lock()
					defer mu.Unlock()
					progress(ev)
				}))
			if res != nil && t.indexed != nil {
				res.LazyIndexes, res.LazyIndexBytes = t.indexed.Indexes(), t.indexed.Bytes()
			}
			out[i].Result = res
			if err != nil {
				out[i].Status, out[i].Error, out[i].err = "failed", err.Error(), err
			}
		}()
	}
	wg.Wait()
	return out
}

// progressPrinter prints one plain line per blob, manifest and tag.
func progressPrinter(w io.Writer, label string) func(migrator.Event) {
	return func(ev migrator.Event) {
		d := ev.Descriptor
		switch ev.Kind {
		case migrator.EventBlob:
			state := "uploaded"
			if ev.Existed {
				state = "exists  "
			}
			fmt.Fprintf(w, "%s%s %s %s\n", label, state, d.Digest, humanSize(d.Size))
		case migrator.EventManifest:
			fmt.Fprintf(w, "%smanifest %s %s\n", label, d.Digest, d.MediaType)
		case migrator.EventTag:
			fmt.Fprintf(w, "%stagged   %s\n", label, d.Digest)
		}
	}
}

func printPush(w io.Writer, doc *pushDoc) error {
	tw := newTable(w)
	if len(doc.Destinations) == 1 {
		fmt.Fprintf(tw, "Pushed:\t%s\n", doc.Reference)
	}
	fmt.Fprintf(tw, "Source:\t%s (%s)\n", doc.Source, doc.SourceKind)
	fmt.Fprintf(tw, "Digest:\t%s\n", doc.Digest)
	fmt.Fprintf(tw, "Media type:\t%s\n", doc.MediaType)
	if r := doc.Result; r != nil && len(doc.Destinations) == 1 {
		fmt.Fprintf(tw, "Manifests:\t%d\n", r.Manifests)
		fmt.Fprintf(tw, "Blobs:\t%d uploaded, %d already in the bucket\n", r.BlobsUploaded, r.BlobsSkipped)
		fmt.Fprintf(tw, "Bytes:\t%s uploaded, %s deduplicated\n", humanSize(r.BytesUploaded), humanSize(r.BytesDeduplicated))
		if r.LazyIndexes > 0 {
			fmt.Fprintf(tw, "Lazy indexes:\t%d built (%s)\n", r.LazyIndexes, humanSize(r.LazyIndexBytes))
		}
		return tw.Flush()
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	tw = newTable(w)
	fmt.Fprintln(tw, "DESTINATION\tSTATUS\tBLOBS UPLOADED\tALREADY THERE\tBYTES UPLOADED")
	for _, d := range doc.Destinations {
		up, there, bytes := "-", "-", "-"
		if r := d.Result; r != nil {
			up, there, bytes = fmt.Sprint(r.BlobsUploaded), fmt.Sprint(r.BlobsSkipped), humanSize(r.BytesUploaded)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.Destination, d.Status, up, there, bytes)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, d := range doc.Destinations {
		if d.Error != "" {
			fmt.Fprintf(w, "%s failed: %s\n", d.Destination, d.Error)
		}
	}
	return nil
}
