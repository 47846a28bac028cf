package lifecycle

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/s3snap/s3snap/store"
)

// sum is a sha256 digest's 32 bytes: the mark set's key.
type sum [32]byte

func (s sum) digest() digest.Digest {
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(s[:]))
}

// parseHex reads 64 lowercase hex characters.
func parseHex(h string) (sum, bool) {
	var s sum
	if len(h) != 64 || strings.ToLower(h) != h {
		return s, false
	}
	_, err := hex.Decode(s[:], []byte(h))
	return s, err == nil
}

func sumOf(d digest.Digest) (sum, bool) {
	if d.Algorithm() != digest.SHA256 {
		return sum{}, false
	}
	return parseHex(d.Encoded())
}

// stamp is a listed link's time and size.
type stamp struct {
	mod  int64 // unix nanoseconds
	size int64
}

func stampOf(o store.Object) stamp { return stamp{mod: o.LastModified.UnixNano(), size: o.Size} }

// repoScan is one repository as listed: its links.
type repoScan struct {
	id        int32
	name      string
	revisions map[sum]stamp
	layers    map[sum]stamp
	tags      map[string]*tagScan
}

type tagScan struct {
	current *store.Object // nil: a tag folder without a current link
	index   map[sum]stamp
}

func (r *repoScan) tagCount() int {
	n := 0
	for _, t := range r.tags {
		if t.current != nil {
			n++
		}
	}
	return n
}

// scan is every repository's links, as one pass listed them.
type scan struct{ repos []*repoScan }

// tagRead is a current link already read: read again only if it changed.
type tagRead struct {
	etag string
	d    digest.Digest
}

// repoSum is a digest within one repository: a revision or layer link.
type repoSum struct {
	repo int32
	d    sum
}

// marks is what is in use: blobs by digest, links by repository.
type marks struct {
	mu     sync.Mutex
	blobs  map[sum]struct{}
	revs   map[repoSum]struct{} // manifests visited (and their revision links)
	layers map[repoSum]struct{}
}

func newMarks() *marks {
	return &marks{blobs: map[sum]struct{}{}, revs: map[repoSum]struct{}{}, layers: map[repoSum]struct{}{}}
}

func (m *marks) manifests() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.revs)
}

func (m *marks) hasBlob(s sum) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.blobs[s]
	return ok
}

// visit marks manifest d in repo; false if it already was.
func (m *marks) visit(repo int32, d sum) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := repoSum{repo, d}
	if _, ok := m.revs[k]; ok {
		return false
	}
	m.revs[k] = struct{}{}
	m.blobs[d] = struct{}{}
	return true
}

func (m *marks) layer(repo int32, d sum) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.layers[repoSum{repo, d}] = struct{}{}
	m.blobs[d] = struct{}{}
}

// gc is one run's state.
type gc struct {
	st     *store.Store
	opts   gcOptions
	cutoff time.Time // older than this, unreferenced objects go
	roots  time.Time // untagged manifests newer than this are kept
	rep    *GCReport

	mark *marks

	mu       sync.Mutex
	repoIDs  map[string]int32
	tagRead  map[string]tagRead // by current link key
	untagged map[repoSum]bool   // untagged manifests kept as roots
}

func (g *gc) repoID(name string) int32 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.repoIDs == nil {
		g.repoIDs = map[string]int32{}
	}
	id, ok := g.repoIDs[name]
	if !ok {
		id = int32(len(g.repoIDs))
		g.repoIDs[name] = id
	}
	return id
}

// scanRepositories lists every repository's links: one delimited listing
// of repositories/, then each top-level folder listed flat, in parallel.
// Only keys of Distribution's layout are recorded; anything else (upload
// sessions, unknown files) is left alone.
func (g *gc) scanRepositories(ctx context.Context) (*scan, error) {
	base := g.st.RegistryRoot() + "repositories/"
	var tops []string
	if err := g.st.WalkDirs(ctx, base, func(dir string) error {
		tops = append(tops, dir)
		return nil
	}); err != nil {
		if errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrNoSuchBucket) {
			return &scan{}, nil
		}
		return nil, fmt.Errorf("gc: list repositories: %w", err)
	}
	var (
		mu    sync.Mutex
		repos = map[string]*repoScan{}
	)
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(g.opts.jobs)
	for _, top := range tops {
		eg.Go(func() error {
			local := map[string]*repoScan{}
			err := g.st.Walk(ectx, top, func(o store.Object) error {
				rest := strings.TrimPrefix(o.Key, base)
				i := strings.Index(rest, "/_")
				if i <= 0 {
					return nil
				}
				name, tail := rest[:i], rest[i+1:]
				r := local[name]
				if r == nil {
					r = &repoScan{id: g.repoID(name), name: name, revisions: map[sum]stamp{}, layers: map[sum]stamp{}, tags: map[string]*tagScan{}}
					local[name] = r
				}
				r.add(tail, o)
				return nil
			})
			mu.Lock()
			for n, r := range local {
				repos[n] = r
			}
			mu.Unlock()
			return err
		})
	}
	if err := eg.Wait(); err != nil {
		return nil, fmt.Errorf("gc: list repositories: %w", err)
	}
	s := &scan{repos: make([]*repoScan, 0, len(repos))}
	for _, r := range repos {
		s.repos = append(s.repos, r)
	}
	return s, nil
}

// add records one key of the repository, tail being what follows its name.
func (r *repoScan) add(tail string, o store.Object) {
	if h, ok := strings.CutPrefix(tail, "_layers/sha256/"); ok {
		if h, ok = strings.CutSuffix(h, "/link"); ok {
			if s, ok := parseHex(h); ok {
				r.layers[s] = stampOf(o)
			}
		}
		return
	}
	if h, ok := strings.CutPrefix(tail, "_manifests/revisions/sha256/"); ok {
		if h, ok = strings.CutSuffix(h, "/link"); ok {
			if s, ok := parseHex(h); ok {
				r.revisions[s] = stampOf(o)
			}
		}
		return
	}
	rest, ok := strings.CutPrefix(tail, "_manifests/tags/")
	if !ok {
		return
	}
	tag, what, ok := strings.Cut(rest, "/")
	if !ok || store.ValidateTag(tag) != nil {
		return
	}
	t := r.tags[tag]
	if t == nil {
		t = &tagScan{index: map[sum]stamp{}}
		r.tags[tag] = t
	}
	if what == "current/link" {
		o := o
		t.current = &o
		return
	}
	if h, ok := strings.CutPrefix(what, "index/sha256/"); ok {
		if h, ok = strings.CutSuffix(h, "/link"); ok {
			if s, ok := parseHex(h); ok {
				t.index[s] = stampOf(o)
			}
		}
	}
}

// markFrom marks what scan's tags reach, then what recent links reach.
func (g *gc) markFrom(ctx context.Context, s *scan) error {
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(g.opts.jobs)
	for _, r := range s.repos {
		for tag, t := range r.tags {
			if t.current == nil {
				continue
			}
			eg.Go(func() error {
				d, ok, err := g.resolve(ectx, r, tag, t.current)
				if err != nil || !ok {
					return err
				}
				return g.markManifest(ectx, r, d)
			})
		}
	}
	if err := eg.Wait(); err != nil {
		return err
	}
	// Untagged manifests written within the grace period or the retention,
	// and layer links within the grace period, with all they reach.
	rootsAfter, cutoff := g.roots.UnixNano(), g.cutoff.UnixNano()
	eg, ectx = errgroup.WithContext(ctx)
	eg.SetLimit(g.opts.jobs)
	for _, r := range s.repos {
		for d, st := range r.revisions {
			if st.mod <= rootsAfter {
				continue
			}
			k := repoSum{r.id, d}
			g.mark.mu.Lock()
			_, tagged := g.mark.revs[k]
			g.mark.mu.Unlock()
			g.mu.Lock()
			if !tagged && !g.untagged[k] {
				g.untagged[k] = true
				g.rep.UntaggedKept++
			}
			g.mu.Unlock()
			eg.Go(func() error { return g.markManifest(ectx, r, d.digest()) })
		}
		for d, st := range r.layers {
			if st.mod > cutoff {
				g.mark.layer(r.id, d)
			}
		}
	}
	return eg.Wait()
}

// resolve reads a tag's current link, unless already read unchanged.
func (g *gc) resolve(ctx context.Context, r *repoScan, tag string, cur *store.Object) (digest.Digest, bool, error) {
	g.mu.Lock()
	prev, ok := g.tagRead[cur.Key]
	g.mu.Unlock()
	if ok && prev.etag == cur.ETag && cur.ETag != "" {
		return prev.d, true, nil
	}
	d, err := g.st.ReadLink(ctx, cur.Key)
	switch {
	case errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrNoSuchBucket):
		return "", false, nil // removed meanwhile
	case errors.Is(err, store.ErrCorrupt):
		// A link naming no digest reaches nothing; a registry cannot serve
		// it either.
		log.G(ctx).WithError(err).Warnf("gc: tag %s:%s is damaged, it keeps nothing", r.name, tag)
		return "", false, nil
	case err != nil:
		return "", false, fmt.Errorf("gc: tag %s:%s: %w", r.name, tag, err)
	}
	if _, ok := sumOf(d); !ok {
		log.G(ctx).Warnf("gc: tag %s:%s points at %s, not a sha256 digest; it keeps nothing", r.name, tag, d)
		return "", false, nil
	}
	g.mu.Lock()
	g.tagRead[cur.Key] = tagRead{etag: cur.ETag, d: d}
	g.mu.Unlock()
	return d, true, nil
}

// maxIndexDepth bounds nested indexes (an index of indexes of ...).
const maxIndexDepth = 8

// markManifest marks manifest d of r and everything below it.
func (g *gc) markManifest(ctx context.Context, r *repoScan, d digest.Digest) error {
	return g.markDepth(ctx, r, d, 0)
}

func (g *gc) markDepth(ctx context.Context, r *repoScan, d digest.Digest, depth int) error {
	s, ok := sumOf(d)
	if !ok {
		return nil
	}
	if depth > maxIndexDepth {
		return fmt.Errorf("gc: manifest %s in %s: indexes nested deeper than %d: %w", d, r.name, maxIndexDepth, store.ErrInvalidManifest)
	}
	if !g.mark.visit(r.id, s) {
		return nil
	}
	m, err := g.st.ReadManifestBlob(ctx, d)
	if errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrNoSuchBucket) {
		log.G(ctx).Warnf("gc: manifest %s in %s is not in the bucket; nothing to keep under it", d, r.name)
		g.mu.Lock()
		g.rep.MissingManifests++
		g.mu.Unlock()
		return nil
	}
	if err != nil {
		// What a damaged manifest references is unknown: sweeping could
		// delete what it needs. The user decides (s3snap rm it).
		return fmt.Errorf("gc: cannot tell what manifest %s in %s references, nothing deleted (remove it with s3snap rm if it is not needed): %w", d, r.name, err)
	}
	if m.IsIndex() {
		for _, c := range m.Index.Manifests {
			if err := g.markDepth(ctx, r, c.Digest, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	for _, b := range m.Blobs() {
		if bs, ok := sumOf(b.Digest); ok {
			g.mark.layer(r.id, bs)
		}
	}
	return nil
}
