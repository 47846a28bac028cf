package mirror

import (
	"errors"
	"fmt"
	"io"
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
func (m *Mirror) serveBlob(w http.ResponseWriter, r *http.Request, st *store.Store, host, name string, d digest.Digest) {
	ctx := r.Context()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", d.String())
	h.Set("ETag", `"`+d.String()+`"`)
	h.Set("Accept-Ranges", "bytes")
	if r.Method == http.MethodGet && r.Header.Get("Range") != "" {
		m.serveBlobRange(w, r, st, d)
		return
	}
	if r.Method == http.MethodHead {
		info, err := st.StatBlob(ctx, d)
		if err != nil {
			lookup(kindBlob, storeError(ctx, w, r, err, codeBlobUnknown))
			return
		}
		lookup(kindBlob, resultHit)
		h.Set("Content-Length", strconv.FormatInt(info.Size, 10))
		w.WriteHeader(http.StatusOK)
		return
	}
	rc, info, err := st.OpenBlob(ctx, d)
	if err != nil {
		lookup(kindBlob, storeError(ctx, w, r, err, codeBlobUnknown))
		return
	}
	defer rc.Close()
	lookup(kindBlob, resultHit)
	h.Set("Content-Length", strconv.FormatInt(info.Size, 10))
	w.WriteHeader(http.StatusOK)
	start := time.Now()
	hw := &holdbackWriter{w: w}
	if _, err := io.Copy(hw, rc); err != nil {
		// The last byte is still held back, so the client sees a short
		// body, never a complete one with wrong content.
		if sw, ok := w.(*statusWriter); ok {
			sw.aborted = true
		}
		if !errors.Is(err, errWrite) {
			lookup(kindBlob, resultError)
			log.G(ctx).WithError(err).WithField("image", host+"/"+name).WithField("digest", d).Warn("mirror: blob read failed, cutting the connection")
		}
		panic(http.ErrAbortHandler)
	}
	if err := hw.flush(); err != nil {
		return // the client went away
	}
	log.G(ctx).WithField("digest", d).WithField("size", info.Size).WithField("took", time.Since(start)).Debug("mirror: blob served from s3")
}

// serveBlobRange answers a ranged GET through http.ServeContent over
// random access to the blob. A range is not the whole blob, so it cannot be
// verified here; the client checks the digest of what it assembles.
func (m *Mirror) serveBlobRange(w http.ResponseWriter, r *http.Request, st *store.Store, d digest.Digest) {
	ctx := r.Context()
	ra, err := st.BlobReaderAt(ctx, d)
	if err != nil {
		lookup(kindBlob, storeError(ctx, w, r, err, codeBlobUnknown))
		return
	}
	lookup(kindBlob, resultHit)
	http.ServeContent(w, r, "", time.Time{}, newReadSeeker(ra, ra.Size()))
}

// errWrite marks a failed write to the client.
var errWrite = errors.New("write to client")

// holdbackWriter passes everything through but the last byte written so
// far, which only flush releases: a verifying reader reports a digest
// mismatch after its last bytes, and by then they must not all be sent.
type holdbackWriter struct {
	w    io.Writer
	last []byte
}

func (h *holdbackWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(h.last) > 0 {
		if _, err := h.w.Write(h.last); err != nil {
			return 0, fmt.Errorf("%w: %w", errWrite, err)
		}
	}
	if _, err := h.w.Write(p[:len(p)-1]); err != nil {
		return 0, fmt.Errorf("%w: %w", errWrite, err)
	}
	h.last = append(h.last[:0], p[len(p)-1])
	return len(p), nil
}

// flush writes the held-back byte, once the content is known good.
func (h *holdbackWriter) flush() error {
	if len(h.last) == 0 {
		return nil
	}
	_, err := h.w.Write(h.last)
	h.last = h.last[:0]
	return err
}
