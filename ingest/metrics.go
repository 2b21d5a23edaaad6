package ingest

import (
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/ops"
)

// observeStored records a frame's time from its receipt (its
// Medpipe-Received header, which the edge wrote) to now, when RAW has it.
func (m *metrics) observeStored(msg *nats.Msg) {
	if t, err := time.Parse(time.RFC3339Nano, msg.Header.Get(bus.HeaderReceived)); err == nil {
		m.stored.Observe(time.Since(t).Seconds())
	}
}

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
	// publishRenamed counts frames published again under a new message id
	// (retry: an id "in process" that JetStream never stored).
	publishRenamed prometheus.Counter
	// v2 replies: decrypt's relayed to devices, dropped (connection gone),
	// and resent frames stored again to be acknowledged again.
	repliesRelayed, repliesDropped, resends prometheus.Counter
	penalties                               prometheus.Counter
	// stored is a frame's time from the edge reading it to RAW's ack.
	stored prometheus.Histogram
	// framesPerMessage is the frames in each RAW batch (RawBatch).
	framesPerMessage prometheus.Histogram
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
		publishRenamed: prometheus.NewCounter(prometheus.CounterOpts{Name: "medpipe_ingest_publish_renamed_total", Help: "Frames published to RAW again under a new message id: JetStream kept answering that their id was in process (after a stream leader was lost); a legacy frame's reading may then be delivered twice."}),
		repliesRelayed: prometheus.NewCounter(prometheus.CounterOpts{Name: "medpipe_ingest_v2_replies_relayed_total", Help: "v2 replies from decrypt (ACK, REFUSED) written to devices."}),
		repliesDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "medpipe_ingest_v2_replies_dropped_total", Help: "v2 replies from decrypt for connections already closed (the device resends)."}),
		resends:        prometheus.NewCounter(prometheus.CounterOpts{Name: "medpipe_ingest_v2_resends_total", Help: "v2 frames stored alone that RAW already held, stored again for decrypt to acknowledge again (a batched frame's resend is stored like any frame, and decrypt acknowledges it again)."}),
		penalties:      prometheus.NewCounter(prometheus.CounterOpts{Name: "medpipe_ingest_penalties_total", Help: "Times an address was penalised (refused new connections for --penalty) for being cut for abuse --penalty-strikes times."}),
		framesPerMessage: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "medpipe_ingest_frames_per_message",
			Help:    "Frames in each RAW message a partition's gathered frames were stored in (bounded by --raw-batch; without it, every frame is a message of its own and this stays empty).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512}}),
		stored: ops.NewLatency("medpipe_ingest_store_latency_seconds", "Frames' time in the edge: from reading the frame's end to RAW's acknowledgement (retries included)."),
	}
	for _, r := range []string{"not_hex", "too_long", "too_short", "idle", "frame_timeout", "first_frame_timeout", "truncated", "read", "unknown_protocol",
		"malformed", "bad_frames", "unknown_device", "tls_handshake", "proxy_header", "proxy_untrusted", "penalised"} {
		m.connErrors.WithLabelValues(r)
	}
	for _, l := range refusals {
		m.rejected.WithLabelValues(l)
	}
	if reg != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "medpipe_ingest_pending_frames", Help: "Frames published to RAW and awaiting its acknowledgement; reads wait while single frames are at --ingest-in-flight, or a partition's batches at their bound."}, pending))
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "medpipe_ingest_penalised_addresses", Help: "Addresses refused new connections now for a penalty (--penalty)."}, penalised))
		reg.MustRegister(m.active, m.conns, m.rejected, m.throttled, m.frames, m.frameBytes, m.connErrors, m.publishErrors, m.publishRetries, m.publishRenamed, m.penalties, m.repliesRelayed, m.repliesDropped, m.resends, m.stored, m.framesPerMessage)
	}
	return m
}
