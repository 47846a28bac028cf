package snapshotter

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	lazyLayers = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "snapshotter", Name: "lazy_layers_total",
		Help: "Layers mounted lazily (FUSE over their index) instead of unpacked.",
	})
	lazyFallbacks = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "snapshotter", Name: "lazy_fallbacks_total",
		Help: "Layers with a lazy index that could not be mounted (bad index, mount failure) and were unpacked instead.",
	})
	lazyRestoreFailures = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "s3snap", Subsystem: "snapshotter", Name: "lazy_restore_failures_total",
		Help: "Lazy layers the agent could not remount when it started.",
	})
)
