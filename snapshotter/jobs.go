package snapshotter

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/s3snap/s3snap/store"
)

// labelStagedLayer marks a staging snapshot with the layer it holds.
const labelStagedLayer = "s3snap.io/staged-layer"

// job is one layer being fetched and unpacked in the background. done is
// closed when result/err are set.
type job struct {
	done    chan struct{}
	result  *staged
	err     error
	claimed bool
	expire  *time.Timer
}

// jobs runs layer unpacks, at most n at once, each layer once at a time.
// An unpacked layer nobody claims within ttl is removed.
type jobs struct {
	ctx  context.Context // the snapshotter's lifetime
	sn   snapshots.Snapshotter
	sem  chan struct{}
	ttl  time.Duration
	mu   sync.Mutex
	byID map[digest.Digest]*job
}

func newJobs(ctx context.Context, sn snapshots.Snapshotter, n int, ttl time.Duration) *jobs {
	return &jobs{ctx: ctx, sn: sn, sem: make(chan struct{}, max(n, 1)), ttl: ttl, byID: map[digest.Digest]*job{}}
}

// start begins unpacking layer d from st unless it is already under way.
func (j *jobs) start(st *store.Store, d digest.Digest) *job {
	j.mu.Lock()
	defer j.mu.Unlock()
	if jb, ok := j.byID[d]; ok {
		return jb
	}
	jb := &job{done: make(chan struct{})}
	j.byID[d] = jb
	go func() {
		ctx := log.WithLogger(j.ctx, log.G(j.ctx).WithField("layer", d))
		select {
		case j.sem <- struct{}{}:
			jb.result, jb.err = unpackLayer(ctx, j.sn, st, d)
			<-j.sem
		case <-ctx.Done():
			jb.err = ctx.Err()
		}
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

// prefetch starts unpacking every layer of the image that is not yet a
// snapshot, each from the first of stores that has it. It reads the
// manifest and config from the first store that can give them to learn the
// layers' chain IDs; without them it prefetches the listed layers as is.
func (s *Snapshotter) prefetch(ctx context.Context, stores []*store.Store, r request) {
	todo := r.layers
	if r.manifest != "" {
		for _, st := range stores {
			layers, err := s.missingLayers(ctx, st, r)
			if err == nil {
				todo = layers
				break
			}
			log.G(ctx).WithError(err).WithField("store", st.URL()).Debug("prefetch: cannot read image from store")
		}
	}
	for _, d := range todo {
		if d == r.layer {
			continue // its own Prepare starts it
		}
		if st, err := firstWith(ctx, stores, d); err == nil {
			s.jobs.start(st, d)
		}
	}
}

// missingLayers returns the image's layers whose snapshots don't exist yet.
func (s *Snapshotter) missingLayers(ctx context.Context, st *store.Store, r request) ([]digest.Digest, error) {
	m, err := st.GetManifest(ctx, r.repo, r.manifest)
	if err != nil {
		return nil, err
	}
	if m.Image == nil {
		return nil, fmt.Errorf("manifest %s is an index", r.manifest)
	}
	cfg, err := st.ImageConfig(ctx, m.Image.Config.Digest)
	if err != nil {
		return nil, err
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Image.Layers) {
		return nil, fmt.Errorf("config %s has %d diff ids for %d layers", m.Image.Config.Digest, len(cfg.RootFS.DiffIDs), len(m.Image.Layers))
	}
	chain := identity.ChainIDs(append([]digest.Digest(nil), cfg.RootFS.DiffIDs...))
	var out []digest.Digest
	for i, l := range m.Image.Layers {
		if _, err := s.Snapshotter.Stat(ctx, chain[i].String()); err != nil {
			out = append(out, l.Digest)
		}
	}
	return out, nil
}

func uniquePart() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return strconv.FormatInt(time.Now().UnixNano()%1e9, 36) + "-" + base64.RawURLEncoding.EncodeToString(b[:])
}
