package lifecycle

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/log"

	"github.com/s3snap/s3snap/store"
)

// DefaultGrace is how long gc leaves an unreferenced object alone after it
// was written: a push or migration uploads blobs and manifests before the
// tag that makes them reachable, and may take hours on a large image.
const DefaultGrace = 24 * time.Hour

// PricePerGBMonth is the S3 Standard storage price in us-east-1 (first
// 50 TB, USD per GB-month, a GB being 2^30 bytes as AWS bills it), what
// gc's monthly saving is computed at.
const PricePerGBMonth = 0.023

// Kinds of objects gc sweeps.
const (
	KindBlob         = "blob"          // layer, config or manifest data
	KindRevisionLink = "revision-link" // a manifest in a repository
	KindTagLink      = "tag-link"      // a tag's history entry for a swept manifest
	KindLayerLink    = "layer-link"    // a config or layer in a repository
	KindLazyIndex    = "lazy-index"    // s3snap lazy-pull TOC or data
	KindUpload       = "upload"        // incomplete multipart upload
)

// Count is a number of objects and their bytes.
type Count struct {
	Objects int64 `json:"objects"`
	Bytes   int64 `json:"bytes"`
}

func (c *Count) add(o Count) { c.Objects += o.Objects; c.Bytes += o.Bytes }

// Swept is what gc deleted (or, dry, would delete), by kind.
type Swept struct {
	Blobs         Count `json:"blobs"`
	RevisionLinks Count `json:"revisionLinks"`
	TagLinks      Count `json:"tagLinks"`
	LayerLinks    Count `json:"layerLinks"`
	LazyIndexes   Count `json:"lazyIndexes"`
	Uploads       Count `json:"uploads"`
}

func (s *Swept) of(kind string) *Count {
	switch kind {
	case KindBlob:
		return &s.Blobs
	case KindRevisionLink:
		return &s.RevisionLinks
	case KindTagLink:
		return &s.TagLinks
	case KindLayerLink:
		return &s.LayerLinks
	case KindLazyIndex:
		return &s.LazyIndexes
	default:
		return &s.Uploads
	}
}

// GCReport is the outcome of GC.
type GCReport struct {
	Store        string  `json:"store"`
	DryRun       bool    `json:"dryRun"`
	GraceSeconds float64 `json:"graceSeconds"`
	// Reachable is what the mark phase found in use.
	Repositories int `json:"repositories"`
	Tags         int `json:"tags"`
	Manifests    int `json:"manifests"`
	// UntaggedKept counts untagged manifests kept for being younger than
	// the grace period or the --keep-untagged retention.
	UntaggedKept int `json:"untaggedKept"`
	// MissingManifests counts tags or index children naming a manifest
	// whose data is not in the bucket (nothing to mark under them).
	MissingManifests int `json:"missingManifests"`
	// Kept counts the blobs that stay and their bytes.
	Kept Count `json:"kept"`
	// Protected counts unreferenced objects left alone because they are
	// younger than the grace period.
	Protected Count `json:"protected"`
	Swept     Swept `json:"swept"`
	// BytesFreed is the bytes of every object swept.
	BytesFreed int64 `json:"bytesFreed"`
	// MonthlySavingUSD is BytesFreed at PricePerGBMonth.
	MonthlySavingUSD float64 `json:"monthlySavingUSD"`
	// Requests is the number of S3 requests made, when the caller counts
	// them (see the CLI); 0 otherwise.
	Requests int64   `json:"requests,omitempty"`
	Took     float64 `json:"seconds"`
}

// Deletion is one object gc deletes or, dry, would delete.
type Deletion struct {
	Kind string `json:"kind"`
	Key  string `json:"key"`
	Size int64  `json:"size"`
}

type gcOptions struct {
	grace        time.Duration
	keepUntagged time.Duration
	dryRun       bool
	jobs         int
	now          func() time.Time
	observe      func(Deletion)
}

// GCOption configures GC.
type GCOption func(*gcOptions)

// WithGrace sets the grace period (default DefaultGrace): an unreferenced
// object written less than d ago (by its LastModified) stays. 0 sweeps
// everything unreferenced: only when nothing writes to the store.
func WithGrace(d time.Duration) GCOption { return func(o *gcOptions) { o.grace = max(d, 0) } }

// WithKeepUntagged keeps untagged manifests younger than d, and everything
// they reach, as if tagged (default 0: only tags and the grace period keep
// a manifest).
func WithKeepUntagged(d time.Duration) GCOption {
	return func(o *gcOptions) { o.keepUntagged = max(d, 0) }
}

// WithDryRun makes GC report what it would delete and delete nothing.
func WithDryRun(dry bool) GCOption { return func(o *gcOptions) { o.dryRun = dry } }

// WithJobs sets how many S3 requests GC runs at once (default 16).
func WithJobs(n int) GCOption { return func(o *gcOptions) { o.jobs = max(n, 1) } }

// WithObserver has fn called for every object deleted (after its batch
// succeeded) or, dry, that would be. Calls may come from several
// goroutines at once.
func WithObserver(fn func(Deletion)) GCOption { return func(o *gcOptions) { o.observe = fn } }

// GC deletes from st what no tag reaches.
//
// Mark: every repository's tags are read; the manifests they point at, the
// children of indexes, configs and layers are marked, per repository (for
// its revision and layer links) and by digest (for blobs), and so are lazy
// indexes of marked layers. Untagged manifests and layer links younger than
// the grace period (or, for manifests, the --keep-untagged retention) are
// marked too, with all they reach: a push or migration in progress writes
// them before its tag. Just before the sweep the repositories are listed
// again and anything tagged or written meanwhile is marked as well.
//
// Sweep, in this order so a stop part way never leaves a reachable link to
// missing data: revision links and tag history links of unmarked manifests,
// unmarked layer links, then unmarked blobs (listed in parallel over the
// 256 blobs/sha256/<hh>/ prefixes), lazy indexes of unmarked layers and
// incomplete multipart uploads, each only when older than the grace period.
// Deletes go in DeleteObjects batches of up to 1000 keys.
//
// Memory is bounded by what is in use, not by the bucket: about 100 bytes
// per link (tags, revision and layer links, kept while the repositories are
// scanned) and 60 bytes per marked digest; blobs are streamed, one listing
// page per prefix in flight, and pending deletes are at most jobs+1
// batches. At 100k blobs and 10k tags that is tens of MB.
func GC(ctx context.Context, st *store.Store, opts ...GCOption) (*GCReport, error) {
	o := gcOptions{grace: DefaultGrace, jobs: 16, now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	start := o.now()
	g := &gc{
		st:       st,
		opts:     o,
		cutoff:   start.Add(-o.grace),
		roots:    start.Add(-max(o.grace, o.keepUntagged)),
		rep:      &GCReport{Store: st.URL(), DryRun: o.dryRun, GraceSeconds: o.grace.Seconds()},
		mark:     newMarks(),
		tagRead:  map[string]tagRead{},
		untagged: map[repoSum]bool{},
	}
	lg := log.G(ctx).WithField("store", st.URL())
	// Two passes: the second sees what was tagged or written while the
	// first marked.
	var scan *scan
	for pass := 1; pass <= 2; pass++ {
		var err error
		if scan, err = g.scanRepositories(ctx); err != nil {
			return nil, err
		}
		if err := g.markFrom(ctx, scan); err != nil {
			return nil, err
		}
		lg.WithFields(log.Fields{"pass": pass, "repositories": len(scan.repos), "manifests": g.mark.manifests()}).Debug("gc: marked")
	}
	g.rep.Repositories = len(scan.repos)
	g.rep.Manifests = g.mark.manifests()
	for _, r := range scan.repos {
		g.rep.Tags += r.tagCount()
	}
	if err := g.sweepLinks(ctx, scan); err != nil {
		return g.finish(start), err
	}
	if err := g.sweepBlobs(ctx); err != nil {
		return g.finish(start), err
	}
	if err := g.sweepLazy(ctx); err != nil {
		return g.finish(start), err
	}
	if err := g.sweepUploads(ctx); err != nil {
		return g.finish(start), err
	}
	return g.finish(start), nil
}

func (g *gc) finish(start time.Time) *GCReport {
	r := g.rep
	for _, c := range []Count{r.Swept.Blobs, r.Swept.RevisionLinks, r.Swept.TagLinks, r.Swept.LayerLinks, r.Swept.LazyIndexes, r.Swept.Uploads} {
		r.BytesFreed += c.Bytes
	}
	r.MonthlySavingUSD = MonthlyCost(r.BytesFreed)
	r.Took = g.opts.now().Sub(start).Seconds()
	return r
}

// MonthlyCost is what storing n bytes costs a month at PricePerGBMonth.
func MonthlyCost(n int64) float64 { return float64(n) / (1 << 30) * PricePerGBMonth }

// String is the report as a few lines of text.
func (r *GCReport) String() string {
	verb := "deleted"
	if r.DryRun {
		verb = "would delete"
	}
	line := func(name string, c Count) string {
		return fmt.Sprintf("  %-15s %8d objects %14d bytes\n", name, c.Objects, c.Bytes)
	}
	s := fmt.Sprintf("%s: %d repositories, %d tags, %d manifests in use (%d untagged kept, %d missing)\n",
		r.Store, r.Repositories, r.Tags, r.Manifests, r.UntaggedKept, r.MissingManifests)
	s += fmt.Sprintf("kept %d blobs (%d bytes); %d unreferenced objects (%d bytes) younger than the %s grace period left alone\n",
		r.Kept.Objects, r.Kept.Bytes, r.Protected.Objects, r.Protected.Bytes, time.Duration(r.GraceSeconds*float64(time.Second)))
	s += verb + ":\n" + line("blobs", r.Swept.Blobs) + line("revision links", r.Swept.RevisionLinks) +
		line("tag links", r.Swept.TagLinks) + line("layer links", r.Swept.LayerLinks) +
		line("lazy indexes", r.Swept.LazyIndexes) + line("uploads", r.Swept.Uploads)
	s += fmt.Sprintf("%d bytes freed: $%.4f a month at $%.3f/GB-month (S3 Standard, us-east-1)\n", r.BytesFreed, r.MonthlySavingUSD, PricePerGBMonth)
	if r.Requests > 0 {
		s += fmt.Sprintf("%d S3 requests in %.1fs\n", r.Requests, r.Took)
	}
	return s
}
