package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/s3snap/s3snap/store"
)

// sweeper collects deletions into batches of store.MaxDeleteBatch keys and
// deletes each batch as it fills, at most jobs batches at once. Counts go
// to the report only once a batch is deleted (or, dry, at once).
type sweeper struct {
	g       *gc
	ctx     context.Context
	eg      *errgroup.Group
	mu      sync.Mutex
	pending []Deletion
}

func (g *gc) newSweeper(ctx context.Context) *sweeper {
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(g.opts.jobs)
	return &sweeper{g: g, ctx: ectx, eg: eg}
}

// add queues one deletion; it blocks while jobs batches are in flight.
func (s *sweeper) add(d Deletion) error {
	if err := s.ctx.Err(); err != nil {
		return context.Cause(s.ctx)
	}
	s.mu.Lock()
	s.pending = append(s.pending, d)
	var batch []Deletion
	if len(s.pending) >= store.MaxDeleteBatch {
		batch, s.pending = s.pending, nil
	}
	s.mu.Unlock()
	if batch != nil {
		s.eg.Go(func() error { return s.delete(batch) })
	}
	return nil
}

// wait deletes what is pending and waits for every batch.
func (s *sweeper) wait() error {
	s.mu.Lock()
	batch := s.pending
	s.pending = nil
	s.mu.Unlock()
	if len(batch) > 0 {
		s.eg.Go(func() error { return s.delete(batch) })
	}
	return s.eg.Wait()
}

func (s *sweeper) delete(batch []Deletion) error {
	g := s.g
	if !g.opts.dryRun {
		var keys []string
		var uploads []Deletion
		for _, d := range batch {
			if d.Kind == KindUpload {
				uploads = append(uploads, d)
				continue
			}
			keys = append(keys, d.Key)
		}
		if err := g.st.Delete(s.ctx, keys); err != nil {
			return fmt.Errorf("gc: %w", err)
		}
		for _, u := range uploads {
			key, id, _ := strings.Cut(u.Key, "?uploadId=")
			if err := g.st.AbortUpload(s.ctx, store.Upload{Key: key, UploadID: id}); err != nil {
				return fmt.Errorf("gc: %w", err)
			}
		}
	}
	g.mu.Lock()
	for _, d := range batch {
		g.rep.Swept.of(d.Kind).add(Count{Objects: 1, Bytes: d.Size})
	}
	g.mu.Unlock()
	if g.opts.observe != nil {
		for _, d := range batch {
			g.opts.observe(d)
		}
	}
	return nil
}

// sweepLinks deletes the revision links of unmarked manifests, the tag
// history links naming them (and every history link of a tag without a
// current link), then unmarked layer links, older than the grace period.
func (g *gc) sweepLinks(ctx context.Context, s *scan) error {
	cutoff := g.cutoff.UnixNano()
	m := g.mark
	sw := g.newSweeper(ctx)
	for _, r := range s.repos {
		for d, st := range r.revisions {
			if _, ok := m.revs[repoSum{r.id, d}]; ok || st.mod > cutoff {
				continue
			}
			if err := sw.add(Deletion{Kind: KindRevisionLink, Key: g.st.RevisionLinkKey(r.name, d.digest()), Size: st.size}); err != nil {
				return sw.fail(err)
			}
		}
		for tag, t := range r.tags {
			for d, st := range t.index {
				_, kept := m.revs[repoSum{r.id, d}]
				if (kept && t.current != nil) || st.mod > cutoff {
					continue
				}
				key := g.st.TagKey(r.name, tag) + "index/sha256/" + d.digest().Encoded() + "/link"
				if err := sw.add(Deletion{Kind: KindTagLink, Key: key, Size: st.size}); err != nil {
					return sw.fail(err)
				}
			}
		}
	}
	if err := sw.wait(); err != nil {
		return err
	}
	// Layer links after the manifests that used them are gone.
	sw = g.newSweeper(ctx)
	for _, r := range s.repos {
		for d, st := range r.layers {
			if _, ok := m.layers[repoSum{r.id, d}]; ok || st.mod > cutoff {
				continue
			}
			if err := sw.add(Deletion{Kind: KindLayerLink, Key: g.st.LayerLinkKey(r.name, d.digest()), Size: st.size}); err != nil {
				return sw.fail(err)
			}
		}
	}
	return sw.wait()
}

// fail waits for batches in flight and returns err (or theirs).
func (s *sweeper) fail(err error) error {
	if werr := s.eg.Wait(); werr != nil {
		return werr
	}
	return err
}

// sweepBlobs lists the 256 blobs/sha256/<hh>/ prefixes, jobs at a time,
// and deletes each unmarked blob older than the grace period.
func (g *gc) sweepBlobs(ctx context.Context) error {
	base := g.st.RegistryRoot() + "blobs/sha256/"
	sw := g.newSweeper(ctx)
	lg, lctx := errgroup.WithContext(ctx)
	lg.SetLimit(g.opts.jobs)
	var (
		mu              sync.Mutex
		kept, protected Count
	)
	for i := range 256 {
		prefix := fmt.Sprintf("%s%02x/", base, i)
		lg.Go(func() error {
			var k, p Count
			err := g.st.Walk(lctx, prefix, func(o store.Object) error {
				h, ok := strings.CutSuffix(strings.TrimPrefix(o.Key, prefix), "/data")
				if !ok {
					return nil // not a blob's data: not ours to judge
				}
				s, ok := parseHex(h)
				if !ok || !strings.HasPrefix(h, prefix[len(prefix)-3:len(prefix)-1]) {
					return nil
				}
				switch {
				case g.mark.hasBlob(s):
					k.add(Count{1, o.Size})
				case o.LastModified.After(g.cutoff):
					p.add(Count{1, o.Size})
				default:
					return sw.add(Deletion{Kind: KindBlob, Key: o.Key, Size: o.Size})
				}
				return nil
			})
			mu.Lock()
			kept.add(k)
			protected.add(p)
			mu.Unlock()
			return err
		})
	}
	lerr := lg.Wait()
	serr := sw.wait()
	g.rep.Kept.add(kept)
	g.mu.Lock()
	g.rep.Protected.add(protected)
	g.mu.Unlock()
	if err := errors.Join(lerr, serr); err != nil {
		return fmt.Errorf("gc: sweep blobs: %w", err)
	}
	return nil
}

// sweepLazy deletes lazy-pull indexes (<prefix>/s3snap/lazy/v*/sha256/<layer
// hex>/...) of layers no longer marked, older than the grace period.
func (g *gc) sweepLazy(ctx context.Context) error {
	base := g.st.ExtraRoot() + "lazy/"
	sw := g.newSweeper(ctx)
	var protected Count
	err := g.st.Walk(ctx, base, func(o store.Object) error {
		_, rest, ok := strings.Cut(strings.TrimPrefix(o.Key, base), "/sha256/")
		if !ok {
			return nil
		}
		h, _, ok := strings.Cut(rest, "/")
		s, valid := parseHex(h)
		if !ok || !valid || g.mark.hasBlob(s) {
			return nil
		}
		if o.LastModified.After(g.cutoff) {
			protected.add(Count{1, o.Size})
			return nil
		}
		return sw.add(Deletion{Kind: KindLazyIndex, Key: o.Key, Size: o.Size})
	})
	werr := sw.wait()
	g.mu.Lock()
	g.rep.Protected.add(protected)
	g.mu.Unlock()
	if err := errors.Join(err, werr); err != nil && !(errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrNoSuchBucket)) {
		return fmt.Errorf("gc: sweep lazy indexes: %w", err)
	}
	return nil
}

// sweepUploads aborts incomplete multipart uploads under the registry root
// and the s3snap area started before the grace period: parts of a push or
// migration that died, billed but invisible in listings.
func (g *gc) sweepUploads(ctx context.Context) error {
	sw := g.newSweeper(ctx)
	var protected Count
	var err error
	for _, prefix := range []string{g.st.RegistryRoot(), g.st.ExtraRoot()} {
		err = g.st.ListUploads(ctx, prefix, func(u store.Upload) error {
			if u.Initiated.After(g.cutoff) {
				protected.add(Count{Objects: 1})
				return nil
			}
			return sw.add(Deletion{Kind: KindUpload, Key: u.Key + "?uploadId=" + u.UploadID})
		})
		if err != nil {
			break
		}
	}
	werr := sw.wait()
	g.mu.Lock()
	g.rep.Protected.add(protected)
	g.mu.Unlock()
	if err := errors.Join(err, werr); err != nil {
		return fmt.Errorf("gc: abort uploads: %w", err)
	}
	return nil
}
