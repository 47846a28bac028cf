package mirror

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

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
		if reason, ok := refusal(err); ok {
			// Not a store's fault: the spool cannot hold it verified.
			refusals.WithLabelValues(reason).Inc()
			lookup(kindBlob, resultError)
			log.G(ctx).WithError(err).WithField("image", host+"/"+name).WithField("reason", reason).
				Warn("mirror: blob refused (spool limit), answering 503 so containerd fetches it from the registry")
			writeError(w, r, http.StatusServiceUnavailable, codeUnavailable, err.Error())
			return
		}
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

// refusal reports whether err is the spool refusing a blob, and why (the
// metrics label).
func refusal(err error) (string, bool) {
	switch {
	case errors.Is(err, ErrBlobTooLarge):
		return "too_large", true
	case errors.Is(err, ErrSpoolFull):
		return "spool_full", true
	}
	return "", false
}
