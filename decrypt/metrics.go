package decrypt

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/ops"
)

type metrics struct {
	frames, searches, candidates, ambiguous prometheus.Counter
	cacheHits, cacheMisses, publishErrors   prometheus.Counter
	registryUpdates, sharedHits             prometheus.Counter
	markWriteFailures, checkpoints          prometheus.Counter
	markLoads, markFolded                   prometheus.Counter
	replies, replyErrors, duplicates        prometheus.Counter
	replayedDevices                         prometheus.Gauge
	readings, deadLetters                   *prometheus.CounterVec
	latency, batchSize                      prometheus.Histogram
}

// newMetrics makes the worker's metrics and registers them with reg (none
// when nil). A metric another Worker of the process already registered
// there is shared, not refused.
func newMetrics(reg prometheus.Registerer, ix *KeyIndex) (*metrics, error) {
	var errs []error
	c := func(name, help string) prometheus.Counter {
		m, err := register(reg, prometheus.NewCounter(prometheus.CounterOpts{Name: "medpipe_decrypt_" + name, Help: help}))
		errs = append(errs, err)
		return m
	}
	vec := func(name, help string, labels ...string) *prometheus.CounterVec {
		m, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: "medpipe_decrypt_" + name, Help: help}, labels))
		errs = append(errs, err)
		return m
	}
	m := &metrics{
		frames:            c("frames_total", "RAW frames handled."),
		searches:          c("key_searches_total", "Frames whose device was searched for over all keys."),
		candidates:        c("search_candidates_total", "Keys whose first block fitted during searches."),
		ambiguous:         c("ambiguous_total", "Frames that more than one key opened fully."),
		cacheHits:         c("cache_hits_total", "Frames opened with their connection's known key."),
		cacheMisses:       c("cache_misses_total", "Frames their connection's known key did not open (searched again)."),
		publishErrors:     c("publish_errors_total", "Failed publishes to READINGS or DEADLETTER."),
		sharedHits:        c("shared_cache_hits_total", "Connections whose device another worker had found (no search)."),
		registryUpdates:   c("registry_updates_total", "Device registry changes applied to the key index."),
		markWriteFailures: c("mark_write_failures_total", "v2 mark checkpoint writes refused (another worker took the partition over, or the checkpoint was deleted)."),
		checkpoints:       c("mark_checkpoints_total", "v2 mark checkpoints written (one per partition and interval, when its marks changed)."),
		markLoads:         c("mark_loads_total", "Partitions whose v2 marks this worker loaded (start, takeover, reload after a refused checkpoint)."),
		markFolded:        c("mark_folded_readings_total", "v2 readings folded into marks at loads: accepted after the partition's last checkpoint."),
		replies:           c("v2_replies_total", "v2 replies (ACK, REFUSED) sent to edges for their devices."),
		replyErrors:       c("v2_reply_errors_total", "v2 replies that could not be sent (the device resends and is answered again)."),
		duplicates:        c("v2_duplicates_total", "v2 frames accepted before and resent: acknowledged again, not stored twice."),
		readings:          vec("readings_total", "Readings published, by protocol and legacy variant.", "protocol", "variant"),
		deadLetters:       vec("deadletters_total", "Frames sent to DEADLETTER, by reason.", "reason"),
	}
	var err error
	m.latency, err = register(reg, ops.NewLatency("medpipe_decrypt_frame_latency_seconds",
		"RAW frames' time in decrypt: from delivery to the acknowledgement of their READINGS (or DEADLETTER) output."))
	errs = append(errs, err)
	m.batchSize, err = register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{Name: "medpipe_decrypt_readings_per_message",
		Help:    "Readings in each READINGS message a partition's gathered readings were stored in (bounded by --readings-batch).",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512}}))
	errs = append(errs, err)
	m.replayedDevices, err = register(reg, prometheus.NewGauge(prometheus.GaugeOpts{Name: "medpipe_decrypt_v2_replayed_devices",
		Help: "v2 devices whose frames have been refused as replayed for over 5 s with none accepted (see /healthz for their ids)."}))
	errs = append(errs, err)
	_, err = register(reg, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "medpipe_decrypt_devices", Help: "Devices in the key index."},
		func() float64 { return float64(ix.Len()) }))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("decrypt: metrics: %w", err)
	}
	for _, r := range []bus.Reason{bus.ReasonUnknownDevice, bus.ReasonAmbiguous, bus.ReasonMalformed, bus.ReasonInvalid, bus.ReasonRevoked, bus.ReasonTampered, bus.ReasonReplayed, bus.ReasonDowngrade} {
		m.deadLetters.WithLabelValues(string(r)) // every reason shows, at zero, from the start
	}
	return m, nil
}

// register registers c with reg, or returns the collector of the same
// description already there.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if reg == nil {
		return c, nil
	}
	err := reg.Register(c)
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}
