// Package migrator is the copy engine: the interfaces images are copied
// through (Source, Catalog, Destination, Target), the copy plan (every
// manifest and blob a tag reaches), the streaming copy that writes them in
// the order that keeps the bucket consistent (blobs first, then child
// manifests, then the index, and the tag last), migrate and verify over
// whole catalogs, their report and inventory, and the bandwidth and
// request-rate limits. A bucket is a source and destination here; the
// registry and ECR client lives in migrator/registry and the OCI layout and
// tarball readers in migrator/archive, which import this package and never
// the other way round.
package migrator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/s3snap/s3snap/internal/retry"
	"github.com/s3snap/s3snap/store"
)

// ErrSource is returned when a source hands out content that does not match
// what it described: a manifest whose bytes do not hash to its digest, or a
// blob listed with two sizes.
var ErrSource = errors.New("source content does not match its descriptor")

// ErrUnauthorized is returned when a registry refuses the credentials; a
// copy that failed with it is not tried again.
var ErrUnauthorized = errors.New("unauthorized")

// Source is where images are copied from. Implementations must be safe for
// concurrent use: Copy reads several blobs at once.
type Source interface {
	// Root describes the image manifest or index to copy.
	Root(ctx context.Context) (ocispec.Descriptor, error)
	// Manifest returns the raw bytes of manifest d, exactly as the source
	// holds them (Copy verifies them against d).
	Manifest(ctx context.Context, d digest.Digest) ([]byte, error)
	// Blob opens a config or layer. Copy verifies digest and size while
	// it streams.
	Blob(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error)
}

// DefaultJobs is how many blobs Copy uploads at once unless told otherwise.
const DefaultJobs = 4

// EventKind says what an Event reports.
type EventKind int

// The things Copy reports as it goes.
const (
	// EventBlob: a config or layer is in the store (Existed: it was
	// already there and nothing was uploaded).
	EventBlob EventKind = iota
	// EventManifest: a manifest is stored in the repository.
	EventManifest
	// EventTag: the tag now points at the root.
	EventTag
)

// Event reports progress of a Copy.
type Event struct {
	Kind       EventKind
	Descriptor ocispec.Descriptor
	Existed    bool
}

type options struct {
	attempts int
	jobs     int
	progress func(Event)
	plan     *Plan
}

// Option configures Copy.
type Option func(*options)

// WithJobs bounds how many blobs are uploaded at once (values below 1 mean 1).
func WithJobs(n int) Option { return func(o *options) { o.jobs = max(n, 1) } }

// WithProgress calls fn for every blob, manifest and tag as it lands. Calls
// are serialised, never concurrent.
func WithProgress(fn func(Event)) Option { return func(o *options) { o.progress = fn } }

// WithAttempts sets how often a blob is tried (default 3): a broken
// stream, or bytes that did not hash right in transit, are tried again from
// the start; a blob the source does not have is not.
func WithAttempts(n int) Option { return func(o *options) { o.attempts = max(n, 1) } }

// WithPlan copies plan (made by MakePlan from the same source) instead of
// making it again.
func WithPlan(p *Plan) Option { return func(o *options) { o.plan = p } }

// Result summarises one Copy.
type Result struct {
	Repository string        `json:"repository"`
	Tag        string        `json:"tag,omitempty"`
	Digest     digest.Digest `json:"digest"`
	MediaType  string        `json:"mediaType"`
	// Manifests is how many manifests were stored (an index and its
	// children count one each).
	Manifests     int `json:"manifests"`
	BlobsUploaded int `json:"blobsUploaded"`
	BlobsSkipped  int `json:"blobsSkipped"`
	// BytesUploaded is the config and layer bytes sent to the bucket;
	// BytesDeduplicated the bytes of those that were already there.
	BytesUploaded     int64 `json:"bytesUploaded"`
	BytesDeduplicated int64 `json:"bytesDeduplicated"`
	// LazyIndexes is how many lazy-pull indexes were built (push
	// --lazy-index: LazyIndexer), LazyIndexBytes their objects' bytes.
	LazyIndexes    int   `json:"lazyIndexes,omitempty"`
	LazyIndexBytes int64 `json:"lazyIndexBytes,omitempty"`
}

// Copy copies the image or index src describes into repository repo of the
// store dst and, when tag is not empty, points tag at it. It is CopyTo with
// the store as the destination.
func Copy(ctx context.Context, src Source, dst *store.Store, repo, tag string, opts ...Option) (*Result, error) {
	return CopyTo(ctx, src, StoreDestination(dst), repo, tag, opts...)
}

// CopyTo copies the image or index src describes into repository repo of dst
// and, when tag is not empty, points tag at it. Indexes are copied whole,
// byte for byte, so every digest is preserved. Blobs already at the
// destination are not uploaded again, so running CopyTo twice is cheap and
// safe; a CopyTo that fails part way leaves the tag untouched (and returns the
// Result so far with the error).
func CopyTo(ctx context.Context, src Source, dst Destination, repo, tag string, opts ...Option) (*Result, error) {
	o := options{jobs: DefaultJobs, attempts: 3}
	for _, opt := range opts {
		opt(&o)
	}
	if err := store.ValidateRepository(repo); err != nil {
		return nil, err
	}
	if tag != "" {
		if err := store.ValidateTag(tag); err != nil {
			return nil, err
		}
	}
	plan := o.plan
	if plan == nil {
		var err error
		if plan, err = MakePlan(ctx, src); err != nil {
			return nil, err
		}
	}
	res := &Result{Repository: repo, Tag: tag, Digest: plan.Root.Digest, MediaType: plan.Root.MediaType}
	var mu sync.Mutex // guards res and serialises progress calls
	report := func(ev Event) {
		if o.progress != nil {
			o.progress(ev)
		}
	}

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.jobs)
	for _, b := range plan.Blobs {
		g.Go(func() error {
			existed, err := putBlob(gctx, src, dst, repo, b, o.attempts)
			if err != nil {
				return fmt.Errorf("copy blob %s: %w", b.Digest, err)
			}
			mu.Lock()
			defer mu.Unlock()
			if existed {
				res.BlobsSkipped++
				res.BytesDeduplicated += b.Size
			} else {
				res.BlobsUploaded++
				res.BytesUploaded += b.Size
			}
			report(Event{Kind: EventBlob, Descriptor: b, Existed: existed})
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return res, err
	}

	// Children before parents: a destination accepts an index only once its
	// children are in the repository.
	for _, m := range plan.Manifests {
		if err := dst.PutManifest(ctx, repo, m.Descriptor, m.Raw); err != nil {
			return res, fmt.Errorf("store manifest %s: %w", m.Descriptor.Digest, err)
		}
		res.Manifests++
		report(Event{Kind: EventManifest, Descriptor: m.Descriptor})
	}

	if tag != "" {
		if err := dst.Tag(ctx, repo, tag, plan.Root, plan.rootRaw()); err != nil {
			return res, err
		}
		report(Event{Kind: EventTag, Descriptor: plan.Root})
	}
	return res, nil
}

// copyBackoff spaces a blob's copy attempts (WithAttempts says how many):
// the registry client's default backoff, under the shared retry policy.
var copyBackoff = retry.Policy{Base: 500 * time.Millisecond, Max: 30 * time.Second}

// putBlob copies one blob, trying again after failures worth retrying.
func putBlob(ctx context.Context, src Source, dst Destination, repo string, b ocispec.Descriptor, attempts int) (bool, error) {
	for i := 0; ; i++ {
		existed, err := dst.PutBlob(ctx, repo, b, func(ctx context.Context) (io.ReadCloser, error) { return src.Blob(ctx, b) })
		if err == nil || i+1 >= attempts || !retryableCopy(ctx, err) {
			return existed, err
		}
		log.G(ctx).WithError(err).WithField("blob", b.Digest).Warn("blob copy failed; trying again")
		if err := retry.Sleep(ctx, copyBackoff.Delay(i+1, retry.Retry, nil)); err != nil {
			return false, err
		}
	}
}

// retryableCopy reports whether a blob copy that failed with err may work
// on another try.
func retryableCopy(ctx context.Context, err error) bool {
	return ctx.Err() == nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrInvalidName) &&
		!errors.Is(err, ErrUnauthorized) && !errors.Is(err, context.Canceled)
}
