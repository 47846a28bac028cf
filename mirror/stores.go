package mirror

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/containerd/log"

	"github.com/s3snap/s3snap/store"
)

// tryStores calls fn with each store in order until one succeeds, and
// returns that store. A store that does not hold the thing passes on
// quietly; one that fails (S3 down, a missing bucket, damaged content) is
// logged and passes on too. If none succeeds the error is the failures when
// there were any (the answer is a 503), else the first "not found" (404).
func tryStores(ctx context.Context, stores []*store.Store, fn func(*store.Store) error) (*store.Store, error) {
	var notFound error
	var failed []error
	for _, st := range stores {
		err := fn(st)
		if err == nil {
			return st, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		if errors.Is(err, ErrBlobTooLarge) || errors.Is(err, ErrSpoolFull) {
			return nil, err // the same in every store
		}
		if missing(err) {
			if notFound == nil {
				notFound = err
			}
			continue
		}
		if len(stores) > 1 {
			log.G(ctx).WithError(err).WithField("store", st.URL()).Warn("mirror: store failed, trying the next")
		}
		failed = append(failed, err)
	}
	if len(failed) > 0 {
		return nil, errors.Join(failed...)
	}
	if notFound == nil {
		notFound = store.ErrNotFound // no stores at all
	}
	return nil, notFound
}

// missing reports whether err means "this store does not hold it" rather
// than "this store could not be asked"; a missing bucket is the latter.
func missing(err error) bool {
	if errors.Is(err, store.ErrNoSuchBucket) {
		return false
	}
	return errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrInvalidName)
}

// preferTTL bounds how long blobs of a repository are looked for first in
// the store its last manifest came from: longer than a pull takes.
const preferTTL = 10 * time.Minute

// preferred remembers, per upstream host and repository, the store the
// last manifest was served from, so that the image's blobs are read from
// that same store when it has them: replicas of a bucket may lag behind
// each other, and an image is best read whole from one.
type preferred struct {
	mu sync.Mutex
	m  map[preferKey]preferEntry
}

type preferKey struct{ host, name string }

type preferEntry struct {
	st      *store.Store
	expires time.Time
}

// remember notes that name's manifest came from st.
func (p *preferred) remember(host, name string, st *store.Store) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil || len(p.m) >= manifestCacheSize {
		p.m = make(map[preferKey]preferEntry) // crude, but bounded
	}
	p.m[preferKey{host, name}] = preferEntry{st: st, expires: time.Now().Add(preferTTL)}
}

// order returns stores with the one name's manifest last came from first.
func (p *preferred) order(host, name string, stores []*store.Store) []*store.Store {
	if len(stores) < 2 {
		return stores
	}
	p.mu.Lock()
	e, ok := p.m[preferKey{host, name}]
	p.mu.Unlock()
	if !ok || time.Now().After(e.expires) || e.st == stores[0] {
		return stores
	}
	out := []*store.Store{e.st}
	for _, st := range stores {
		if st != e.st {
			out = append(out, st)
		}
	}
	if len(out) != len(stores) { // not one of host's stores (any more)
		return stores
	}
	return out
}

// servedFrom labels the response's metrics with the store it came from.
func servedFrom(w http.ResponseWriter, storeURL string) {
	if sw, ok := w.(*statusWriter); ok {
		sw.store = storeURL
	}
}
