package publish

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	readings, messages, errors, reconnects, barriers, invalid, connectFailures, redeliveriesSkipped prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, connected *atomic.Bool) *metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "medpipe_publish_" + name, Help: help})
	}
	m := &metrics{
		readings:   c("readings_total", "Readings republished to MQTT."),
		messages:   c("mqtt_messages_total", "MQTT messages published."),
		errors:     c("mqtt_errors_total", "MQTT publishes that failed; their readings are redelivered."),
		reconnects: c("reconnects_total", "MQTT connection losses."),
		barriers:   c("resume_waits_total", "Readings whose delivery was confirmed only after a reconnect drained paho's store."),
		invalid:    c("invalid_readings_total", "READINGS messages that were not readings."),
		// Refused credentials show here and in the log, so a wrong password
		// is not a silent stall.
		connectFailures: c("mqtt_connect_failures_total", "MQTT connection attempts that failed (broker down, TLS or credentials refused)."),
		// An ack lost or late brings a reading back; this process knows
		// whether the broker has it already.
		redeliveriesSkipped: c("redeliveries_skipped_total", "Redelivered READINGS messages not published again: this process had delivered them."),
	}
	up := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "medpipe_publish_mqtt_connected", Help: "1 while the broker is connected."}, func() float64 {
		if connected.Load() {
			return 1
		}
		return 0
	})
	if reg != nil {
		reg.MustRegister(m.readings, m.messages, m.errors, m.reconnects, m.barriers, m.invalid, m.connectFailures, m.redeliveriesSkipped, up)
	}
	return m
}
