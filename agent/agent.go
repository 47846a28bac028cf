// Package agent is the s3snap node agent: it reads the agent's TOML config
// (package agent/config, which tools that must not link the agent use) and
// runs, in one process, the snapshotter (containerd's snapshot gRPC API
// on a unix socket, for a proxy_plugins entry), the loopback registry
// mirror, and /metrics and /healthz on a loopback address, telling systemd
// when it is ready and when it stops. Lazy mounts alone are served by
// another process, the lazy FUSE server (package lazy/fused, RunFused),
// which the agent starts and which outlives it.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/log"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/s3snap/s3snap/agent/config"
	"github.com/s3snap/s3snap/fetcher"
	"github.com/s3snap/s3snap/mirror"
	"github.com/s3snap/s3snap/snapshotter"
	"github.com/s3snap/s3snap/store"
)

// shutdownTimeout bounds the graceful part of a stop; then connections are
// cut.
const shutdownTimeout = 10 * time.Second

// Run serves the agent until ctx is cancelled (the caller cancels it on
// SIGTERM/SIGINT), then stops gracefully. It returns an error if anything
// fails to start or a server fails while running. cfg must be valid
// (Parse and Load validate).
func Run(ctx context.Context, cfg config.Config, opts ...Option) error {
	var o runOptions
	for _, opt := range opts {
		opt(&o)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	stores, err := openStores(ctx, cfg)
	if err != nil {
		return err
	}
	storeFunc := storesOf(stores)

	if err := os.MkdirAll(cfg.Root, 0o700); err != nil {
		return fmt.Errorf("create root: %w", err)
	}
	// Lazy mounts are the lazy FUSE server's (package lazy/fused): the
	// agent never mounts one, so they outlive it.
	fs := newMounter(cfg, o)
	fs.startIfNeeded(ctx, cfg.Lazy.Enabled)
	sn, err := snapshotter.New(ctx, cfg.Root, storeFunc, snapshotter.WithUnpackJobs(cfg.Fetch.UnpackJobs),
		snapshotter.WithLazy(cfg.Lazy.Enabled), snapshotter.WithLazyMounter(fs),
		snapshotter.WithLazyVerifyBeforeStart(cfg.Lazy.VerifyBeforeStart))
	if err != nil {
		return fmt.Errorf("open snapshotter: %w", err)
	}
	defer func() {
		if err := sn.Close(); err != nil {
			log.G(ctx).WithError(err).Warn("close snapshotter")
		}
	}()

	sock, err := listenSocket(ctx, cfg.Socket)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.Socket)
	if cfg.Debug.Address != "" {
		stopDebug, err := serveDebug(ctx, cfg.Debug.Address)
		if err != nil {
			sock.Close()
			return fmt.Errorf("[debug] address: %w", err)
		}
		defer stopDebug()
	}
	grpcServer := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(grpcServer, snapshotservice.FromSnapshotter(sn))

	mirrorL, err := mirror.Listen(cfg.Mirror.Address)
	if err != nil {
		sock.Close()
		return fmt.Errorf("mirror: %w", err)
	}
	metricsL, err := mirror.Listen(cfg.Metrics.Address)
	if err != nil {
		sock.Close()
		mirrorL.Close()
		return fmt.Errorf("metrics: %w", err)
	}
	// Verified blob copies live beside the snapshots: same disk, root-only.
	mirrorHandler, err := mirror.New(storeFunc, mirror.WithSpool(filepath.Join(cfg.Root, "mirror-spool"), 10*time.Minute),
		mirror.WithSpoolLimit(int64(cfg.Mirror.SpoolMaxBytes)), mirror.WithMaxFetches(cfg.Mirror.MaxConcurrentFetches))
	if err != nil {
		sock.Close()
		mirrorL.Close()
		metricsL.Close()
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(fs.gatherer(ctx), promhttp.HandlerOpts{}))
	mux.Handle("/healthz", &health{stores: stores})
	httpServers := []*http.Server{
		{Handler: mirrorHandler, ReadHeaderTimeout: 10 * time.Second},
		{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
	}

	errc := make(chan error, 3)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := grpcServer.Serve(sock); err != nil {
			errc <- fmt.Errorf("snapshotter grpc on %s: %w", cfg.Socket, err)
		}
	})
	for i, l := range []net.Listener{mirrorL, metricsL} {
		srv := httpServers[i]
		wg.Go(func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve %s: %w", l.Addr(), err)
			}
		})
	}

	for _, addr := range []string{cfg.Mirror.Address, cfg.Metrics.Address} {
		if err := mirror.CheckPrivileged(addr, mirror.UnprivilegedPortStart()); err != nil {
			log.G(ctx).WithError(err).Warn("listening on a port other users may bind: use one below 1024 (default " + config.DefaultMirrorAddress + ")")
		}
	}
	log.G(ctx).WithFields(log.Fields{
		"socket":     cfg.Socket,
		"root":       cfg.Root,
		"mirror":     mirrorL.Addr().String(),
		"metrics":    metricsL.Addr().String(),
		"registries": len(stores),
	}).Info("s3snap agent ready")
	notify(ctx, daemon.SdNotifyReady)

	var runErr error
	select {
	case <-ctx.Done():
		log.G(ctx).Info("s3snap agent stopping")
	case runErr = <-errc:
		log.G(ctx).WithError(runErr).Error("s3snap agent failed, stopping")
	}
	notify(ctx, daemon.SdNotifyStopping)

	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	for _, srv := range httpServers {
		if err := srv.Shutdown(stopCtx); err != nil {
			srv.Close()
		}
	}
	stopped := make(chan struct{})
	go func() { grpcServer.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-stopCtx.Done():
		grpcServer.Stop()
	}
	wg.Wait()
	return runErr
}

// storeEntry is one store of a mapped registry host.
type storeEntry struct {
	host   string
	region string // "" for a plain store
	store  *store.Store
	client *s3.Client
}

// openStores builds, per mapped registry host, its stores in the order to
// look in them: the node's own region's copy first, then the others in
// config order. Each region's stores get a client (and fetcher) of that
// region, as a bucket must be addressed in its own region; behind a custom
// endpoint all share one. It makes no S3 request (see /healthz for that).
func openStores(ctx context.Context, cfg config.Config) (map[string][]storeEntry, error) {
	region := cfg.S3.Region
	if cfg.Regional() {
		if region = ownRegion(ctx, cfg); region == "" {
			log.G(ctx).Warn("the node's region is unknown (set [s3] region or AWS_REGION): regional stores are tried in config order")
		} else {
			log.G(ctx).WithField("region", region).Info("node region")
		}
	}
	type clientFetcher struct {
		client *s3.Client
		f      *fetcher.Fetcher
	}
	clients := map[string]clientFetcher{}
	clientFor := func(signing string) (clientFetcher, error) {
		if c, ok := clients[signing]; ok {
			return c, nil
		}
		client, err := fetcher.NewClient(ctx, fetcher.ClientConfig{
			Region:    signing,
			Endpoint:  cfg.S3.Endpoint,
			Profile:   cfg.S3.Profile,
			PathStyle: cfg.PathStyle(),
		})
		if err != nil {
			return clientFetcher{}, fmt.Errorf("s3 client: %w", err)
		}
		c := clientFetcher{client, fetcher.New(client, fetcher.WithPartSize(int64(cfg.Fetch.PartSize)), fetcher.WithConcurrency(cfg.Fetch.Concurrency))}
		clients[signing] = c
		return c, nil
	}
	oneEndpoint := customEndpoint(cfg)
	stores := map[string][]storeEntry{}
	for _, r := range cfg.Registry {
		locs, err := r.StoresFor(region)
		if err != nil {
			return nil, fmt.Errorf("registry %s: %w", r.Host, err)
		}
		for i, l := range locs {
			signing := region
			if l.Region != "" && !oneEndpoint {
				signing = l.Region
			}
			c, err := clientFor(signing)
			if err != nil {
				return nil, err
			}
			st := store.New(c.client, l.URL.Bucket, store.WithPrefix(l.URL.Path), store.WithFetcher(c.f))
			stores[r.Host] = append(stores[r.Host], storeEntry{host: r.Host, region: l.Region, store: st, client: c.client})
			log.G(ctx).WithFields(log.Fields{"registry": r.Host, "store": st.URL(), "region": l.Region, "order": i + 1}).Info("mirroring registry from s3")
		}
	}
	return stores, nil
}

// listenSocket listens on the unix socket path: its directory is made
// 0700 (created, or tightened when it holds nothing but the socket; a
// shared directory such as /run keeps its mode), a stale socket from an
// earlier run is removed, and the socket itself is 0600. A socket another
// process still answers on is left alone: two agents must not share state.
func listenSocket(ctx context.Context, path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := tightenDir(ctx, dir, filepath.Base(path)); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("socket %s: exists and is not a socket; not removing it", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s: another process is serving on it (is the agent already running?)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return l, nil
}

// tightenDir makes dir 0700 if it is the socket's own directory (empty but
// for the socket); a shared one is left as it is, with a warning.
func tightenDir(ctx context.Context, dir, socket string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	if fi.Mode().Perm() == 0o700 {
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	for _, e := range entries {
		if e.Name() != socket {
			log.G(ctx).WithField("dir", dir).WithField("mode", fi.Mode().Perm()).
				Warn("socket directory is shared with other files, leaving its mode; the socket itself is 0600")
			return nil
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	return nil
}

// notify sends state to systemd when run as a Type=notify unit; elsewhere
// it does nothing.
func notify(ctx context.Context, state string) {
	if ok, err := daemon.SdNotify(false, state); err != nil {
		log.G(ctx).WithError(err).WithField("state", state).Warn("sd_notify")
	} else if ok {
		log.G(ctx).WithField("state", state).Debug("sd_notify sent")
	}
}
