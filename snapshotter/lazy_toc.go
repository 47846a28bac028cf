package snapshotter

import (
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
)

// tocKeeper guards the local TOC copies under <root>/lazy/toc: a copy
// goes when no mount record names it any more (removing a snapshot
// releases what only it used), unless a Prepare is between writing it and
// writing the record that names it.
type tocKeeper struct {
	mu   sync.Mutex
	busy map[digest.Digest]int
}

// holdTOC keeps TOC copy d while a Prepare writes it and its record; done
// then removes it if no record names it (the Prepare failed).
func (l *lazyProvider) holdTOC(d digest.Digest) (done func()) {
	l.tocs.mu.Lock()
	if l.tocs.busy == nil {
		l.tocs.busy = map[digest.Digest]int{}
	}
	l.tocs.busy[d]++
	l.tocs.mu.Unlock()
	return func() {
		l.tocs.mu.Lock()
		if l.tocs.busy[d]--; l.tocs.busy[d] <= 0 {
			delete(l.tocs.busy, d)
		}
		l.tocs.mu.Unlock()
		l.releaseTOC(d)
	}
}

// releaseTOC removes the local copy of TOC d unless a record names it or
// a Prepare holds it.
func (l *lazyProvider) releaseTOC(d digest.Digest) {
	if d == "" || d.Validate() != nil {
		return
	}
	l.tocs.mu.Lock()
	defer l.tocs.mu.Unlock()
	if l.tocs.busy[d] > 0 {
		return
	}
	if _, ok := l.namedTOCs()[d.Encoded()]; ok {
		return
	}
	if err := os.Remove(l.tocPath(d)); err == nil {
		log.G(l.ctx).WithField("toc", d).Debug("lazy: removed a local toc no snapshot uses")
	} else if !os.IsNotExist(err) {
		log.G(l.ctx).WithError(err).WithField("toc", d).Warn("lazy: remove local toc")
	}
}

// namedTOCs are the file names under <root>/lazy/toc the mount records
// name (a record from before TOCs were kept by digest names its layer's).
func (l *lazyProvider) namedTOCs() map[string]struct{} {
	named := map[string]struct{}{}
	entries, _ := os.ReadDir(filepath.Join(l.dir, "mounts"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		rec, err := l.readRecord(e.Name())
		if err != nil {
			continue
		}
		if rec.TOC != "" {
			named[rec.TOC.Encoded()] = struct{}{}
		} else {
			named[rec.Layer.Encoded()] = struct{}{}
		}
	}
	return named
}

// sweepTOCs removes the local TOC copies no record names, left by
// snapshots removed before copies were released (or by a crash); it runs
// before any Prepare.
func (l *lazyProvider) sweepTOCs() {
	l.tocs.mu.Lock()
	defer l.tocs.mu.Unlock()
	named := l.namedTOCs()
	entries, _ := os.ReadDir(filepath.Join(l.dir, "toc"))
	for _, e := range entries {
		if _, ok := named[e.Name()]; ok || e.IsDir() {
			continue
		}
		if err := os.Remove(filepath.Join(l.dir, "toc", e.Name())); err != nil {
			log.G(l.ctx).WithError(err).Warn("lazy: remove local toc")
		}
	}
}

// recordTOC is the TOC the record of snapshot name names ("" if none).
func (l *lazyProvider) recordTOC(name string) digest.Digest {
	rec, err := l.readRecord(filepath.Base(l.recordPath(name)))
	if err != nil {
		return ""
	}
	return rec.TOC
}
