package mirror

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"

	"github.com/s3snap/s3snap/store"
)

// serveBlob answers HEAD/GET /v2/<name>/blobs/<digest>. Blobs are looked up
// by digest in the whole bucket (as the snapshotter does): a digest names
// its content, and the bucket is the node's own.
//
// A GET, whole or ranged, is served from a local copy that has been read
// completely and verified against the digest first: a client that resumes
// with a Range request (containerd does, after a cut connection) must never
// be able to assemble content that was not verified.
//
// stores are tried in order (the one the image's manifest came from first);
// the first that has the blob, whole and verified, serves it.
func (m *Mirror) serveBlob(w http.ResponseWriter, r *http.Request, stores []*store.Store, host, name string, d digest.Digest) {
	ctx := r.Context()
	h := w.Header()
	if r.Method == http.MethodHead {
		var info store.BlobInfo
		st, err := tryStores(ctx, stores, func(st *store.Store) (err error) {
			info, err = st.StatBlob(ctx, d)
			return err
		})
		if err != nil {
			lookup(kindBlob, storeError(ctx, w, r, err, codeBlobUnknown))
			return
		}
		lookup(kindBlob, resultHit)
		servedFrom(w, st.URL())
		setBlobHeaders(h, d)
		h.Set("Content-Length", strconv.FormatInt(info.Size, 10))
		w.WriteHeader(http.StatusOK)
		return
	}
	start := time.Now()
	f, from, err := m.spool.open(ctx, stores, d)
	if err != nil {
		// A blob that does not verify is a 503: containerd goes upstream.
		lookup(kindBlob, storeError(ctx, w, r, err, codeBlobUnknown))
		return
	}
	defer f.Close()
	lookup(kindBlob, resultHit)
	servedFrom(w, from)
	setBlobHeaders(h, d)
	http.ServeContent(w, r, "", time.Time{}, f)
	log.G(ctx).WithField("image", host+"/"+name).WithField("digest", d).WithField("store", from).WithField("range", r.Header.Get("Range")).
		WithField("took", time.Since(start)).Debug("mirror: blob served")
}

func setBlobHeaders(h http.Header, d digest.Digest) {
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", d.String())
	h.Set("ETag", `"`+d.String()+`"`)
	h.Set("Accept-Ranges", "bytes")
}

// spool keeps verified local copies of blobs the mirror serves, one fetch
// per digest at a time, removed a while after their last use.
type spool struct {
	dir   string
	ttl   time.Duration
	group singleflight.Group
	from  sync.Map // file name -> URL of the store the copy came from
}

// open returns a verified local copy of blob d and the URL of the store it
// came from, fetching it from the first of stores that has it first if
// needed; a store whose copy fails is skipped for the next. The store's
// reader checks the digest at the end of the read; a copy that fails is
// deleted, never served.
func (s *spool) open(ctx context.Context, stores []*store.Store, d digest.Digest) (*os.File, string, error) {
	if err := d.Validate(); err != nil {
		return nil, "", fmt.Errorf("blob %q: %w", d, store.ErrInvalidName)
	}
	path := filepath.Join(s.dir, d.Encoded())
	if f, err := os.Open(path); err == nil {
		now := time.Now()
		_ = os.Chtimes(path, now, now) // keep it while it is in use
		return f, s.source(d), nil
	}
	_, err, _ := s.group.Do(d.String(), func() (any, error) {
		if _, err := os.Stat(path); err == nil {
			return nil, nil
		}
		s.expire()
		fetchCtx := context.WithoutCancel(ctx)
		st, err := tryStores(fetchCtx, stores, func(st *store.Store) error {
			return s.fetch(fetchCtx, st, d, path)
		})
		if err == nil {
			s.from.Store(d.Encoded(), st.URL())
		}
		return nil, err
	})
	if err != nil {
		return nil, "", err
	}
	f, err := os.Open(path)
	return f, s.source(d), err
}

func (s *spool) source(d digest.Digest) string {
	if v, ok := s.from.Load(d.Encoded()); ok {
		return v.(string)
	}
	return ""
}

func (s *spool) fetch(ctx context.Context, st *store.Store, d digest.Digest, path string) error {
	rc, _, err := st.OpenBlob(ctx, d)
	if err != nil {
		return err
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(s.dir, ".fetch-*")
	if err != nil {
		return fmt.Errorf("spool blob %s: %w", d, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, rc); err != nil {
		tmp.Close()
		return fmt.Errorf("fetch blob %s: %w", d, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("spool blob %s: %w", d, err)
	}
	return os.Rename(tmp.Name(), path)
}

// expire removes copies not used for ttl.
func (s *spool) expire() {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > s.ttl {
			_ = os.Remove(filepath.Join(s.dir, e.Name()))
			s.from.Delete(e.Name())
		}
	}
}
