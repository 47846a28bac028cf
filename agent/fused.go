package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/s3snap/s3snap/agent/config"
	"github.com/s3snap/s3snap/lazy/fused"
	fusedserver "github.com/s3snap/s3snap/lazy/fused/server"
	"github.com/s3snap/s3snap/store"
)

type runOptions struct {
	version    string
	configPath string
	logLevel   string
	external   bool // [lazy] server = "external": never start one
}

// Option configures Run.
type Option func(*runOptions)

// WithVersion is the agent's version; the lazy FUSE server it starts
// reports the same, and one of another version is replaced when idle.
func WithVersion(v string) Option { return func(o *runOptions) { o.version = v } }

// WithConfigPath is the config file the agent was loaded from: the lazy
// FUSE server it starts loads the same (same stores, same credentials).
func WithConfigPath(path, logLevel string) Option {
	return func(o *runOptions) {
		// The server runs in /: a relative path would name another file.
		if abs, err := filepath.Abs(path); err == nil {
			path = abs
		}
		o.configPath, o.logLevel = path, logLevel
	}
}

// RunFused serves the lazy FUSE server of cfg's root (`s3snap agent
// fused`) until ctx is cancelled or the agent asks it to stop.
func RunFused(ctx context.Context, cfg config.Config, version string) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	stores, err := openStores(ctx, cfg)
	if err != nil {
		return err
	}
	return fusedserver.Serve(ctx, cfg.Root, storesOf(stores), fusedserver.WithVersion(version),
		fusedserver.WithCacheLimit(int64(cfg.Lazy.CacheMaxBytes)))
}

func storesOf(stores map[string][]storeEntry) func(host string) []*store.Store {
	return func(host string) []*store.Store {
		var out []*store.Store
		for _, e := range stores[host] {
			out = append(out, e.store)
		}
		return out
	}
}

// mounter is the snapshotter's Mounter: the lazy FUSE server, started
// (detached, see fused.Client.Start) when it is needed and not running.
type mounter struct {
	*fused.Client
	o  runOptions
	mu sync.Mutex // one start at a time
}

func newMounter(cfg config.Config, o runOptions) *mounter {
	o.external = cfg.Lazy.Server == config.LazyServerExternal
	return &mounter{Client: fused.NewClient(cfg.Root), o: o}
}

// ensure connects to the server, starting it (or replacing an idle one
// of another version) if need be.
func (m *mounter) ensure(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.o.external {
		info, err := m.Info(ctx)
		if err == nil && info.Version != m.o.version {
			log.G(ctx).WithFields(log.Fields{"running": info.Version, "agent": m.o.version}).Warn("the external lazy FUSE server is of another version")
		}
		if errors.Is(err, fused.ErrNotRunning) {
			return fmt.Errorf("[lazy] server = %q and none runs (s3snap agent fused): %w", config.LazyServerExternal, err)
		}
		return err
	}
	if m.o.configPath == "" {
		return errors.New("lazy FUSE server: the agent's config file is unknown (agent.WithConfigPath)")
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("lazy FUSE server: %w", err)
	}
	args := []string{"agent", "fused", "--config", m.o.configPath}
	if m.o.logLevel != "" {
		args = append(args, "--log-level", m.o.logLevel)
	}
	// Never the agent's NOTIFY_SOCKET: the server is no unit's main process.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NOTIFY_SOCKET=") && !strings.HasPrefix(kv, "LISTEN_") {
			env = append(env, kv)
		}
	}
	_, err = m.Ensure(ctx, m.o.version, exe, args, env)
	return err
}

// Mount starts the server first if none runs.
func (m *mounter) Mount(ctx context.Context, mt fused.Mount) error {
	err := m.Client.Mount(ctx, mt)
	if !errors.Is(err, fused.ErrNotRunning) {
		return err
	}
	if err := m.ensure(ctx); err != nil {
		return err
	}
	return m.Client.Mount(ctx, mt)
}

// Unmount with no server running detaches what a dead one left at dir:
// detaching never waits on the mount's server.
func (m *mounter) Unmount(ctx context.Context, dir string) error {
	err := m.Client.Unmount(ctx, dir)
	if !errors.Is(err, fused.ErrNotRunning) {
		return err
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}

// gatherer is the agent's /metrics: its own, with the s3snap_lazy_*
// families (reads and fetches of lazy layers, which happen in the lazy
// FUSE server) taken from the server when it runs.
func (m *mounter) gatherer(ctx context.Context) prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		local, err := prometheus.DefaultGatherer.Gather()
		if err != nil {
			return local, err
		}
		gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		remote, rerr := m.Gather(gctx)
		if rerr != nil {
			return local, nil // no server, or no answer: the agent's own
		}
		for i, mf := range local {
			if r, ok := remote[mf.GetName()]; ok && strings.HasPrefix(mf.GetName(), "s3snap_lazy_") {
				local[i] = mergeLazy(mf, r)
			}
		}
		return local, nil
	})
}

// mergeLazy is the agent's figure of a lazy family: the server's, plus
// the agent's own for a plain counter (verify_before_start fetches and
// verifies layers in the agent).
func mergeLazy(local, remote *dto.MetricFamily) *dto.MetricFamily {
	if local.GetType() != dto.MetricType_COUNTER || len(local.GetMetric()) != 1 || len(remote.GetMetric()) != 1 ||
		len(local.GetMetric()[0].GetLabel()) != 0 || len(remote.GetMetric()[0].GetLabel()) != 0 {
		return remote
	}
	sum := local.GetMetric()[0].GetCounter().GetValue() + remote.GetMetric()[0].GetCounter().GetValue()
	remote.GetMetric()[0].GetCounter().Value = &sum
	return remote
}

// startIfNeeded starts the server with lazy mode on; with it off, a
// server left idle by an earlier run is stopped, and one is started only
// when an earlier run's lazy layer is mounted again.
func (m *mounter) startIfNeeded(ctx context.Context, lazyEnabled bool) {
	if m.o.external {
		if err := m.ensure(ctx); err != nil && lazyEnabled {
			log.G(ctx).WithError(err).Warn("lazy FUSE server: not running yet; lazy layers are unpacked instead meanwhile")
		}
		return
	}
	if !lazyEnabled {
		if info, err := m.Info(ctx); err == nil && info.Mounts == 0 {
			if err := m.Shutdown(ctx, true, 10*time.Second); err != nil {
				log.G(ctx).WithError(err).Debug("lazy FUSE server: stop the idle server")
			}
		}
		return
	}
	if err := m.ensure(ctx); err != nil {
		log.G(ctx).WithError(err).Error("lazy FUSE server: cannot start it; lazy layers are unpacked instead meanwhile")
	}
}
