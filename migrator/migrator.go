// Package migrator copies container images into a store: the sources images
// come from (an OCI image layout directory for now; registries and ECR plug in
// through the same Source interface), the copy plan (every manifest and blob a
// tag reaches), and the streaming copy that writes them in the order that
// keeps the bucket consistent: blobs first, then child manifests, then the
// index, and the tag last.
package migrator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/s3snap/s3snap/store"
)

// ErrSource is returned when a source hands out content that does not match
// what it described: a manifest whose bytes do not hash to its digest, or a
// blob listed with two sizes.
var ErrSource = errors.New("source content does not match its descriptor")

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
	jobs     int
	progress func(Event)
}

// Option configures Copy.
type Option func(*options)

// WithJobs bounds how many blobs are uploaded at once (values below 1 mean 1).
func WithJobs(n int) Option { return func(o *options) { o.jobs = max(n, 1) } }

// WithProgress calls fn for every blob, manifest and tag as it lands. Calls
// are serialised, never concurrent.
func WithProgress(fn func(Event)) Option { return func(o *options) { o.progress = fn } }

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
}

// Copy copies the image or index src describes into repository repo of dst
// and, when tag is not empty, points tag at it. Indexes are copied whole,
// byte for byte, so every digest is preserved. Blobs already in the bucket are
// not uploaded again, so running Copy twice is cheap and safe; a Copy that
// fails part way leaves the tag untouched (and returns the Result so far with
// the error).
func Copy(ctx context.Context, src Source, dst *store.Store, repo, tag string, opts ...Option) (*Result, error) {
	o := options{jobs: DefaultJobs}
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
	plan, err := MakePlan(ctx, src)
	if err != nil {
		return nil, err
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
			existed, err := copyBlob(gctx, src, dst, b)
			if err != nil {
				return err
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

	// Children before parents: the store accepts an index only once its
	// children are in the repository.
	for _, m := range plan.Manifests {
		d, err := dst.PutManifest(ctx, repo, m.Raw)
		if err != nil {
			return res, fmt.Errorf("store manifest %s: %w", m.Descriptor.Digest, err)
		}
		if d != m.Descriptor.Digest {
			return res, fmt.Errorf("store manifest %s: stored as %s: %w", m.Descriptor.Digest, d, store.ErrDigestMismatch)
		}
		res.Manifests++
		report(Event{Kind: EventManifest, Descriptor: m.Descriptor})
	}

	if tag != "" {
		if err := dst.Tag(ctx, repo, tag, plan.Root.Digest); err != nil {
			return res, err
		}
		report(Event{Kind: EventTag, Descriptor: plan.Root})
	}
	return res, nil
}

// copyBlob puts one blob in the store unless it is already there (then the
// source is not even opened).
func copyBlob(ctx context.Context, src Source, dst *store.Store, b ocispec.Descriptor) (existed bool, err error) {
	info, err := dst.StatBlob(ctx, b.Digest)
	switch {
	case err == nil && info.Size == b.Size:
		return true, nil
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return false, fmt.Errorf("copy blob %s: %w", b.Digest, err)
	}
	rc, err := src.Blob(ctx, b)
	if err != nil {
		return false, fmt.Errorf("copy blob %s: %w", b.Digest, err)
	}
	defer rc.Close()
	existed, err = dst.PutBlob(ctx, b.Digest, b.Size, rc)
	if err != nil {
		return false, fmt.Errorf("copy blob %s: %w", b.Digest, err)
	}
	return existed, nil
}
