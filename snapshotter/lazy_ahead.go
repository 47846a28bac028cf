package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/store"
)

// TOCs of an image's layers are fetched all at once, in parallel, at the
// image's first lazy Prepare: containerd prepares the layers one after
// another, each waiting for its parent, so fetching each TOC at its own
// Prepare would put one round trip per layer (GET and HEAD) in series.
// They are kept briefly in memory, by layer digest, for those Prepares.

const (
	tocJobs = 3 // TOC fetches at once
	// tocTTL is how long a fetched TOC waits for its Prepare: long enough
	// for one pull's Prepares, short enough that a later pull sees an
	// index replaced in the bucket meanwhile.
	tocTTL = 15 * time.Second
)

// aheadTOCs is the per-process cache of TOCs fetched ahead of their Prepare.
type aheadTOCs struct {
	mu sync.Mutex
	m  map[tocKey]*tocEntry
}

// tocKey names a layer's TOC as one registry host's stores give it (a
// layer two hosts share may come from different buckets).
type tocKey struct {
	host  string
	layer digest.Digest
}

type tocEntry struct {
	done chan struct{} // closed once the fields below are set
	at   time.Time
	toc  *lazy.TOC
	raw  []byte
	st   *store.Store
	err  error
}

// stale reports whether e was fetched too long ago to be used.
func (e *tocEntry) stale(now time.Time) bool {
	select {
	case <-e.done:
		return now.Sub(e.at) > tocTTL
	default:
		return false
	}
}

// fetchTOC fetches layer's TOC from the first of stores that has a sound
// one; an error wrapping lazy.ErrNoIndex means none has.
func fetchTOC(ctx context.Context, stores []*store.Store, layer digest.Digest) (*lazy.TOC, []byte, *store.Store, error) {
	err := fmt.Errorf("layer %s: %w", layer, lazy.ErrNoIndex)
	for _, st := range stores {
		var toc *lazy.TOC
		var raw []byte
		if toc, raw, err = lazy.FetchTOC(ctx, st, layer); err == nil {
			return toc, raw, st, nil
		}
	}
	return nil, nil, nil, err // the last store's answer, as it decides
}

// warm starts fetching the TOCs of layers not fetched yet, in the
// background (ctx: the snapshotter's lifetime).
func (t *aheadTOCs) warm(ctx context.Context, host string, stores []*store.Store, layers []digest.Digest) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[tocKey]*tocEntry{}
	}
	now := time.Now()
	for d, e := range t.m { // bounded: drop what no Prepare came for
		if e.stale(now) {
			delete(t.m, d)
		}
	}
	var todo []*tocEntry
	var digests []digest.Digest
	for _, d := range layers {
		if _, ok := t.m[tocKey{host, d}]; ok {
			continue
		}
		e := &tocEntry{done: make(chan struct{})}
		t.m[tocKey{host, d}] = e
		todo, digests = append(todo, e), append(digests, d)
	}
	if len(todo) == 0 {
		return
	}
	// In the image's order (its Prepares' order), a few at a time, so the
	// next Prepare's TOC is not slowed by all the others.
	go func() {
		sem := make(chan struct{}, tocJobs)
		for k, e := range todo {
			sem <- struct{}{}
			go func() {
				defer func() { <-sem }()
				e.toc, e.raw, e.st, e.err = fetchTOC(ctx, stores, digests[k])
				e.at = time.Now()
				close(e.done)
			}()
		}
	}()
}

// get returns layer's TOC: the one warm fetched if there is one (waiting
// for it), else fetched now. A failed early fetch is tried again, unless
// it found no index at all.
func (t *aheadTOCs) get(ctx context.Context, host string, stores []*store.Store, layer digest.Digest) (*lazy.TOC, []byte, *store.Store, error) {
	t.mu.Lock()
	e := t.m[tocKey{host, layer}]
	t.mu.Unlock()
	if e != nil {
		select {
		case <-e.done:
		case <-ctx.Done():
			return nil, nil, nil, ctx.Err()
		}
		t.mu.Lock()
		if t.m[tocKey{host, layer}] == e {
			delete(t.m, tocKey{host, layer}) // used: a later pull fetches afresh
		}
		t.mu.Unlock()
		if !e.stale(time.Now()) && (e.err == nil || errors.Is(e.err, lazy.ErrNoIndex)) {
			return e.toc, e.raw, e.st, e.err
		}
	}
	return fetchTOC(ctx, stores, layer)
}
