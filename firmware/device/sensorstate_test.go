package device

import (
	"context"
	"testing"
	"time"

	"github.com/medpipe/medpipe/firmware/esp/espfake"
)

// TestSensorsFailLoudly: an MPU6050 clone (WHO_AM_I 0x70) is woken and
// read; sensors absent at power-on are reported missing, retried, and
// report ok once plugged in; the temperature is absent until the DS18B20's
// first conversion, never a 0.
func TestSensorsFailLoudly(t *testing.T) {
	r := newLinkRig(t, espfake.Options{}, Options{})
	r.motion.WhoAmI = 0x70
	r.motion.SetAbsent(true)
	r.temp.SetAbsent(true)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.d.Work(ctx, r.cfg) }()
	waitFor := func(what string, ok func(Sensors) bool) {
		t.Helper()
		for !ok(r.d.Sensors()) {
			select {
			case err := <-done:
				t.Fatalf("working mode ended: %v", err)
			case <-ctx.Done():
				t.Fatalf("%s: sensors %+v", what, r.d.Sensors())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	waitFor("both missing at power-on", func(s Sensors) bool { return s.Temp == SensorMissing && s.Motion == SensorMissing })
	r.motion.SetAbsent(false)
	r.temp.SetAbsent(false)
	waitFor("the clone woken, the thermometer found", func(s Sensors) bool { return s.Motion == SensorOK && s.Temp != SensorMissing })
	waitFor("the first conversion read", func(s Sensors) bool { return s.Temp == SensorOK })
	r.temp.SetAbsent(true)
	waitFor("the thermometer unplugged", func(s Sensors) bool { return s.Temp == SensorMissing })
	cancel()
	<-done
}

// TestSensorValuesAbsentUnlessOK: a reading's values of a sensor that is
// not ok are left out (0 with the state saying so), and an ok sensor's
// are its measurement.
func TestSensorValuesAbsentUnlessOK(t *testing.T) {
	r := newLinkRig(t, espfake.Options{}, Options{})
	w := &worker{d: r.d, pulse: newSampler(nil, time.Now, time.Millisecond, 1)}
	w.sensors.state = Sensors{Temp: SensorStarting, Motion: SensorFaulty}
	w.sensors.temp = 85 // what a DS18B20 holds at power-on
	w.sensors.converting = time.Now()
	w.sensors.mpuRetry = time.Now().Add(time.Hour)
	r.d.b.ChipTemp = func() float64 { return 23.7 }
	v := w.sample()
	if v.Temp != 0 || v.AcelZ != 0 || v.TempMcu != 23.7 {
		t.Fatalf("values %+v with sensors %+v", v, w.sensors.state)
	}
}
