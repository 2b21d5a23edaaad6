package publish

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/ops"
)

func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: "medpipe_publish_" + name, Help: help})
}

// metrics are the bridge's, whatever its sink.
type metrics struct {
	invalid, redeliveriesSkipped, sinkErrors prometheus.Counter
	// latency is a reading's time in publish (delivery → sink ack),
	// endToEnd from the edge's receipt of its frame to the sink's ack.
	latency, endToEnd prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		invalid: counter("invalid_readings_total", "READINGS messages that were not readings, or held readings that were not (those readings are skipped)."),
		// An ack lost or late brings a reading back; this process knows
		// whether the sink has it already.
		redeliveriesSkipped: counter("redeliveries_skipped_total", "Redelivered READINGS messages not published again: this process had delivered them."),
		sinkErrors:          counter("sink_errors_total", "Sink writes that failed or were not acknowledged; their readings are redelivered."),
		latency:             ops.NewLatency("medpipe_publish_reading_latency_seconds", "READINGS messages' time in publish: from delivery to the sink's acknowledgement."),
		endToEnd:            ops.NewLatency("medpipe_publish_end_to_end_latency_seconds", "Readings' time through the pipeline: from the edge reading the frame to the sink's acknowledgement."),
	}
	if reg != nil {
		reg.MustRegister(m.invalid, m.redeliveriesSkipped, m.sinkErrors, m.latency, m.endToEnd)
	}
	return m
}

// mqttMetrics are the MQTT sink's.
type mqttMetrics struct {
	readings, messages, errors, reconnects, barriers, connectFailures prometheus.Counter
}

func newMQTTMetrics(reg prometheus.Registerer, connected *atomic.Bool) *mqttMetrics {
	m := &mqttMetrics{
		readings:   counter("readings_total", "Readings republished to MQTT."),
		messages:   counter("mqtt_messages_total", "MQTT messages published."),
		errors:     counter("mqtt_errors_total", "MQTT publishes that failed; their readings are redelivered."),
		reconnects: counter("reconnects_total", "MQTT connection losses."),
		barriers:   counter("resume_waits_total", "Readings whose delivery was confirmed only after a reconnect drained paho's store."),
		// Refused credentials show here and in the log, so a wrong password
		// is not a silent stall.
		connectFailures: counter("mqtt_connect_failures_total", "MQTT connection attempts that failed (broker down, TLS or credentials refused)."),
	}
	up := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "medpipe_publish_mqtt_connected", Help: "1 while the broker is connected."}, func() float64 {
		if connected.Load() {
			return 1
		}
		return 0
	})
	if reg != nil {
		reg.MustRegister(m.readings, m.messages, m.errors, m.reconnects, m.barriers, m.connectFailures, up)
	}
	return m
}
