package migrator

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"

	"github.com/s3snap/s3snap/store"
)

// Opener opens a blob's bytes; a destination may call it again to retry.
type Opener func(ctx context.Context) (io.ReadCloser, error)

// Destination is where CopyTo writes. Implementations must be safe for
// concurrent use and every write must be idempotent.
type Destination interface {
	// PutBlob makes the config or layer desc part of repository repo. If
	// the destination already holds it, open is not called and existed is
	// true. Otherwise the bytes open returns are streamed in, verified
	// against desc's digest and size, and nothing is kept if they do not
	// match.
	PutBlob(ctx context.Context, repo string, desc ocispec.Descriptor, open Opener) (existed bool, err error)
	// PutManifest stores raw, which hashes to desc.Digest, in repo. What it
	// references (blobs, child manifests) must already be there.
	PutManifest(ctx context.Context, repo string, desc ocispec.Descriptor, raw []byte) error
	// Tag points tag of repo at manifest desc (raw: its bytes), which is
	// already in repo. It is the last write of a copy.
	Tag(ctx context.Context, repo, tag string, desc ocispec.Descriptor, raw []byte) error
}

// Target is a Destination a migration can also ask what it holds, for
// incremental runs and verify.
type Target interface {
	Destination
	// String names the destination for reports.
	String() string
	// Resolve returns the digest tag of repo points at, or an error
	// wrapping store.ErrNotFound.
	Resolve(ctx context.Context, repo, tag string) (digest.Digest, error)
	// HasManifest reports whether manifest d is in repo.
	HasManifest(ctx context.Context, repo string, d digest.Digest) (bool, error)
	// Check returns nil if manifest d of repo and everything it reaches is
	// present, or an error naming what is missing or damaged. With deep,
	// every blob is read back and re-hashed.
	Check(ctx context.Context, repo string, d digest.Digest, deep bool) error
}

// StoreDestination writes into an s3snap store (Distribution's layout in a
// bucket). Blobs are shared bucket-wide, so a blob already uploaded for any
// repository is only linked.
func StoreDestination(s *store.Store) Target { return &storeDest{s: s} }

type storeDest struct {
	s      *store.Store
	flight Flight
}

func (d *storeDest) String() string { return d.s.URL() }

func (d *storeDest) PutBlob(ctx context.Context, _ string, desc ocispec.Descriptor, open Opener) (bool, error) {
	return d.flight.Do(ctx, desc.Digest.String(), func() (bool, error) {
		info, err := d.s.StatBlob(ctx, desc.Digest)
		switch {
		case err == nil && info.Size == desc.Size:
			return true, nil
		case err != nil && !errors.Is(err, store.ErrNotFound):
			return false, err
		}
		rc, err := open(ctx)
		if err != nil {
			return false, err
		}
		defer rc.Close()
		return d.s.PutBlob(ctx, desc.Digest, desc.Size, rc)
	})
}

func (d *storeDest) PutManifest(ctx context.Context, repo string, desc ocispec.Descriptor, raw []byte) error {
	got, err := d.s.PutManifest(ctx, repo, raw)
	if err != nil {
		return err
	}
	if got != desc.Digest {
		return fmt.Errorf("stored as %s: %w", got, store.ErrDigestMismatch)
	}
	return nil
}

func (d *storeDest) Tag(ctx context.Context, repo, tag string, desc ocispec.Descriptor, _ []byte) error {
	return d.s.Tag(ctx, repo, tag, desc.Digest)
}

func (d *storeDest) Resolve(ctx context.Context, repo, tag string) (digest.Digest, error) {
	return d.s.Resolve(ctx, repo, tag)
}

func (d *storeDest) HasManifest(ctx context.Context, repo string, dg digest.Digest) (bool, error) {
	_, err := d.s.GetManifest(ctx, repo, dg)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (d *storeDest) Check(ctx context.Context, repo string, dg digest.Digest, deep bool) error {
	if err := d.s.CheckComplete(ctx, repo, dg); err != nil {
		return err
	}
	if !deep {
		return nil
	}
	return WalkManifests(ctx, dg, func(ctx context.Context, m digest.Digest) ([]byte, error) {
		sm, err := d.s.GetManifest(ctx, repo, m) // re-hashed by GetManifest
		if err != nil {
			return nil, err
		}
		return sm.Raw, nil
	}, func(ctx context.Context, b ocispec.Descriptor) error {
		rc, _, err := d.s.OpenBlob(ctx, b.Digest)
		if err != nil {
			return err
		}
		defer rc.Close()
		return DrainVerify(rc, b)
	})
}

// WalkManifests reads manifest d, checking its digest, and, below it, every child manifest, and
// calls blob for each config and layer.
func WalkManifests(ctx context.Context, d digest.Digest, get func(context.Context, digest.Digest) ([]byte, error), blob func(context.Context, ocispec.Descriptor) error) error {
	raw, err := get(ctx, d)
	if err != nil {
		return fmt.Errorf("manifest %s: %w", d, err)
	}
	if got := digest.FromBytes(raw); got != d {
		return fmt.Errorf("manifest %s hashes to %s: %w", d, got, store.ErrDigestMismatch)
	}
	m, err := store.ParseManifest(raw)
	if err != nil {
		return fmt.Errorf("manifest %s: %w", d, err)
	}
	if m.IsIndex() {
		for _, c := range m.Index.Manifests {
			if err := WalkManifests(ctx, c.Digest, get, blob); err != nil {
				return err
			}
		}
		return nil
	}
	for _, b := range m.Blobs() {
		if err := blob(ctx, b); err != nil {
			return fmt.Errorf("manifest %s: blob %s: %w", d, b.Digest, err)
		}
	}
	return nil
}

// DrainVerify reads r to the end and checks it is desc's bytes (size and
// digest). Destinations use it for a deep Check.
func DrainVerify(r io.Reader, desc ocispec.Descriptor) error {
	v := desc.Digest.Verifier()
	n, err := io.Copy(v, r)
	if err != nil {
		return err
	}
	if desc.Size >= 0 && n != desc.Size {
		return fmt.Errorf("read %d bytes, want %d: %w", n, desc.Size, store.ErrSizeMismatch)
	}
	if !v.Verified() {
		return fmt.Errorf("content does not hash to %s: %w", desc.Digest, store.ErrDigestMismatch)
	}
	return nil
}

// Flight runs one upload per key at a time across a migration: when two
// images share a layer, the second waits for the first and then finds the
// blob there (existed), so shared layers are uploaded once and counted as
// deduplicated bytes for every other image. Destinations embed one; the
// zero value is ready.
type Flight struct{ g singleflight.Group }

// Do runs fn for key unless another call for key is running; then it waits
// for that one and reports existed if it succeeded, or runs fn itself if it
// failed.
func (f *Flight) Do(ctx context.Context, key string, fn func() (bool, error)) (bool, error) {
	for {
		var led bool // this caller's fn ran: its result is its own
		ch := f.g.DoChan(key, func() (any, error) { led = true; return fn() })
		select {
		case r := <-ch:
			if led {
				existed, _ := r.Val.(bool)
				return existed, r.Err
			}
			if r.Err == nil {
				return true, nil
			}
		case <-ctx.Done():
			return false, ctx.Err()
		}
		// The other upload failed; try ourselves (our source may differ).
	}
}
