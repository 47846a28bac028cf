package mirror

import (
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/store"
)

// serveManifest answers HEAD/GET /v2/<name>/manifests/<tag|digest> with the
// manifest exactly as stored, under its own media type, from the first of
// stores that holds it (a tag is resolved in each store on its own, so a
// replica that lags serves its own, complete, image).
func (m *Mirror) serveManifest(w http.ResponseWriter, r *http.Request, stores []*store.Store, host string, rt route) {
	ctx := r.Context()
	var man *store.Manifest
	st, err := tryStores(ctx, stores, func(st *store.Store) error {
		d, err := digest.Parse(rt.ref)
		if err != nil {
			if d, err = st.Resolve(ctx, rt.name, rt.ref); err != nil {
				return err
			}
		}
		var ok bool
		if man, ok = m.manifests.get(st, rt.name, d); ok {
			return nil
		}
		if man, err = st.GetManifest(ctx, rt.name, d); err != nil {
			return err
		}
		m.manifests.put(st, rt.name, man)
		return nil
	})
	if err != nil {
		lookup(kindManifest, storeError(ctx, w, r, err, codeManifestUnknown))
		return
	}
	logger := log.G(ctx).WithField("image", host+"/"+rt.name+":"+rt.ref).WithField("digest", man.Digest)
	// The mirror does not convert between manifest formats: if the client
	// accepts none it can take, it goes upstream.
	if !accepts(r.Header.Values("Accept"), man.MediaType) {
		lookup(kindManifest, resultMiss)
		logger.WithField("mediatype", man.MediaType).Info("mirror: manifest not in an accepted media type")
		writeError(w, r, http.StatusNotFound, codeManifestUnknown, "manifest is "+man.MediaType+", which the request does not accept")
		return
	}
	lookup(kindManifest, resultHit)
	m.preferred.remember(host, rt.name, st)
	servedFrom(w, st.URL())
	logger.WithField("store", st.URL()).Info("mirror: manifest served from s3")
	h := w.Header()
	h.Set("Content-Type", man.MediaType)
	h.Set("Content-Length", strconv.Itoa(len(man.Raw)))
	h.Set("Docker-Content-Digest", man.Digest.String())
	h.Set("ETag", `"`+man.Digest.String()+`"`)
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(man.Raw)
	}
}

// accepts reports whether the Accept header values admit mediaType. No
// Accept header accepts anything.
func accepts(values []string, mediaType string) bool {
	if len(values) == 0 {
		return true
	}
	major, _, _ := strings.Cut(mediaType, "/")
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil {
				continue
			}
			if q, ok := params["q"]; ok {
				if f, err := strconv.ParseFloat(q, 64); err == nil && f == 0 {
					continue
				}
			}
			if mt == "*/*" || mt == mediaType || mt == major+"/*" {
				return true
			}
		}
	}
	return false
}
