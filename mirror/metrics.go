package mirror

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Lookup results, as used in metrics labels.
const (
	resultHit   = "hit"
	resultMiss  = "miss"
	resultError = "error"
)

var (
	requests = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "mirror", Name: "requests_total",
		Help: "Mirror requests by kind (base, manifest, blob, other), method and status code.",
	}, []string{"kind", "method", "code"})
	bytesServed = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "mirror", Name: "served_bytes_total",
		Help: "Manifest and blob bytes the mirror sent, by kind and store (s3://bucket/prefix).",
	}, []string{"kind", "store"})
	lookups = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "mirror", Name: "lookups_total",
		Help: "Manifest and blob lookups by kind and result: hit (served from S3), miss (404, containerd goes upstream), error (S3 failed or content damaged).",
	}, []string{"kind", "result"})
)

func observe(kind, method string, w *statusWriter) {
	status := w.status
	if status == 0 {
		status = http.StatusOK
	}
	code := strconv.Itoa(status)
	requests.WithLabelValues(kind, method, code).Inc()
	if w.n > 0 && (kind == kindManifest || kind == kindBlob) && status < 300 {
		bytesServed.WithLabelValues(kind, w.store).Add(float64(w.n))
	}
}

func lookup(kind, result string) { lookups.WithLabelValues(kind, result).Inc() }
