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
		Help: "Manifest and blob lookups by kind and result: hit (served from S3), miss (404, containerd goes upstream), error (S3 failed, content damaged, or refused by the spool).",
	}, []string{"kind", "result"})
	refusals = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "mirror", Name: "refusals_total",
		Help: "Blobs the mirror answered 503 for because of its spool limit, by reason: too_large (bigger than the whole spool) or spool_full (all of it being served); containerd fetches them from the registry.",
	}, []string{"reason"})
	spoolBytes = promauto.NewGauge(prometheus.GaugeOpts{
		Namespace: "s3snap", Subsystem: "mirror", Name: "spool_bytes",
		Help: "Bytes in the mirror's spool: verified copies and fetches under way.",
	})
	spoolLimitBytes = promauto.NewGauge(prometheus.GaugeOpts{
		Namespace: "s3snap", Subsystem: "mirror", Name: "spool_limit_bytes",
		Help: "The mirror spool's size limit ([mirror] spool_max_bytes).",
	})
	spoolEvictions = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "mirror", Name: "spool_evictions_total",
		Help: "Verified copies removed from the mirror's spool before their time to make room for another blob.",
	})
	fetchesInFlight = promauto.NewGauge(prometheus.GaugeOpts{
		Namespace: "s3snap", Subsystem: "mirror", Name: "fetches_in_flight",
		Help: "Blobs being read from S3 into the mirror's spool ([mirror] max_concurrent_fetches at most).",
	})
	fetchWaits = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "mirror", Name: "fetch_waits_total",
		Help: "Blob fetches that waited for a free slot ([mirror] max_concurrent_fetches).",
	})
	fetchesCancelled = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "mirror", Name: "fetches_cancelled_total",
		Help: "Blob fetches stopped because every request waiting for them had gone.",
	})
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
