package migrator

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/store"
)

// Verify checks, for every item src lists (with the same filter, shard and
// platform options as the migration), that dst has it at the same digest and
// that every manifest and blob it reaches is present; with deep, every blob
// is read back and re-hashed; with WithLazyIndex, every tar layer of the
// minimum size has a lazy index that rebuilds it (lazy.CheckImage), and
// with deep, every lazy index there does. Each entry is ok, missing, mismatch or
// incomplete. It is the cutover gate: the report's Failed says whether it is
// safe to switch.
func Verify(ctx context.Context, src Catalog, dst Target, deep bool, opts ...RunOption) (*Report, error) {
	o := newRunOptions(opts)
	rep, items, err := start(ctx, "verify", src, dst, &o)
	if err != nil {
		return nil, err
	}
	runItems(rep, items, &o, o.imageJobs*2, func(it Item) Entry { return verifyOne(ctx, src, dst, it, deep, &o) })
	rep.finish()
	return rep, nil
}

func verifyOne(ctx context.Context, cat Catalog, dst Target, it Item, deep bool, o *runOptions) Entry {
	e := Entry{Repository: it.Repository, Tag: it.Tag, SourceDigest: it.Digest, MediaType: it.MediaType}
	repo := o.rename(it.Repository)
	if repo != it.Repository {
		e.DestinationRepository = repo
	}
	set := func(s Status, err error) Entry {
		e.Status = s
		if err != nil {
			e.Reason = err.Error()
		}
		return e
	}
	want := it.Digest
	if want == "" || len(o.platforms) > 0 {
		src, err := cat.Open(ctx, it)
		if err != nil {
			return set(StatusFailed, fmt.Errorf("source: %w", err))
		}
		if len(o.platforms) > 0 {
			src = FilterPlatforms(src, o.platforms)
		}
		root, err := src.Root(ctx)
		if err != nil {
			return set(StatusFailed, fmt.Errorf("source: %w", err))
		}
		if want == "" {
			e.SourceDigest = root.Digest
		}
		want, e.MediaType = root.Digest, root.MediaType
	}
	if it.Tag != "" {
		got, err := dst.Resolve(ctx, repo, it.Tag)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return set(StatusMissing, fmt.Errorf("tag %s:%s is not at the destination", repo, it.Tag))
		case err != nil:
			return set(StatusFailed, err)
		}
		e.DestinationDigest = got
		if got != want {
			return set(StatusMismatch, fmt.Errorf("tag %s:%s is %s at the destination, %s at the source", repo, it.Tag, got, want))
		}
	} else {
		ok, err := dst.HasManifest(ctx, repo, want)
		if err != nil {
			return set(StatusFailed, err)
		}
		if !ok {
			return set(StatusMissing, fmt.Errorf("manifest %s is not in %s at the destination", want, repo))
		}
		e.DestinationDigest = want
	}
	if err := dst.Check(ctx, repo, want, deep); err != nil {
		return set(StatusBroken, err)
	}
	// With WithLazyIndex, the layers' lazy indexes are part of the image;
	// deep, those present are checked too.
	if sd, ok := dst.(*storeDest); ok && (o.lazyIndex != nil || deep) {
		minSize := int64(math.MaxInt64)
		if o.lazyIndex != nil {
			minSize = *o.lazyIndex
		}
		if err := lazy.CheckImage(ctx, sd.s, repo, want, minSize); err != nil {
			return set(StatusBroken, err)
		}
	}
	return set(StatusOK, nil)
}
