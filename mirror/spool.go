package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/s3snap/s3snap/store"
)

var (
	// ErrBlobTooLarge is returned for a blob larger than the whole spool.
	// Its digest must be verified before its first byte is sent, which
	// needs a whole local copy, so the mirror refuses it (503) and
	// containerd fetches it from the registry.
	ErrBlobTooLarge = errors.New("blob larger than the mirror spool")
	// ErrSpoolFull is returned when the spool has no room for a blob
	// because every copy in it is being served right now.
	ErrSpoolFull = errors.New("mirror spool full")
)

// Spool defaults.
const (
	// DefaultMaxFetches is how many blobs are read from S3 into the spool
	// at once; further requests wait for a slot.
	DefaultMaxFetches = 8
	// maxAutoSpool caps the spool's default size (10% of its file system).
	maxAutoSpool = 4 << 30
	// maxOpenTries bounds how often open fetches a copy that is evicted
	// again before it could be opened (a spool far too small for its load).
	maxOpenTries = 3
)

// DefaultSpoolLimit is the spool's size when none is given: a tenth of
// the file system holding dir, at most 4 GiB.
func DefaultSpoolLimit(dir string) int64 {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return maxAutoSpool
	}
	return min(int64(fs.Blocks)*int64(fs.Bsize)/10, maxAutoSpool)
}

// spool keeps verified local copies of the blobs the mirror serves: at most
// max bytes (copies plus fetches under way), at most cap(slots) fetches at
// once, one fetch per digest shared by every request that waits for it and
// cancelled when the last of them leaves. A copy no one is reading is
// removed ttl after its last use, or earlier, oldest first, when a new
// blob needs the room.
type spool struct {
	dir   string
	ttl   time.Duration
	max   int64
	slots chan struct{}

	mu      sync.Mutex
	copies  map[digest.Digest]*spoolCopy
	flights map[digest.Digest]*flight
	used    int64 // bytes of copies and of fetches under way
}

// spoolCopy is one verified blob on disk.
type spoolCopy struct {
	size    int64
	from    string // URL of the store it came from
	lastUse time.Time
	readers int // open spooled files; a copy being read is never removed
}

// flight is one fetch of a blob into the spool, shared by its waiters.
type flight struct {
	done    chan struct{}
	err     error
	waiters int
	cancel  context.CancelFunc
}

func newSpool(dir string, ttl time.Duration, limit int64, fetches int) *spool {
	return &spool{
		dir:     dir,
		ttl:     ttl,
		max:     limit,
		slots:   make(chan struct{}, fetches),
		copies:  map[digest.Digest]*spoolCopy{},
		flights: map[digest.Digest]*flight{},
	}
}

// spooled is an open, verified copy; Close lets the spool remove it again.
type spooled struct {
	*os.File
	close func()
}

func (f *spooled) Close() error {
	err := f.File.Close()
	f.close()
	return err
}

// open returns a verified local copy of blob d and the URL of the store it
// came from, fetching it from the first of stores that has it if needed; a
// store whose copy fails is skipped for the next. The store's reader
// checks the digest at the end of the read; a copy that fails is deleted,
// never served. If ctx ends while waiting, open returns; the fetch goes on
// only while some other request still waits for it.
func (s *spool) open(ctx context.Context, stores []*store.Store, d digest.Digest) (*spooled, string, error) {
	if err := d.Validate(); err != nil {
		return nil, "", fmt.Errorf("blob %q: %w", d, store.ErrInvalidName)
	}
	for range maxOpenTries {
		s.mu.Lock()
		s.expire()
		if f, from, ok := s.openCopy(d); ok {
			s.mu.Unlock()
			return f, from, nil
		}
		fl, ok := s.flights[d]
		if !ok {
			fl = s.start(ctx, stores, d)
		}
		fl.waiters++
		s.mu.Unlock()

		select {
		case <-fl.done:
			if fl.err != nil {
				return nil, "", fl.err
			}
		case <-ctx.Done():
			s.leave(d, fl)
			return nil, "", ctx.Err()
		}
	}
	return nil, "", fmt.Errorf("blob %s was evicted before it could be served: %w", d, ErrSpoolFull)
}

// openCopy opens d's copy if the spool holds it. s.mu is held.
func (s *spool) openCopy(d digest.Digest) (*spooled, string, bool) {
	c, ok := s.copies[d]
	if !ok {
		return nil, "", false
	}
	f, err := os.Open(s.path(d))
	if err != nil { // removed behind our back: forget it
		s.drop(d, c)
		return nil, "", false
	}
	c.readers++
	c.lastUse = time.Now()
	return &spooled{File: f, close: func() {
		s.mu.Lock()
		c.readers--
		c.lastUse = time.Now()
		s.mu.Unlock()
	}}, c.from, true
}

// leave is called by a waiter that gave up on fl: the last one to leave
// cancels the fetch, so nothing is read from S3 for no one.
func (s *spool) leave(d digest.Digest, fl *flight) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fl.waiters--
	if fl.waiters > 0 {
		return
	}
	select {
	case <-fl.done:
		return // finished anyway
	default:
	}
	fl.cancel()
	if s.flights[d] == fl {
		delete(s.flights, d) // a new request starts a new fetch
	}
	fetchesCancelled.Inc()
}

// start begins fetching d in the background. s.mu is held. The fetch keeps
// the request's values (its logger) but not its cancellation: it is
// cancelled when its last waiter leaves.
func (s *spool) start(ctx context.Context, stores []*store.Store, d digest.Digest) *flight {
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	fl := &flight{done: make(chan struct{}), cancel: cancel}
	s.flights[d] = fl
	go func() {
		defer cancel()
		from, size, err := s.fetch(fctx, stores, d)
		s.mu.Lock()
		if s.flights[d] == fl {
			delete(s.flights, d)
		}
		if err == nil {
			if c, ok := s.copies[d]; ok {
				// A cancelled fetch of d finished after all and a later
				// one too: one verified file, so one reservation.
				s.used -= size
				c.lastUse = time.Now()
			} else {
				// The fetch's reservation becomes the copy's.
				s.copies[d] = &spoolCopy{size: size, from: from, lastUse: time.Now()}
			}
		}
		fl.err = err
		s.mu.Unlock()
		close(fl.done)
	}()
	return fl
}

// fetch copies d from the first of stores that has it into the spool,
// once a fetch slot is free.
func (s *spool) fetch(ctx context.Context, stores []*store.Store, d digest.Digest) (string, int64, error) {
	select {
	case s.slots <- struct{}{}:
	default:
		fetchWaits.Inc()
		select {
		case s.slots <- struct{}{}:
		case <-ctx.Done():
			return "", 0, ctx.Err()
		}
	}
	defer func() { <-s.slots }()
	fetchesInFlight.Inc()
	defer fetchesInFlight.Dec()
	var size int64
	st, err := tryStores(ctx, stores, func(st *store.Store) (err error) {
		size, err = s.fetchFrom(ctx, st, d)
		return err
	})
	if err != nil {
		return "", 0, err
	}
	return st.URL(), size, nil
}

// fetchFrom reads blob d from st into the spool, verified, and returns its
// size. The blob's size (from S3's HEAD) is checked against the spool
// before a byte of it is read.
func (s *spool) fetchFrom(ctx context.Context, st *store.Store, d digest.Digest) (int64, error) {
	rc, info, err := st.OpenBlob(ctx, d)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	if info.Size > s.max {
		return 0, fmt.Errorf("blob %s is %d bytes, the mirror spool holds %d: %w", d, info.Size, s.max, ErrBlobTooLarge)
	}
	if err := s.reserve(ctx, info.Size); err != nil {
		return 0, fmt.Errorf("blob %s (%d bytes): %w", d, info.Size, err)
	}
	kept := false
	defer func() {
		if !kept {
			s.release(info.Size)
		}
	}()
	tmp, err := os.CreateTemp(s.dir, ".fetch-*")
	if err != nil {
		return 0, fmt.Errorf("spool blob %s: %w", d, err)
	}
	defer os.Remove(tmp.Name())
	// One byte more than the size: a longer object is an error, and the
	// read must reach EOF for the digest to be checked.
	n, err := io.Copy(tmp, io.LimitReader(rc, info.Size+1))
	if err == nil && n != info.Size {
		err = fmt.Errorf("read %d bytes, want %d: %w", n, info.Size, store.ErrSizeMismatch)
	}
	if err != nil {
		tmp.Close()
		return 0, fmt.Errorf("fetch blob %s: %w", d, err)
	}
	if err := tmp.Close(); err != nil {
		return 0, fmt.Errorf("spool blob %s: %w", d, err)
	}
	if err := os.Rename(tmp.Name(), s.path(d)); err != nil {
		return 0, fmt.Errorf("spool blob %s: %w", d, err)
	}
	kept = true
	return info.Size, nil
}

// reserve takes n bytes of the spool for a fetch, first removing copies no
// one reads, least recently used first, if the spool would overflow.
func (s *spool) reserve(ctx context.Context, n int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used+n > s.max {
		var idle []digest.Digest
		for d, c := range s.copies {
			if c.readers == 0 {
				idle = append(idle, d)
			}
		}
		sort.Slice(idle, func(i, j int) bool { return s.copies[idle[i]].lastUse.Before(s.copies[idle[j]].lastUse) })
		for _, d := range idle {
			if s.used+n <= s.max {
				break
			}
			log.G(ctx).WithField("digest", d).WithField("size", s.copies[d].size).Debug("mirror: spool full, evicting least recently used copy")
			s.drop(d, s.copies[d])
			spoolEvictions.Inc()
		}
	}
	if s.used+n > s.max {
		return fmt.Errorf("%d of %d bytes in use by blobs being served or fetched: %w", s.used, s.max, ErrSpoolFull)
	}
	s.used += n
	spoolBytes.Add(float64(n))
	return nil
}

func (s *spool) release(n int64) {
	s.mu.Lock()
	s.used -= n
	s.mu.Unlock()
	spoolBytes.Sub(float64(n))
}

// drop removes copy c of d from disk and the spool. s.mu is held.
func (s *spool) drop(d digest.Digest, c *spoolCopy) {
	_ = os.Remove(s.path(d))
	delete(s.copies, d)
	s.used -= c.size
	spoolBytes.Sub(float64(c.size))
}

// expire removes copies no one has read for ttl. s.mu is held.
func (s *spool) expire() {
	for d, c := range s.copies {
		if c.readers == 0 && time.Since(c.lastUse) > s.ttl {
			s.drop(d, c)
		}
	}
}

func (s *spool) path(d digest.Digest) string { return filepath.Join(s.dir, d.Encoded()) }
