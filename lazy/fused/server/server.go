// Package server is the lazy FUSE server itself (package fused has the
// design, the protocol and the agent's client): the one process that
// mounts and serves lazy layers, with package lazy/mount. Kept apart so
// that what only talks to it (the snapshotter, doctor) never links go-fuse.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/lazy/fused"
	"github.com/s3snap/s3snap/lazy/mount"
	"github.com/s3snap/s3snap/store"
)

// ErrRunning means another server holds the root's lock.
var ErrRunning = errors.New("a lazy FUSE server is already running for this root")

// StoreFunc returns the stores of a registry host, as the agent's.
type StoreFunc func(host string) []*store.Store

type options struct {
	version      string
	prefetchJobs int
	runJobs      int
	runBytes     int64
	cacheMax     int64
}

// Option configures Serve.
type Option func(*options)

// WithVersion is the version Info reports (the binary's).
func WithVersion(v string) Option { return func(o *options) { o.version = v } }

// WithPrefetch sets how many layers prefetch at once, and per layer the
// ranged reads in flight and the compressed bytes of one read (default
// 1, 2 and 16MiB).
func WithPrefetch(layers, runJobs int, runBytes int64) Option {
	return func(o *options) { o.prefetchJobs, o.runJobs, o.runBytes = layers, runJobs, runBytes }
}

// WithCacheLimit bounds the chunk cache under <root>/lazy/chunks to max
// bytes; 0 (the default) is lazy.DefaultCacheLimit of the root's file
// system.
func WithCacheLimit(max int64) Option { return func(o *options) { o.cacheMax = max } }

// server holds the lazy mounts of one agent root.
type server struct {
	root     string
	stores   StoreFunc
	opts     options
	cache    *lazy.Cache
	ctx      context.Context // lifetime: prefetches stop with it
	prefetch chan struct{}   // semaphore: layers prefetching
	stop     chan struct{}   // closed by Shutdown
	stopOnce sync.Once

	opMu   sync.Mutex // one Mount or Unmount at a time
	mu     sync.Mutex
	mounts map[string]*served // by mount point
	// Verification results by TOC digest (verify.go): a TOC that passed is
	// not checked again; one that failed stays bad when mounted again.
	verified map[digest.Digest]bool
	bad      map[digest.Digest]error
}

type served struct {
	req    fused.Mount
	layer  *lazy.Layer
	mnt    *mount.Mounted
	cancel context.CancelFunc
}

// Serve runs the server of the agent root until ctx is cancelled (SIGTERM)
// or a client asks it to shut down; either way it unmounts every mount
// (detaching those in use) before it returns. It fails with ErrRunning if
// another server serves root.
func Serve(ctx context.Context, root string, stores StoreFunc, opts ...Option) error {
	o := options{prefetchJobs: 1, runJobs: 2, runBytes: 16 << 20}
	for _, opt := range opts {
		opt(&o)
	}
	if err := os.MkdirAll(fused.Dir(root), 0o700); err != nil {
		return fmt.Errorf("fused: %w", err)
	}
	if err := os.Chmod(fused.Dir(root), 0o700); err != nil {
		return fmt.Errorf("fused: %w", err)
	}
	lock, err := os.OpenFile(fused.LockPath(root), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("fused: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("fused: lock %s: %w", fused.LockPath(root), ErrRunning)
	}
	chunks := filepath.Join(root, "lazy", "chunks")
	if o.cacheMax <= 0 {
		o.cacheMax = lazy.DefaultCacheLimit(chunks)
	}
	cache, err := lazy.NewCache(chunks, lazy.WithCacheLimit(o.cacheMax))
	if err != nil {
		return err
	}
	defer cache.Close()
	// Holding the lock, no other server uses the socket: an old one is stale.
	sock := fused.SocketPath(root)
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("fused: remove stale socket: %w", err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("fused: %w", err)
	}
	defer os.Remove(sock)
	if err := os.Chmod(sock, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("fused: %w", err)
	}
	if err := os.WriteFile(fused.PIDPath(root), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		l.Close()
		return fmt.Errorf("fused: %w", err)
	}
	defer os.Remove(fused.PIDPath(root))

	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	s := &server{
		root: root, stores: stores, opts: o, cache: cache, ctx: life,
		prefetch: make(chan struct{}, max(o.prefetchJobs, 1)),
		stop:     make(chan struct{}), mounts: map[string]*served{},
		verified: map[digest.Digest]bool{}, bad: map[digest.Digest]error{},
	}
	srv := &http.Server{Handler: s.handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(fused.PeerListener(l)) }()
	log.G(ctx).WithFields(log.Fields{
		"socket": sock, "version": o.version, "pid": os.Getpid(),
		"cache_bytes": cache.Bytes(), "cache_limit": cache.Limit(),
	}).Info("lazy FUSE server ready")

	select {
	case <-ctx.Done():
		log.G(ctx).Info("lazy FUSE server stopping (signal)")
	case <-s.stop:
		log.G(ctx).Info("lazy FUSE server stopping (asked to)")
	case err = <-errc:
	}
	// No request in flight mounts anything once the lock is taken here.
	s.opMu.Lock()
	s.unmountAll()
	s.opMu.Unlock()
	shutCtx, done := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer done()
	_ = srv.Shutdown(shutCtx)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func (s *server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/info", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		n := len(s.mounts)
		s.mu.Unlock()
		reply(w, fused.Info{Version: s.opts.version, PID: os.Getpid(), Mounts: n}, nil)
	})
	mux.HandleFunc("GET /v1/mounts", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, s.list(), nil)
	})
	mux.HandleFunc("POST /v1/mount", func(w http.ResponseWriter, r *http.Request) {
		var m fused.Mount
		if err := json.NewDecoder(io.LimitReader(r.Body, 16<<20)).Decode(&m); err != nil {
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		reply(w, struct{}{}, s.mount(m))
	})
	mux.HandleFunc("POST /v1/unmount", func(w http.ResponseWriter, r *http.Request) {
		reply(w, struct{}{}, s.unmount(r.URL.Query().Get("dir")))
	})
	mux.HandleFunc("POST /v1/shutdown", func(w http.ResponseWriter, r *http.Request) {
		s.opMu.Lock()
		s.mu.Lock()
		busy := len(s.mounts) > 0 && r.URL.Query().Get("if_idle") != ""
		s.mu.Unlock()
		if busy {
			s.opMu.Unlock()
			http.Error(w, "mounts are in use", http.StatusConflict)
			return
		}
		s.stopOnce.Do(func() { close(s.stop) })
		s.opMu.Unlock()
		reply(w, struct{}{}, nil)
	})
	mux.Handle("GET /metrics", promhttp.Handler())
	return mux
}

func reply(w http.ResponseWriter, v any, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// checkDir refuses a mount point that is not a snapshot directory of
// this root: the server mounts and unmounts nothing else.
func (s *server) checkDir(dir string) error {
	snaps := filepath.Join(s.root, "snapshots") + string(filepath.Separator)
	if filepath.Clean(dir) != dir || !strings.HasPrefix(dir, snaps) || filepath.Base(dir) != "fs" {
		return fmt.Errorf("mount point %q is not a snapshot directory under %s", dir, snaps)
	}
	return nil
}

// check refuses a request naming a mount point checkDir refuses, or a
// malformed digest.
func (s *server) check(m fused.Mount) error {
	if err := s.checkDir(m.Dir); err != nil {
		return err
	}
	if err := m.Layer.Validate(); err != nil {
		return fmt.Errorf("layer %q: %w", m.Layer, err)
	}
	if err := m.TOC.Validate(); err != nil {
		return fmt.Errorf("toc %q: %w", m.TOC, err)
	}
	return nil
}

// mount mounts m; a mount of the same layer through the same TOC at the
// same place is kept (the agent re-adopting it), anything else there is
// replaced.
func (s *server) mount(m fused.Mount) error {
	if err := s.check(m); err != nil {
		return err
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	select {
	case <-s.stop:
		return errors.New("the lazy FUSE server is shutting down")
	default:
	}
	s.mu.Lock()
	old := s.mounts[m.Dir]
	s.mu.Unlock()
	if old != nil {
		if old.req.Layer == m.Layer && old.req.TOC == m.TOC && isMounted(m.Dir) {
			return nil
		}
		s.unmountServed(old, false)
	}
	toc, err := s.readTOC(m)
	if err != nil {
		return err
	}
	st := s.store(m)
	ctx, cancel := context.WithCancel(s.ctx)
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("layer", m.Layer))
	open := func() (io.ReaderAt, error) {
		return nil, fmt.Errorf("layer %s: registry %s is not mapped to a store", m.Layer, m.Host)
	}
	if st != nil {
		open = lazy.OpenData(ctx, st, toc)
	}
	sv := &served{req: m, layer: lazy.NewLayer(toc, s.cache, open), cancel: cancel}
	s.mu.Lock()
	if err := s.bad[m.TOC]; err != nil {
		sv.layer.MarkBad(err)
	}
	s.mu.Unlock()
	// A mount a dead server left answers nothing (ENOTCONN): drop it.
	// Detaching never waits on the mount's server.
	_ = unix.Unmount(m.Dir, unix.MNT_DETACH)
	if err := os.MkdirAll(m.Dir, 0o755); err != nil {
		cancel()
		sv.layer.Release(false)
		return fmt.Errorf("mount point of lazy layer %s: %w", m.Layer, err)
	}
	if sv.mnt, err = safeMount(ctx, m, sv.layer); err != nil {
		cancel()
		sv.layer.Release(false)
		_ = unix.Rmdir(m.Dir) // never leave an empty directory to be shown
		return err
	}
	s.mu.Lock()
	s.mounts[m.Dir] = sv
	s.mu.Unlock()
	// A layer cached whole is still verified (runPrefetch).
	if st != nil || sv.layer.CachedBytes() >= toc.StreamSize() {
		go s.runPrefetch(ctx, sv)
	}
	log.G(ctx).WithField("dir", m.Dir).WithField("snapshot", m.Name).Info("lazy layer mounted")
	return nil
}

// safeMount mounts; the index was validated, but the server must outlive
// anything a mount of untrusted input could still trip over.
func safeMount(ctx context.Context, m fused.Mount, l *lazy.Layer) (_ *mount.Mounted, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("mount lazy layer %s: panic: %v: %w", m.Layer, p, lazy.ErrInvalidIndex)
		}
	}()
	return mount.Mount(ctx, m.Dir, l, lazy.WithImplicitDirs(m.Dirs))
}

// readTOC reads the local copy of m's TOC the agent checked and kept,
// checking again that it is that one.
func (s *server) readTOC(m fused.Mount) (*lazy.TOC, error) {
	f, err := os.Open(filepath.Join(s.root, "lazy", "toc", m.TOC.Encoded()))
	if err != nil {
		return nil, fmt.Errorf("toc of %s: %w", m.Layer, err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, lazy.MaxTOCSize+1))
	if err != nil {
		return nil, fmt.Errorf("toc of %s: %w", m.Layer, err)
	}
	if digest.FromBytes(raw) != m.TOC {
		return nil, fmt.Errorf("local toc of %s is not %s: %w", m.Layer, m.TOC, lazy.ErrInvalidIndex)
	}
	toc, err := lazy.DecodeTOC(raw)
	if err != nil {
		return nil, err
	}
	if toc.Layer != m.Layer {
		return nil, fmt.Errorf("toc %s describes %s, not %s: %w", m.TOC, toc.Layer, m.Layer, lazy.ErrInvalidIndex)
	}
	if m.DiffID != "" && toc.DiffID != m.DiffID {
		return nil, fmt.Errorf("toc %s names diff ID %s, not %s: %w", m.TOC, toc.DiffID, m.DiffID, lazy.ErrInvalidIndex)
	}
	return toc, nil
}

// store is the store m's index came from, else the host's first; nil when
// the host is no longer mapped (then only cached chunks read).
func (s *server) store(m fused.Mount) *store.Store {
	stores := s.stores(m.Host)
	for _, st := range stores {
		if st.URL() == m.Store {
			return st
		}
	}
	if len(stores) > 0 {
		return stores[0]
	}
	return nil
}

func (s *server) runPrefetch(ctx context.Context, sv *served) {
	select {
	case s.prefetch <- struct{}{}:
		defer func() { <-s.prefetch }()
	case <-ctx.Done():
		return
	}
	start := time.Now()
	err := sv.layer.Prefetch(ctx, s.opts.runJobs, s.opts.runBytes)
	switch {
	case err == nil:
		log.G(ctx).WithField("took", time.Since(start)).WithField("bytes", sv.layer.CachedBytes()).Debug("lazy layer prefetched")
		s.verify(ctx, sv)
	case ctx.Err() != nil:
	case errors.Is(err, lazy.ErrCacheFull):
		log.G(ctx).WithField("bytes", sv.layer.CachedBytes()).Info("lazy prefetch stopped: the chunk cache is full; files are fetched on demand")
		// Verified all the same: from the data object streamed once,
		// outside the cache.
		s.verifyStreamed(ctx, sv)
	default:
		log.G(ctx).WithError(err).Warn("lazy prefetch failed; files are still fetched on demand")
	}
}

// unmount unmounts the mount at dir, or detaches a lazy mount there no
// server holds (a dead server's); nothing mounted is no error.
func (s *server) unmount(dir string) error {
	if err := s.checkDir(dir); err != nil {
		return err
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.mu.Lock()
	sv := s.mounts[dir]
	s.mu.Unlock()
	if sv != nil {
		return s.unmountServed(sv, true)
	}
	if isMounted(dir) {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
	}
	return nil
}

// unmountServed stops sv's prefetch and unmounts it (detached when busy).
// Its cached chunks no other mount uses are removed with drop (asked to
// unmount: its snapshot is going), else left first to evict. The caller
// holds opMu.
func (s *server) unmountServed(sv *served, drop bool) error {
	sv.cancel()
	if err := sv.mnt.Unmount(); err != nil {
		return err
	}
	sv.layer.Release(drop)
	s.mu.Lock()
	delete(s.mounts, sv.req.Dir)
	s.mu.Unlock()
	log.G(s.ctx).WithField("dir", sv.req.Dir).WithField("layer", sv.req.Layer).Info("lazy layer unmounted")
	return nil
}

func (s *server) unmountAll() {
	s.mu.Lock()
	all := make([]*served, 0, len(s.mounts))
	for _, sv := range s.mounts {
		all = append(all, sv)
	}
	s.mu.Unlock()
	for _, sv := range all {
		if err := s.unmountServed(sv, false); err != nil {
			log.G(s.ctx).WithError(err).Warn("lazy: unmount")
		}
	}
}

func (s *server) list() []fused.State {
	s.mu.Lock()
	all := make([]*served, 0, len(s.mounts))
	for _, sv := range s.mounts {
		all = append(all, sv)
	}
	s.mu.Unlock()
	mounted := lazyMountPoints()
	out := make([]fused.State, 0, len(all))
	for _, sv := range all {
		st := fused.State{
			Mount: sv.req, Mounted: mounted[sv.req.Dir],
			CachedBytes: sv.layer.CachedBytes(), Inodes: int64(len(sv.layer.TOC().Entries)),
		}
		if err := sv.layer.Bad(); err != nil {
			st.Bad = err.Error()
		}
		out = append(out, st)
	}
	return out
}

// lazyMountPoints are the mount points of lazy layers in our mount
// namespace, from /proc/self/mountinfo: reading it never touches a mount.
func lazyMountPoints() map[string]bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		_, rest, ok := strings.Cut(line, " - ")
		f := strings.Fields(line)
		if !ok || len(f) < 5 || !strings.HasPrefix(rest, "fuse.s3snap ") {
			continue
		}
		out[unescapeMountinfo(f[4])] = true
	}
	return out
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space,
// and tab, newline and backslash likewise).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isMounted(dir string) bool { return lazyMountPoints()[dir] }
