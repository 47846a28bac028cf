package agent

import (
	"context"
	"errors"
	"net/http"
	"net/http/pprof"
	"os"
	"time"

	"github.com/containerd/log"
)

// serveDebug serves Go's runtime profiles on the unix socket path (0600,
// in a 0700 directory: profiles show what the agent is doing, so only
// root reads them) until ctx ends. It returns once the socket listens; a
// socket that cannot be made is an error, as a mistyped path should be.
func serveDebug(ctx context.Context, path string) (stop func(), err error) {
	l, err := listenSocket(ctx, path)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.G(ctx).WithError(err).Warn("debug socket")
		}
	}()
	log.G(ctx).WithField("socket", path).Info("serving runtime profiles (/debug/pprof/)")
	return func() {
		srv.Close() // a profile being taken is cut short
		<-done
		os.Remove(path)
	}, nil
}
