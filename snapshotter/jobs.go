package snapshotter

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/store"
)

// job is one layer being fetched and unpacked in the background. done is
// closed when result/err are set.
type job struct {
	st      *store.Store // where the layer is read from
	done    chan struct{}
	result  *staged
	err     error
	claimed bool
	expire  *time.Timer
}

// jobs runs layer unpacks, at most n at once, each layer once at a time.
// An unpacked layer nobody claims within ttl is removed.
type jobs struct {
	ctx   context.Context // the snapshotter's lifetime
	sn    snapshots.Snapshotter
	sem   chan struct{} // a slot for each layer unpacking
	ahead chan struct{} // a slot for each layer looking up its index ahead of sem
	ttl   time.Duration
	mu    sync.Mutex
	byID  map[digest.Digest]*job
}

func newJobs(ctx context.Context, sn snapshots.Snapshotter, n int, ttl time.Duration) *jobs {
	return &jobs{ctx: ctx, sn: sn, sem: make(chan struct{}, max(n, 1)), ahead: make(chan struct{}, max(n, 1)), ttl: ttl, byID: map[digest.Digest]*job{}}
}

// start begins unpacking layer d from st unless it is already under way.
func (j *jobs) start(st *store.Store, d digest.Digest) *job {
	j.mu.Lock()
	defer j.mu.Unlock()
	if jb, ok := j.byID[d]; ok {
		return jb
	}
	jb := &job{st: st, done: make(chan struct{})}
	j.byID[d] = jb
	go func() {
		ctx := log.WithLogger(j.ctx, log.G(j.ctx).WithField("layer", d))
		jb.result, jb.err = j.run(ctx, st, d)
		j.mu.Lock()
		defer j.mu.Unlock()
		close(jb.done)
		if jb.err != nil {
			delete(j.byID, d) // let a later Prepare try again
			return
		}
		jb.expire = time.AfterFunc(j.ttl, func() { j.expireJob(d, jb) })
	}()
	return jb
}

// storeOf returns the store layer d's job reads it from, if one is under
// way or its result is waiting, else nil: a Prepare that finds it need
// not ask the stores again.
func (j *jobs) storeOf(d digest.Digest) *store.Store {
	j.mu.Lock()
	defer j.mu.Unlock()
	if jb, ok := j.byID[d]; ok && !jb.claimed {
		return jb.st
	}
	return nil
}

// run unpacks layer d from st in one of the n slots. While it waits for
// one, it looks up the layer's index (an S3 round trip, and the index's
// download): at most n layers do so ahead of their slot, as each holds
// its decoded index.
func (j *jobs) run(ctx context.Context, st *store.Store, d digest.Digest) (*staged, error) {
	select {
	case j.ahead <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	toc, tocErr := lazy.FetchVerifiableTOC(ctx, st, d)
	select {
	case j.sem <- struct{}{}:
		<-j.ahead
	case <-ctx.Done():
		<-j.ahead
		return nil, ctx.Err()
	}
	defer func() { <-j.sem }()
	return unpackLayerWith(ctx, j.sn, st, d, toc, tocErr)
}

// claim waits for layer d's job and takes its result; it is then the
// caller's to commit or remove.
func (j *jobs) claim(ctx context.Context, st *store.Store, d digest.Digest) (*staged, error) {
	jb := j.start(st, d)
	select {
	case <-jb.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if jb.err != nil {
		return nil, jb.err
	}
	if jb.claimed {
		// A concurrent Prepare of the same layer took it; unpack again
		// rather than share one snapshot between two commits.
		return nil, fmt.Errorf("layer %s: %w", d, errClaimed)
	}
	jb.claimed = true
	jb.expire.Stop()
	if j.byID[d] == jb {
		delete(j.byID, d)
	}
	return jb.result, nil
}

var errClaimed = fmt.Errorf("staged layer already claimed")

func (j *jobs) expireJob(d digest.Digest, jb *job) {
	j.mu.Lock()
	if jb.claimed {
		j.mu.Unlock()
		return
	}
	jb.claimed = true
	if j.byID[d] == jb {
		delete(j.byID, d)
	}
	j.mu.Unlock()
	if err := j.sn.Remove(j.ctx, jb.result.key); err != nil {
		log.G(j.ctx).WithError(err).WithField("key", jb.result.key).Warn("remove unclaimed staged layer")
	}
}
