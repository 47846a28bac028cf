package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/containerd/log"

	"github.com/s3snap/s3snap/store"
)

// OCI distribution error codes the mirror answers with.
const (
	codeManifestUnknown = "MANIFEST_UNKNOWN"
	codeBlobUnknown     = "BLOB_UNKNOWN"
	codeNameUnknown     = "NAME_UNKNOWN"
	codeUnsupported     = "UNSUPPORTED"
	// codeUnavailable is Distribution's code for 503 (not in the OCI spec's
	// list, which leaves 5xx codes to the registry).
	codeUnavailable = "UNAVAILABLE"
)

type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeError answers with status and an OCI error body (none for HEAD).
func writeError(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	body, _ := json.Marshal(struct {
		Errors []apiError `json:"errors"`
	}{[]apiError{{Code: code, Message: msg}}})
	h := w.Header()
	h.Del("Content-Range")
	h.Del("Docker-Content-Digest")
	h.Del("ETag")
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// storeError answers for an error from the store. What the store does not
// hold (or cannot name) is a 404 with notFoundCode; a missing bucket, an S3
// failure or damaged content is a 503. Both send containerd to the next
// host. It returns the lookup result for metrics: "miss" or "error".
func storeError(ctx context.Context, w http.ResponseWriter, r *http.Request, err error, notFoundCode string) string {
	switch {
	case errors.Is(err, store.ErrNoSuchBucket):
		// Also an ErrNotFound, but it means the mirror is misconfigured or
		// the bucket gone: say so rather than "unknown".
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrInvalidName):
		writeError(w, r, http.StatusNotFound, notFoundCode, err.Error())
		return resultMiss
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		return resultError // the client went away; nobody to answer
	}
	log.G(ctx).WithError(err).WithField("url", r.URL.String()).Warn("mirror: store error, answering 503 so containerd goes upstream")
	writeError(w, r, http.StatusServiceUnavailable, codeUnavailable, err.Error())
	return resultError
}
