package snapshotter

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	layersFetched = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "snapshotter", Name: "layers_provided_total",
		Help: "Layers fetched from S3, unpacked and committed instead of pulled by containerd, by store (s3://bucket/prefix).",
	}, []string{"store"})
	bytesFetched = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "snapshotter", Name: "fetched_bytes_total",
		Help: "Compressed layer bytes fetched from S3, by store (s3://bucket/prefix).",
	}, []string{"store"})
	unpackSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Namespace: "s3snap", Subsystem: "snapshotter", Name: "layer_unpack_seconds",
		Help:    "Time to fetch, verify and unpack one layer from S3.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 12), // 50ms .. ~100s
	})
	indexUnpackFailures = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "snapshotter", Name: "index_unpack_failures_total",
		Help: "Eager unpacks from a layer's lazy index that failed (damaged, or not the layer's) and unpacked the layer's blob instead.",
	})
	layersUnpacked = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "snapshotter", Name: "layers_unpacked_total",
		Help: "Layers unpacked eagerly and committed, by source: index (files made from the layer's lazy index) or blob (the gzip/zstd layer itself).",
	}, []string{"source"})
	fallbacks = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "snapshotter", Name: "fallbacks_total",
		Help: "Layer Prepares left to containerd's own pull, by reason: not_mirrored, not_in_bucket, corrupt (a digest, size or chain id that does not match), bad_index (a lazy index that fails validation; the layer is then unpacked), unavailable (the store's circuit breaker is open), error.",
	}, []string{"reason"})
)
