package simulator

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// RegisterMetrics exports the fleet's counters (medpipe_simulator_*) on reg.
func (f *Fleet) RegisterMetrics(reg prometheus.Registerer) error {
	counter := func(name, help string, v func(Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "medpipe_simulator_" + name, Help: help},
			func() float64 { return float64(v(f.Stats())) })
	}
	cs := []prometheus.Collector{
		counter("readings_sent_total", "Readings written to the edge.", func(s Stats) uint64 { return s.Sent }),
		counter("frames_acked_total", "v2 frames the edge acknowledged.", func(s Stats) uint64 { return s.Acked }),
		counter("frames_dropped_total", "v2 frames dropped unacknowledged from a full resend buffer.", func(s Stats) uint64 { return s.Dropped }),
		counter("reconnects_total", "Device reconnections.", func(s Stats) uint64 { return s.Reconnects }),
		counter("errors_total", "Device errors (connect, write, refused frames).", func(s Stats) uint64 { return s.Errors }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "medpipe_simulator_devices_connected", Help: "Devices with an open connection."},
			func() float64 { return float64(f.Stats().Connected) }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Health is nil unless the fleet has devices and none is connected.
func (f *Fleet) Health() error {
	if st := f.Stats(); st.Devices > 0 && st.Connected == 0 {
		return errors.New("no device connected")
	}
	return nil
}
