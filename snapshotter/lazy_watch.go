package snapshotter

import (
	"context"
	"errors"
	"time"

	"github.com/containerd/log"

	"github.com/s3snap/s3snap/lazy/fused"
)

// lazyWatchEvery is how often the agent checks the server still serves
// every lazy mount.
const lazyWatchEvery = 2 * time.Second

// watch notices lazy mounts the server no longer serves (it died, or
// someone unmounted one): such a layer is hidden, as one that could not
// be remounted at start, and the retry loop mounts it again (the Mounter
// starting a new server). Running containers keep the dead mount
// (ENOTCONN); new ones get the new mount.
func (l *lazyProvider) watch(ctx context.Context, every time.Duration) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		l.mu.Lock()
		recs := make([]lazyRecord, 0, len(l.mounts))
		for _, rec := range l.mounts {
			recs = append(recs, rec)
		}
		l.mu.Unlock()
		if len(recs) == 0 {
			continue
		}
		served, ok := l.served(ctx)
		if !ok {
			continue
		}
		lost := false
		for _, rec := range recs {
			// One that seems gone is checked again under its claim: it may
			// have been removed, or mounted again, meanwhile.
			if !served[rec.Dir] && l.lost(ctx, rec.Name) {
				lost = true
			}
		}
		if lost {
			l.startRetry()
		}
	}
}

// lost checks, holding name's claim, whether its mount is still served;
// if not it is hidden to be mounted again.
func (l *lazyProvider) lost(ctx context.Context, name string) bool {
	release, err := l.claim(ctx, name)
	if err != nil {
		return false
	}
	defer release()
	l.mu.Lock()
	rec, mounted := l.mounts[name]
	l.mu.Unlock()
	if !mounted {
		return false // removed meanwhile
	}
	if served, ok := l.served(ctx); !ok || served[rec.Dir] {
		return false
	}
	l.mu.Lock()
	delete(l.mounts, name)
	l.mu.Unlock()
	log.G(ctx).WithField("snapshot", name).WithField("layer", rec.Layer).Warn("lazy: layer no longer served (did the lazy FUSE server die?); mounting it again")
	l.hide(ctx, rec, errors.New("no longer served"))
	return true
}

// served are the directories the server serves a mount at; ok is false
// when that is not known (a slow server is no dead one). No server
// serves none.
func (l *lazyProvider) served(ctx context.Context) (_ map[string]bool, ok bool) {
	states, err := l.fs.List(ctx)
	if err != nil && !errors.Is(err, fused.ErrNotRunning) {
		log.G(ctx).WithError(err).Debug("lazy: list the server's mounts")
		return nil, false
	}
	noteBad(states)
	out := map[string]bool{}
	for _, st := range states {
		if st.Mounted {
			out[st.Dir] = true
		}
	}
	return out, true
}
