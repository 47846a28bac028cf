package lazy

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	chunksFetched = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "lazy", Name: "chunks_fetched_total",
		Help: "Lazy data chunks fetched from S3, verified and cached.",
	})
	bytesFetched = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "lazy", Name: "fetched_bytes_total",
		Help: "Compressed lazy data bytes fetched from S3.",
	})
	layersVerified = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "lazy", Name: "verified_layers_total",
		Help: "Lazy layers whose rebuilt tar hashed to the image's diff ID.",
	})
	layersUnverified = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "lazy", Name: "unverified_layers_total",
		Help: "Lazy layers served from a v1 index, which cannot be verified (s3snap index rewrites it as v2).",
	})
	verifyFailures = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "lazy", Name: "verify_failures_total",
		Help: "Lazy layers whose index did not rebuild the image's layer: marked bad, every read fails with EIO.",
	})
	cacheBytes = promauto.NewGauge(prometheus.GaugeOpts{
		Namespace: "s3snap", Subsystem: "lazy", Name: "cache_bytes",
		Help: "Bytes of verified lazy chunks on local disk (the chunk cache).",
	})
	cacheEvictions = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "lazy", Name: "cache_evictions_total",
		Help: "Lazy chunks evicted from the chunk cache to keep it within its limit.",
	})
)
