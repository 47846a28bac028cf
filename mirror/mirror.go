// Package mirror is the node agent's loopback OCI distribution endpoint: a
// read-only registry (GET and HEAD of /v2/, manifests and blobs) backed by
// the stores that mirror upstream registries.
//
// containerd reaches it through hosts.toml as a mirror of an upstream host
// and names that host in the ns query parameter; the host selects the store.
// Whatever the store cannot answer gets a 404 (or a 503 when S3 itself
// fails), and containerd goes on to the next host in hosts.toml, the real
// registry: the mirror never makes a pull fail that would otherwise succeed.
//
// Why 404 and 503 both work: containerd's docker resolver
// (core/remotes/docker/resolver.go, v2.4.2) moves on to the next host after
// any status above 399 when resolving, and its fetcher after any error; it
// retries a 5xx only on the last host, which the mirror never is. 404 is
// the answer for "not in the bucket"; 503 for "could not ask the bucket".
// The bytes themselves are never trusted blindly: a blob is read whole and
// verified against its digest into a local spool before its first byte is
// sent, whole or by range; one that does not verify is a 503.
//
// Its resources are bounded: the spool holds at most a set number of bytes
// (least recently used copies no one is reading make room for new ones; a
// blob larger than the whole spool is refused with a 503, as it could not
// be verified before its first byte), at most a set number of blobs are
// read from S3 at once, and a fetch is cancelled as soon as every request
// waiting for it has gone. Manifests and tag links are read whole only up
// to the store's 4 MiB limit before they are parsed.
package mirror

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/store"
)

// StoreFunc returns the stores that mirror upstream registry host (as
// containerd names it in ns, host[:port]), in the order to look in them
// (the node's own region's copy first); none means the host is not
// mirrored. The first store that holds a manifest serves it; that store is
// then tried first for the image's blobs. A store that lacks something, or
// fails (logged), passes the request on to the next; after the last the
// answer is a 404 or 503 and containerd goes upstream.
type StoreFunc func(host string) []*store.Store

// Mirror is the read-only registry handler. It is safe for concurrent use.
type Mirror struct {
	stores    StoreFunc
	manifests manifestCache
	preferred preferred
	spool     *spool
}

type options struct {
	spoolDir   string
	spoolTTL   time.Duration
	spoolLimit int64
	maxFetches int
}

// Option configures a Mirror.
type Option func(*options)

// WithSpool sets where verified blobs are kept while they are served and
// how long after their last use (default: a directory under os.TempDir(),
// 10 minutes).
func WithSpool(dir string, ttl time.Duration) Option {
	return func(o *options) { o.spoolDir, o.spoolTTL = dir, ttl }
}

// WithSpoolLimit bounds the bytes the spool holds, copies and fetches
// under way together (default, or limit <= 0: DefaultSpoolLimit of the
// spool's directory).
func WithSpoolLimit(limit int64) Option { return func(o *options) { o.spoolLimit = limit } }

// WithMaxFetches bounds how many blobs are read from S3 into the spool at
// once (default, or n <= 0: DefaultMaxFetches); further requests wait.
func WithMaxFetches(n int) Option { return func(o *options) { o.maxFetches = n } }

// New returns a Mirror answering from stores. It empties the spool.
func New(stores StoreFunc, opts ...Option) (*Mirror, error) {
	o := options{spoolDir: filepath.Join(os.TempDir(), "s3snap-mirror"), spoolTTL: 10 * time.Minute}
	for _, opt := range opts {
		opt(&o)
	}
	if o.maxFetches <= 0 {
		o.maxFetches = DefaultMaxFetches
	}
	if err := os.RemoveAll(o.spoolDir); err != nil {
		return nil, fmt.Errorf("empty mirror spool %s: %w", o.spoolDir, err)
	}
	if err := os.MkdirAll(o.spoolDir, 0o700); err != nil {
		return nil, fmt.Errorf("create mirror spool %s: %w", o.spoolDir, err)
	}
	if o.spoolLimit <= 0 {
		o.spoolLimit = DefaultSpoolLimit(o.spoolDir)
	}
	spoolLimitBytes.Set(float64(o.spoolLimit))
	return &Mirror{stores: stores, spool: newSpool(o.spoolDir, o.spoolTTL, o.spoolLimit, o.maxFetches)}, nil
}

// Request kinds, as used in metrics labels.
const (
	kindBase     = "base"
	kindManifest = "manifest"
	kindBlob     = "blob"
	kindOther    = "other"
)

// route is a parsed /v2/ request path.
type route struct {
	kind string
	name string // repository
	ref  string // tag or digest
}

// parsePath splits /v2/<name>/(manifests|blobs)/<ref>. Repository names
// may be nested, so the last /manifests/ or /blobs/ separates them.
func parsePath(p string) (route, bool) {
	if p == "/v2" || p == "/v2/" {
		return route{kind: kindBase}, true
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return route{kind: kindOther}, false
	}
	for _, k := range []struct{ sep, kind string }{{"/manifests/", kindManifest}, {"/blobs/", kindBlob}} {
		i := strings.LastIndex(rest, k.sep)
		if i <= 0 {
			continue
		}
		name, ref := rest[:i], rest[i+len(k.sep):]
		if ref == "" || strings.Contains(ref, "/") {
			continue
		}
		return route{kind: k.kind, name: name, ref: ref}, true
	}
	return route{kind: kindOther}, false
}

// ServeHTTP answers one registry request.
func (m *Mirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt, ok := parsePath(r.URL.Path)
	rw := &statusWriter{ResponseWriter: w}
	defer func() { observe(rt.kind, r.Method, rw) }()
	w = rw

	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, r, http.StatusMethodNotAllowed, codeUnsupported, "this mirror is read-only")
		return
	}
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if !ok {
		writeError(w, r, http.StatusNotFound, codeNameUnknown, "no such endpoint")
		return
	}
	if rt.kind == kindBase {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = w.Write([]byte("{}"))
		}
		return
	}
	host := r.URL.Query().Get("ns")
	if host == "" {
		writeError(w, r, http.StatusNotFound, codeNameUnknown, "no ns query parameter: which upstream registry is this for?")
		return
	}
	stores := m.stores(host)
	if len(stores) == 0 {
		writeError(w, r, http.StatusNotFound, codeNameUnknown, "registry "+host+" is not mirrored")
		return
	}
	if err := store.ValidateRepository(rt.name); err != nil {
		writeError(w, r, http.StatusNotFound, codeNameUnknown, err.Error())
		return
	}
	switch rt.kind {
	case kindManifest:
		m.serveManifest(w, r, stores, host, rt)
	case kindBlob:
		d, err := digest.Parse(rt.ref)
		if err != nil {
			writeError(w, r, http.StatusNotFound, codeBlobUnknown, "not a digest: "+rt.ref)
			return
		}
		m.serveBlob(w, r, m.preferred.order(host, rt.name, stores), host, rt.name, d)
	}
}

// statusWriter records the status and body bytes written, and the store
// they came from, for metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
	n      int64
	store  string
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(p)
	s.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
