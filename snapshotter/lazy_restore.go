package snapshotter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/s3snap/s3snap/internal/atomicfile"
	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/lazy/fused"
	"github.com/s3snap/s3snap/store"
)

// A lazy snapshot's directory is only its mount point: unmounted, it is
// empty, and an overlay stacked on it would show the layer's files gone
// and the files it deletes back. So a lazy layer that is not mounted is
// never presented. Its mount point is removed, so that even a mount
// containerd made from older mounts fails (no such directory) rather than
// show it empty; Prepare, View and Mounts of any chain that holds it fail
// with an error naming the layer; and the agent retries the mount in the
// background until it works or the snapshot is removed.

// ErrLayerUnavailable means a chain holds a lazy layer that is not
// mounted (its index or the bucket cannot be reached): nothing built on
// it is handed out until the agent has mounted it again.
var ErrLayerUnavailable = errors.New("lazy layer not mounted")

// unmounted is a committed lazy snapshot waiting to be mounted.
type unmounted struct {
	rec lazyRecord
	err error // why the last attempt failed
}

func (l *lazyProvider) setUnavailable(rec lazyRecord, err error) {
	l.mu.Lock()
	l.unavailable[rec.Name] = unmounted{rec: rec, err: err}
	l.mu.Unlock()
}

func (l *lazyProvider) setAvailable(name string) {
	l.mu.Lock()
	delete(l.unavailable, name)
	l.mu.Unlock()
}

// checkMounted fails if the chain ending at name (a snapshot's key or
// name; "" is no chain) holds a lazy layer that is not mounted.
func (l *lazyProvider) checkMounted(ctx context.Context, name string) error {
	if l == nil || name == "" {
		return nil
	}
	l.mu.Lock()
	n := len(l.unavailable)
	l.mu.Unlock()
	if n == 0 {
		return nil
	}
	for depth := 0; name != "" && depth < 1000; depth++ {
		l.mu.Lock()
		u, down := l.unavailable[name]
		l.mu.Unlock()
		if down {
			return fmt.Errorf("snapshot %s (layer %s) cannot be mounted yet (%v), retrying: %w", name, u.rec.Layer, u.err, ErrLayerUnavailable)
		}
		info, err := l.sn.Stat(ctx, name)
		if err != nil {
			return nil // the overlay snapshotter reports it
		}
		name = info.Parent
	}
	return nil
}

// restoreLazy re-adopts or remounts every lazy snapshot a previous run
// committed: one the server still serves as recorded is adopted as it is
// (a running container's reads never notice the agent restarted), any
// other is mounted again. One that cannot be mounted now is kept from
// being shown and retried in the background; a mount the server holds
// that no record names (a pull killed half way, a snapshot removed
// meanwhile) is unmounted. Nothing here can stop the agent from starting.
func (l *lazyProvider) restoreLazy(ctx context.Context) {
	served := map[string]fused.State{}
	states, listErr := l.fs.List(ctx)
	noteBad(states)
	if listErr != nil && !errors.Is(listErr, fused.ErrNotRunning) {
		// A server that does not answer in time would hold up the start
		// for every mount: the layers wait, unavailable, for the retry
		// loop (which keeps a mount the server still serves).
		log.G(ctx).WithError(listErr).Warn("lazy: the lazy FUSE server does not answer; its layers wait for it")
	} else {
		listErr = nil
	}
	for _, st := range states {
		served[st.Dir] = st
	}
	defer func() {
		if listErr != nil {
			return
		}
		// Only now: records dropped above must not keep their mounts.
		named := map[string]bool{}
		l.mu.Lock()
		for _, rec := range l.mounts {
			named[rec.Dir] = true
		}
		for _, u := range l.unavailable {
			named[u.rec.Dir] = true
		}
		l.mu.Unlock()
		for dir := range served {
			if !named[dir] {
				if err := l.fs.Unmount(ctx, dir); err != nil {
					log.G(ctx).WithError(err).WithField("dir", dir).Warn("lazy: unmount a mount no snapshot names")
				}
			}
		}
	}()
	entries, err := os.ReadDir(filepath.Join(l.dir, "mounts"))
	if err != nil {
		log.G(ctx).WithError(err).Warn("lazy: read mount records")
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			os.Remove(filepath.Join(l.dir, "mounts", e.Name())) // an unfinished write
			continue
		}
		rec, err := l.readRecord(e.Name())
		if err != nil {
			log.G(ctx).WithError(err).WithField("record", e.Name()).Warn("lazy: dropping unreadable mount record")
			os.Remove(filepath.Join(l.dir, "mounts", e.Name()))
			continue
		}
		info, err := l.sn.Stat(ctx, rec.Name)
		if err != nil || info.Kind != snapshots.KindCommitted {
			l.removeRecord(rec.Name) // never committed, or removed meanwhile
			continue
		}
		if st, ok := served[rec.Dir]; ok && st.Mounted && st.Layer == rec.Layer && st.TOC == rec.TOC && rec.TOC != "" {
			l.adopt(rec)
			continue
		}
		if listErr != nil {
			l.setUnavailable(rec, listErr)
			continue
		}
		if err := l.remountLazy(ctx, rec); err != nil {
			lazyRestoreFailures.Inc()
			log.G(ctx).WithError(err).WithField("snapshot", rec.Name).WithField("layer", rec.Layer).Error("lazy: cannot remount layer; no container is given it until it is mounted, retrying")
			l.hide(ctx, rec, err)
		}
	}
	l.startRetry()
}

// startRetry starts the retry loop unless it runs or nothing waits.
func (l *lazyProvider) startRetry() {
	l.mu.Lock()
	retry := len(l.unavailable) > 0 && !l.retrying && !l.closed
	l.retrying = l.retrying || retry
	l.mu.Unlock()
	if retry {
		go l.retryMounts(l.ctx)
	}
}

// stillUnavailable reports, once the caller holds name's claim, whether
// it still waits to be mounted: another Prepare or the retry loop may
// have mounted it meanwhile.
func (l *lazyProvider) stillUnavailable(name string) (lazyRecord, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	u, down := l.unavailable[name]
	_, mounted := l.mounts[name]
	return u.rec, down && !mounted && !l.closed
}

// hide marks rec unavailable and takes its mount point away.
func (l *lazyProvider) hide(ctx context.Context, rec lazyRecord, err error) {
	l.setUnavailable(rec, err)
	_ = unix.Unmount(rec.Dir, unix.MNT_DETACH)
	if err := unix.Rmdir(rec.Dir); err != nil && !errors.Is(err, unix.ENOENT) {
		log.G(ctx).WithError(err).WithField("dir", rec.Dir).Warn("lazy: cannot remove the mount point of an unmounted layer")
	}
}

// retryMounts tries the unavailable lazy layers again, backing off from
// one second to a minute, until none is left or the agent stops.
func (l *lazyProvider) retryMounts(ctx context.Context) {
	wait := time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		l.mu.Lock()
		var todo []lazyRecord
		for _, u := range l.unavailable {
			todo = append(todo, u.rec)
		}
		if len(todo) == 0 {
			l.retrying = false
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
		for _, rec := range todo {
			release, err := l.claim(ctx, rec.Name)
			if err != nil {
				return
			}
			rec, down := l.stillUnavailable(rec.Name)
			if !down {
				release()
				continue
			}
			if _, err := l.sn.Stat(ctx, rec.Name); errdefs.IsNotFound(err) {
				l.setAvailable(rec.Name)
				l.removeRecord(rec.Name)
			} else if err := l.remountLazy(ctx, rec); err != nil {
				l.hide(ctx, rec, err)
				log.G(ctx).WithError(err).WithField("snapshot", rec.Name).WithField("layer", rec.Layer).WithField("retry_in", min(2*wait, time.Minute)).Warn("lazy: remount failed")
			} else {
				log.G(ctx).WithField("snapshot", rec.Name).WithField("layer", rec.Layer).Info("lazy: layer mounted again")
			}
			release()
		}
		wait = min(2*wait, time.Minute)
	}
}

// remountLazy mounts rec's layer from its local TOC, or from the bucket's
// when there is none. Either copy is validated again: the local one could
// be damaged, and the bucket's is untrusted.
func (l *lazyProvider) remountLazy(ctx context.Context, rec lazyRecord) (retErr error) {
	var st *store.Store
	stores := l.stores(rec.Host)
	for _, c := range stores {
		if c.URL() == rec.Store {
			st = c
		}
	}
	if st == nil && len(stores) > 0 {
		st = stores[0]
	}
	// The TOC checked when the layer was provided, by its digest: the local
	// copy, or the bucket's if it is still that very one. (Records of
	// older agents name none: their local copy is by layer digest.)
	path := l.tocPath(rec.TOC)
	if rec.TOC == "" {
		path = filepath.Join(l.dir, "toc", rec.Layer.Encoded())
	}
	var toc *lazy.TOC
	raw, err := os.ReadFile(path)
	if err == nil && rec.TOC != "" && digest.FromBytes(raw) != rec.TOC {
		err = fmt.Errorf("local toc of %s is damaged: %w", rec.Layer, lazy.ErrInvalidIndex)
	}
	if err == nil {
		toc, err = lazy.DecodeTOC(raw)
	}
	if err != nil && st != nil {
		log.G(ctx).WithError(err).WithField("layer", rec.Layer).Debug("lazy: no local toc, fetching it")
		if toc, raw, err = lazy.FetchTOC(ctx, st, rec.Layer); err == nil {
			if rec.TOC != "" && digest.FromBytes(raw) != rec.TOC {
				err = fmt.Errorf("the bucket's toc of %s is not the one checked when it was provided: %w", rec.Layer, lazy.ErrInvalidIndex)
			} else {
				err = atomicfile.Write(path, raw, 0o600)
			}
		}
	}
	if err != nil {
		return err
	}
	if toc.Layer != rec.Layer {
		return fmt.Errorf("local toc of %s describes %s: %w", rec.Layer, toc.Layer, lazy.ErrInvalidIndex)
	}
	if rec.TOC == "" {
		// An older agent's record: the server reads the copy by its digest.
		rec.TOC = digest.FromBytes(raw)
		if err := atomicfile.Write(l.tocPath(rec.TOC), raw, 0o600); err != nil {
			return fmt.Errorf("keep toc of %s: %w", rec.Layer, err)
		}
		if err := l.writeRecord(rec); err != nil {
			return err
		}
	}
	return l.mount(ctx, rec)
}

// tocPath is where a local copy of an encoded TOC is kept, by its own
// digest: two chains holding one layer through different TOCs never share
// one.
func (l *lazyProvider) tocPath(toc digest.Digest) string {
	return filepath.Join(l.dir, "toc", toc.Encoded())
}

func (l *lazyProvider) recordPath(name string) string {
	return filepath.Join(l.dir, "mounts", digest.FromString(name).Encoded()+".json")
}

func (l *lazyProvider) writeRecord(rec lazyRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(l.recordPath(rec.Name), b, 0o600); err != nil {
		return fmt.Errorf("lazy mount record: %w", err)
	}
	return nil
}

// readRecord reads a mount record; its mount point must be a snapshot
// directory of this snapshotter, nothing else.
func (l *lazyProvider) readRecord(file string) (lazyRecord, error) {
	var rec lazyRecord
	b, err := os.ReadFile(filepath.Join(l.dir, "mounts", file))
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, err
	}
	snaps := filepath.Join(filepath.Dir(l.dir), "snapshots") + string(filepath.Separator)
	if rec.Name == "" || rec.Layer.Validate() != nil || filepath.Clean(rec.Dir) != rec.Dir ||
		!strings.HasPrefix(rec.Dir, snaps) || filepath.Base(rec.Dir) != "fs" {
		return rec, errors.New("incomplete record")
	}
	return rec, nil
}

// removeRecord removes snapshot name's record, and the local TOC copy it
// named if no other record does.
func (l *lazyProvider) removeRecord(name string) {
	toc := l.recordTOC(name)
	if err := os.Remove(l.recordPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.G(l.ctx).WithError(err).Warn("lazy: remove mount record")
	}
	l.releaseTOC(toc)
}

// retake gives a Prepare of chainID a second chance when that snapshot
// is a lazy layer that could not be mounted: it is mounted now if it can
// be, else removed when nothing is built on it, so the layer is provided
// (or pulled) afresh instead of reported as present.
func (l *lazyProvider) retake(ctx context.Context, chainID string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	_, down := l.unavailable[chainID]
	l.mu.Unlock()
	if !down {
		return
	}
	release, err := l.claim(ctx, chainID)
	if err != nil {
		return
	}
	defer release()
	rec, down := l.stillUnavailable(chainID)
	if !down {
		return
	}
	if err := l.remountLazy(ctx, rec); err == nil {
		return
	}
	if err := l.sn.Remove(ctx, chainID); err != nil {
		return // it has children: it stays unavailable and retried
	}
	l.setAvailable(chainID)
	l.removeRecord(chainID)
	log.G(ctx).WithField("snapshot", chainID).WithField("layer", rec.Layer).Info("lazy: removed a layer that could not be mounted; providing it again")
}
