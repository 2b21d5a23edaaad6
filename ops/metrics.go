package ops

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
)

// LatencyBuckets are the upper bounds, in seconds, of every latency
// histogram medpipe exports: one set, so that stages compare and a
// dashboard's quantiles mean the same everywhere. They span the half
// millisecond a stage takes on an idle machine to the minute a redelivery
// after a broker outage takes.
var LatencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// NewLatency returns a latency histogram with LatencyBuckets. Observing
// costs a bucket search and atomic adds, no allocation.
func NewLatency(name, help string) prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: LatencyBuckets})
}

// Build identifies the running binary.
type Build struct {
	// Version is the release version (stamped at build) or a development
	// description; Revision the VCS revision, when known.
	Version, Revision string
}

// Collector is the gauge medpipe_build_info{version,revision,goversion} 1,
// which dashboards join on to show what runs where.
func (b Build) Collector() prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "medpipe_build_info",
		Help:        "Always 1; its labels say which build runs.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": runtime.Version()},
	})
	g.Set(1)
	return g
}
