package decrypt

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/bus"
)

type metrics struct {
	frames, searches, candidates, ambiguous prometheus.Counter
	cacheHits, cacheMisses, publishErrors   prometheus.Counter
	registryUpdates, sharedHits             prometheus.Counter
	readings, deadLetters                   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, ix *KeyIndex) *metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "medpipe_decrypt_" + name, Help: help})
	}
	m := &metrics{
		frames:          c("frames_total", "RAW frames handled."),
		searches:        c("key_searches_total", "Frames whose device was searched for over all keys."),
		candidates:      c("search_candidates_total", "Keys whose first block fitted during searches."),
		ambiguous:       c("ambiguous_total", "Frames that more than one key opened fully."),
		cacheHits:       c("cache_hits_total", "Frames opened with their connection's known key."),
		cacheMisses:     c("cache_misses_total", "Frames their connection's known key did not open."),
		publishErrors:   c("publish_errors_total", "Failed publishes to READINGS or DEADLETTER."),
		sharedHits:      c("shared_cache_hits_total", "Connections whose device another worker had found (no search)."),
		registryUpdates: c("registry_updates_total", "Device registry changes applied to the key index."),
		readings:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "medpipe_decrypt_readings_total", Help: "Readings published, by protocol and legacy variant."}, []string{"protocol", "variant"}),
		deadLetters:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "medpipe_decrypt_deadletters_total", Help: "Frames sent to DEADLETTER, by reason."}, []string{"reason"}),
	}
	for _, r := range []bus.Reason{bus.ReasonUnknownDevice, bus.ReasonAmbiguous, bus.ReasonMalformed, bus.ReasonInvalid, bus.ReasonRevoked, bus.ReasonTampered, bus.ReasonReplayed} {
		m.deadLetters.WithLabelValues(string(r))
	}
	devices := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "medpipe_decrypt_devices", Help: "Devices in the key index."}, func() float64 { return float64(ix.Len()) })
	if reg != nil {
		reg.MustRegister(m.frames, m.searches, m.candidates, m.ambiguous, m.cacheHits, m.cacheMisses, m.publishErrors, m.registryUpdates, m.sharedHits, m.readings, m.deadLetters, devices)
	}
	return m
}
