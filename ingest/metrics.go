package ingest

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	active         prometheus.Gauge
	conns          prometheus.Counter
	rejected       *prometheus.CounterVec
	throttled      prometheus.Counter
	frames         *prometheus.CounterVec
	frameBytes     prometheus.Counter
	connErrors     *prometheus.CounterVec
	publishErrors  prometheus.Counter
	publishRetries prometheus.Counter
	penalties      prometheus.Counter
}

// newMetrics makes the edge's metrics; pending reports the frames awaiting
// RAW's acknowledgement (the --ingest-in-flight window), penalised the
// addresses refused for a penalty now.
func newMetrics(reg prometheus.Registerer, pending, penalised func() float64) *metrics {
	m := &metrics{
		active:         prometheus.NewGauge(prometheus.GaugeOpts{Name: "medpipe_ingest_connections_active", Help: "Device connections open now."}),
		conns:          prometheus.NewCounter(prometheus.CounterOpts{Name: "medpipe_ingest_connections_total", Help: "Device connections accepted."}),
		rejected:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "medpipe_ingest_connections_rejected_total", Help: "Connections closed on arrival, by the bound that refused them (max_conns, max_conns_per_ip, max_preframe_per_ip, accept_rate, penalised)."}, []string{"limit"}),
		throttled:      prometheus.NewCounter(prometheus.CounterOpts{Name: "medpipe_ingest_frames_throttled_total", Help: "Frames whose reading was delayed because their connection exceeded the frame-rate bound."}),
		frames:         prometheus.NewCounterVec(prometheus.CounterOpts{Name: "medpipe_ingest_frames_total", Help: "Complete frames read from devices, by protocol."}, []string{"protocol"}),
		frameBytes:     prometheus.NewCounter(prometheus.CounterOpts{Name: "medpipe_ingest_frame_bytes_total", Help: "Bytes of complete frames read."}),
		connErrors:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "medpipe_ingest_connection_errors_total", Help: "Connections closed for bad input or read errors, by reason."}, []string{"reason"}),
		publishErrors:  prometheus.NewCounter(prometheus.CounterOpts{Name: "medpipe_ingest_publish_errors_total", Help: "Publishes to RAW that failed at first."}),
		publishRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: "medpipe_ingest_publish_retries_total", Help: "Publish retries to RAW."}),
		penalties:      prometheus.NewCounter(prometheus.CounterOpts{Name: "medpipe_ingest_penalties_total", Help: "Times an address was penalised (refused new connections for --penalty) for being cut for abuse --penalty-strikes times."}),
	}
	for _, r := range []string{"not_hex", "too_long", "too_short", "idle", "frame_timeout", "first_frame_timeout", "truncated", "read", "unknown_protocol",
		"malformed", "bad_frames", "unknown_device", "tls_handshake", "proxy_header", "proxy_untrusted", "penalised"} {
		m.connErrors.WithLabelValues(r)
	}
	for _, l := range refusals {
		m.rejected.WithLabelValues(l)
	}
	if reg != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "medpipe_ingest_pending_frames", Help: "Frames published to RAW and awaiting its acknowledgement; reads wait while it is at --max-pending-frames."}, pending))
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "medpipe_ingest_penalised_addresses", Help: "Addresses refused new connections now for a penalty (--penalty)."}, penalised))
		reg.MustRegister(m.active, m.conns, m.rejected, m.throttled, m.frames, m.frameBytes, m.connErrors, m.publishErrors, m.publishRetries, m.penalties)
	}
	return m
}
