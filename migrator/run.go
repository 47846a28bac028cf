package migrator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sync/errgroup"

	"github.com/s3snap/s3snap/store"
)

// Defaults of a migration run.
const (
	DefaultImageJobs = 4
	DefaultBlobJobs  = 8
)

// Stats are a running migration's counters, safe to read while it runs.
type Stats struct {
	ImagesTotal atomic.Int64
	ImagesDone  atomic.Int64
	Failed      atomic.Int64
	// BytesTotal is the size of what is planned so far; BytesRead what
	// has streamed from the source.
	BytesTotal atomic.Int64
	BytesRead  atomic.Int64
}

type runOptions struct {
	filter    Filter
	platforms Platforms
	imageJobs int
	blobJobs  int
	shard     Shard
	dryRun    bool
	keepGoing bool
	referrers bool
	rename    func(string) string
	done      func(Entry)
	stats     *Stats
	bandwidth *Bandwidth
	prices    Prices
	partSize  int64
	lazyIndex *int64 // build lazy indexes of layers of at least this size
}

// RunOption configures Migrate and Verify.
type RunOption func(*runOptions)

// WithFilter selects what to migrate.
func WithFilter(f Filter) RunOption { return func(o *runOptions) { o.filter = f } }

// WithPlatforms cuts indexes down to these platforms (changing their
// digests; the report says so).
func WithPlatforms(ps Platforms) RunOption { return func(o *runOptions) { o.platforms = ps } }

// WithImageJobs bounds how many images are copied at once.
func WithImageJobs(n int) RunOption { return func(o *runOptions) { o.imageJobs = max(n, 1) } }

// WithBlobJobs bounds how many blobs stream at once across all images: with
// the store's part size and part concurrency it bounds memory.
func WithBlobJobs(n int) RunOption { return func(o *runOptions) { o.blobJobs = max(n, 1) } }

// WithShard keeps only the shard's part of the listing.
func WithShard(s Shard) RunOption { return func(o *runOptions) { o.shard = s } }

// WithDryRun plans (reads manifests, compares with the destination) and
// writes nothing.
func WithDryRun(b bool) RunOption { return func(o *runOptions) { o.dryRun = b } }

// WithKeepGoing (the default) copies every image even after one fails;
// false stops at the first failure.
func WithKeepGoing(b bool) RunOption { return func(o *runOptions) { o.keepGoing = b } }

// WithReferrers also copies what refers to each image: cosign
// sha256-<hex>.sig/.att/.sbom tags and OCI referrers.
func WithReferrers(b bool) RunOption { return func(o *runOptions) { o.referrers = b } }

// WithRename maps a source repository to its destination name.
func WithRename(fn func(string) string) RunOption { return func(o *runOptions) { o.rename = fn } }

// WithEntries calls fn as each item finishes (serialised).
func WithEntries(fn func(Entry)) RunOption { return func(o *runOptions) { o.done = fn } }

// WithLazyIndex builds the lazy-pull index of every tar layer of at least
// minSize bytes as it is copied into a bucket (LazyIndexer); Verify then
// checks those indexes too. The destination must be a store.
func WithLazyIndex(minSize int64) RunOption { return func(o *runOptions) { o.lazyIndex = &minSize } }

// WithStats keeps s up to date while the run goes.
func WithStats(s *Stats) RunOption { return func(o *runOptions) { o.stats = s } }

func newRunOptions(opts []RunOption) runOptions {
	o := runOptions{imageJobs: DefaultImageJobs, blobJobs: DefaultBlobJobs, keepGoing: true, stats: &Stats{},
		prices: DefaultPrices, partSize: DefaultPartSize}
	for _, opt := range opts {
		opt(&o)
	}
	if o.rename == nil {
		o.rename = func(s string) string { return s }
	}
	return o
}

// Migrate copies what src lists (filtered, sharded) into dst: tags and
// untagged manifests, each image whole with its digests, blobs already there
// skipped, each tag written last. An item the destination already has at the
// same digest is left alone, so re-runs copy only what is new or moved. One
// failed image does not stop the others (unless WithKeepGoing(false)); the
// report says what happened to each. The error is for a run that could not
// start: the source could not be listed.
//
// A dry run (WithDryRun) writes nothing: it reads every manifest, asks the
// destination which blobs it has, and adds the Inventory to the report.
func Migrate(ctx context.Context, src Catalog, dst Target, opts ...RunOption) (*Report, error) {
	o := newRunOptions(opts)
	rep, items, err := start(ctx, "migrate", src, dst, &o)
	if err != nil {
		return nil, err
	}
	out := dst
	if o.bandwidth != nil {
		out = o.bandwidth.Target(out)
	}
	m := &migration{src: src, dst: &gatedTarget{Target: out, sem: make(chan struct{}, o.blobJobs), stats: o.stats}, o: &o}
	if o.lazyIndex != nil && !o.dryRun {
		sd, ok := dst.(*storeDest)
		if !ok {
			return nil, fmt.Errorf("lazy indexes are built only in a bucket, not in %s", dst)
		}
		m.indexer = NewLazyIndexer(sd.s, *o.lazyIndex)
	}
	if o.dryRun {
		m.inv = &inventory{}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Tags before untagged manifests: an untagged child of an index copied
	// under a tag is then found in place.
	split := len(items)
	for i, it := range items {
		if it.Tag == "" {
			split = i
			break
		}
	}
	for _, batch := range [][]Item{items[:split], items[split:]} {
		runItems(rep, batch, &o, o.imageJobs, func(it Item) Entry {
			e := m.one(ctx, it)
			if e.Failed() && !o.keepGoing {
				cancel()
			}
			return e
		})
	}
	// ECR repositories' lifecycle policies go with them into a bucket.
	if ps, ok := src.(PolicySource); ok && !o.dryRun {
		if sd, ok := dst.(*storeDest); ok {
			rep.LifecyclePolicies = copyLifecycle(ctx, ps, sd.s, items, o.rename)
		}
	}
	rep.finish()
	if m.inv != nil {
		rep.Inventory = m.inv.finish(ctx, rep, dst, &o)
	}
	return rep, nil
}

// start lists the items of a migrate or verify run and begins its report.
func start(ctx context.Context, command string, src Catalog, dst Target, o *runOptions) (*Report, []Item, error) {
	rep := &Report{Command: command, Source: src.String(), Destination: dst.String(), DryRun: o.dryRun,
		Platforms: o.platforms.String(), Started: time.Now().UTC()}
	if o.shard.Count > 1 {
		rep.Shard = fmt.Sprintf("%d/%d", o.shard.Index, o.shard.Count)
	}
	items, err := list(ctx, src, o)
	if err != nil {
		return nil, nil, err
	}
	o.stats.ImagesTotal.Store(int64(len(items)))
	return rep, items, nil
}

// runItems runs fn on items, jobs at once, adding each entry to rep as it
// finishes.
func runItems(rep *Report, items []Item, o *runOptions, jobs int, fn func(Item) Entry) {
	var mu sync.Mutex
	g := errgroup.Group{}
	g.SetLimit(jobs)
	for _, it := range items {
		g.Go(func() error {
			e := fn(it)
			mu.Lock()
			defer mu.Unlock()
			rep.Entries = append(rep.Entries, e)
			o.stats.ImagesDone.Add(1)
			if e.Failed() {
				o.stats.Failed.Add(1)
			}
			if o.done != nil {
				o.done(e)
			}
			return nil
		})
	}
	_ = g.Wait()
}

// list enumerates, shards and (with referrers) expands the items, sorted.
func list(ctx context.Context, src Catalog, o *runOptions) ([]Item, error) {
	all, err := src.List(ctx, o.filter)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", src, err)
	}
	var items []Item
	seen := map[string]bool{}
	for _, it := range all {
		if o.shard.Has(it) && !seen[it.Key()] {
			seen[it.Key()] = true
			items = append(items, it)
		}
	}
	if o.referrers {
		if rl, ok := src.(ReferrerLister); ok {
			more, err := referrersOf(ctx, src, rl, items)
			if err != nil {
				return nil, err
			}
			for _, it := range more {
				if !seen[it.Key()] {
					seen[it.Key()] = true
					items = append(items, it)
				}
			}
		}
	}
	sortItems(items)
	return items, nil
}

// referrersOf finds what refers to each item (resolving tags to digests
// where the listing did not give them).
func referrersOf(ctx context.Context, src Catalog, rl ReferrerLister, items []Item) ([]Item, error) {
	var out []Item
	for _, it := range items {
		if it.Tag != "" && isReferrerTag(it.Tag) {
			continue
		}
		d := it.Digest
		if d == "" {
			s, err := src.Open(ctx, it)
			if err == nil {
				var root Descriptor
				root, err = s.Root(ctx)
				d = root.Digest
			}
			if err != nil {
				log.G(ctx).WithError(err).WithField("image", it.Key()).Warn("cannot resolve image to look for referrers")
				continue
			}
		}
		refs, err := rl.Referrers(ctx, it.Repository, d)
		if err != nil {
			return nil, fmt.Errorf("referrers of %s: %w", it.Key(), err)
		}
		out = append(out, refs...)
	}
	return out, nil
}

type migration struct {
	src Catalog
	dst Target
	o   *runOptions
	inv *inventory // dry runs only
	// indexer builds lazy indexes as layers are copied (WithLazyIndex).
	indexer *LazyIndexer
}

// one migrates one item and says how it went.
func (m *migration) one(ctx context.Context, it Item) (e Entry) {
	e = Entry{Repository: it.Repository, Tag: it.Tag, SourceDigest: it.Digest, MediaType: it.MediaType, Size: it.Size}
	repo := m.o.rename(it.Repository)
	if repo != it.Repository {
		e.DestinationRepository = repo
	}
	fail := func(err error) Entry {
		e.Status, e.Reason = StatusFailed, err.Error()
		log.G(ctx).WithError(err).WithField("image", it.Key()).Warn("image failed")
		if m.inv != nil {
			m.inv.add(InventoryImage{Repository: it.Repository, Tag: it.Tag, Digest: e.SourceDigest, PushedAt: it.PushedAt,
				Status: StatusFailed, Reason: e.Reason}, repo, it.Tag != "", nil)
		}
		return e
	}
	if ctx.Err() != nil {
		return fail(fmt.Errorf("not attempted: %w", context.Cause(ctx)))
	}
	// The listing gave the digest: if the destination has it, nothing to
	// read at all (a dry run reads the manifests anyway, for the sizes).
	if it.Digest != "" && len(m.o.platforms) == 0 && m.inv == nil {
		if ok := m.unchanged(ctx, repo, it.Tag, it.Digest); ok {
			e.Status, e.DestinationDigest = StatusUnchanged, it.Digest
			return e
		}
	}
	src, err := m.src.Open(ctx, it)
	if err != nil {
		return fail(err)
	}
	var fs *FilteredSource
	if len(m.o.platforms) > 0 {
		fs = FilterPlatforms(src, m.o.platforms)
		src = fs
	}
	plan, err := MakePlan(ctx, src)
	if err != nil {
		return fail(err)
	}
	e.SourceDigest, e.MediaType, e.Size = plan.Root.Digest, plan.Root.MediaType, plan.Size()
	if fs != nil && fs.Filtered() {
		e.SourceDigest = fs.Original()
		e.Note = fmt.Sprintf("platform filter %s rewrote the index: %s became %s", m.o.platforms, fs.Original(), plan.Root.Digest)
	}
	if m.unchanged(ctx, repo, it.Tag, plan.Root.Digest) {
		e.Status, e.DestinationDigest = StatusUnchanged, plan.Root.Digest
	} else if m.o.dryRun {
		e.Status = StatusPlanned
	}
	if m.inv != nil {
		img := imageOf(ctx, src, it, plan)
		img.Status = e.Status
		m.inv.add(img, repo, it.Tag != "", plan)
	}
	if e.Status != "" {
		return e
	}
	m.o.stats.BytesTotal.Add(plan.Size())
	var dst Target = m.dst
	if m.indexer != nil {
		ix := m.indexer.Wrap(m.dst)
		dst = ix
		defer func() { e.LazyIndexes, e.LazyIndexBytes = ix.Indexes(), ix.Bytes() }()
	}
	res, err := CopyTo(ctx, src, dst, repo, it.Tag, WithJobs(m.o.blobJobs), WithPlan(plan))
	if res != nil {
		e.Manifests, e.Blobs = res.Manifests, res.BlobsUploaded+res.BlobsSkipped
		e.BytesMoved, e.BytesDeduplicated = res.BytesUploaded, res.BytesDeduplicated
	}
	if err != nil {
		return fail(err)
	}
	e.Status, e.DestinationDigest = StatusCopied, plan.Root.Digest
	return e
}

// unchanged reports whether the destination already has the item at d.
func (m *migration) unchanged(ctx context.Context, repo, tag string, d Digest) bool {
	if tag == "" {
		ok, err := m.dst.HasManifest(ctx, repo, d)
		return err == nil && ok
	}
	got, err := m.dst.Resolve(ctx, repo, tag)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		log.G(ctx).WithError(err).WithField("tag", repo+":"+tag).Debug("destination tag unreadable; copying")
	}
	return err == nil && got == d
}

// gatedTarget bounds the blobs streaming at once across all images and
// counts their bytes.
type gatedTarget struct {
	Target
	sem   chan struct{}
	stats *Stats
}

func (g *gatedTarget) PutBlob(ctx context.Context, repo string, desc Descriptor, open Opener) (bool, error) {
	select {
	case g.sem <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-g.sem }()
	return g.Target.PutBlob(ctx, repo, desc, func(ctx context.Context) (io.ReadCloser, error) {
		rc, err := open(ctx)
		if err != nil {
			return nil, err
		}
		return &countingReader{ReadCloser: rc, n: &g.stats.BytesRead}, nil
	})
}

type countingReader struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}
