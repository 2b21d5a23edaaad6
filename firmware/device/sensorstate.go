package device

import (
	"errors"
	"time"

	"github.com/medpipe/medpipe/firmware/onewire"
	"github.com/medpipe/medpipe/firmware/sensors"
	"github.com/medpipe/medpipe/wire"
)

// SensorState is what the device knows of one sensor: the protocol's
// state, which v2 frames carry (wire.SensorState).
type SensorState = wire.SensorState

// Sensor states. Only SensorOK values are measurements: in any other state
// the value is absent, never a 0 that reads like one.
const (
	SensorOK       = wire.SensorOK
	SensorStarting = wire.SensorStarting // answers, no value yet (a DS18B20 before its first conversion)
	SensorMissing  = wire.SensorMissing  // does not answer (unplugged, broken wire): retried every sensorRetry
	SensorFaulty   = wire.SensorError    // answers, but not as expected or its readings fail their checks
)

// Sensors is the state of the sensors that can fail on their own (the pulse
// sensor and the RP2040's diode are read by the chip's ADC).
type Sensors struct {
	Temp   SensorState // DS18B20 body temperature
	Motion SensorState // MPU6050 accelerometer (and its temperature)
}

// Wire returns the states as a v2 frame carries them. The pulse sensor and
// the chip's diode are read by the RP2040's own ADC: always there.
func (s Sensors) Wire() wire.SensorStates {
	var w wire.SensorStates
	w[wire.TempSensor], w[wire.MotionSensor] = s.Temp, s.Motion
	return w
}

// Sensor retry and failure limits.
const (
	sensorRetry    = time.Second
	sensorFailures = 3 // consecutive failed reads before a sensor is reported
)

// sensorSet reads the DS18B20 and the MPU6050, keeping their states: a
// sensor absent at boot or lost later is retried, and its values are
// reported absent meanwhile.
type sensorSet struct {
	mpu sensors.MPU6050
	ds  onewire.DS18B20

	state Sensors

	mpuRetry, dsRetry time.Time // when to try a missing sensor again
	mpuFails, dsFails int
	converting        time.Time // when the running DS18B20 conversion started
	temp              float64   // the last temperature read
	motion            sensors.Motion
}

// start configures both sensors.
func (s *sensorSet) start(now time.Time) {
	s.state = Sensors{Temp: SensorMissing, Motion: SensorMissing}
	s.configureMPU(now)
	s.convert(now)
}

func (s *sensorSet) configureMPU(now time.Time) {
	err := s.mpu.Configure()
	switch {
	case err == nil:
		s.state.Motion, s.mpuFails = SensorOK, 0
	case errors.Is(err, sensors.ErrMPU6050Unknown):
		s.state.Motion = SensorFaulty
	default:
		s.state.Motion = SensorMissing
	}
	if err != nil {
		s.mpuRetry = now.Add(sensorRetry)
	}
}

// convert starts a DS18B20 conversion, read ConversionMillis later.
func (s *sensorSet) convert(now time.Time) {
	if err := s.ds.Convert(); err != nil {
		s.state.Temp, s.converting, s.dsRetry = SensorMissing, time.Time{}, now.Add(sensorRetry)
		return
	}
	if s.state.Temp == SensorMissing {
		s.state.Temp = SensorStarting
	}
	s.converting = now
}

// read updates the sensors' values and states; it reports how many reads
// failed.
func (s *sensorSet) read(now time.Time) (errs int) {
	switch {
	case s.converting.IsZero():
		if !now.Before(s.dsRetry) {
			s.convert(now)
		}
	case now.Sub(s.converting) >= onewire.ConversionMillis*time.Millisecond:
		t, err := s.ds.Read()
		switch {
		case err == nil:
			s.temp, s.state.Temp, s.dsFails = t, SensorOK, 0
		case errors.Is(err, onewire.ErrNoDevice):
			s.state.Temp = SensorMissing
			errs++
		case errors.Is(err, onewire.ErrNotReady):
			// Power-on value: the sensor was reset (a brown-out); its next
			// conversion gives a value.
			s.state.Temp = SensorStarting
		default: // CRC: noise or a loose wire
			errs++
			if s.dsFails++; s.dsFails >= sensorFailures {
				s.state.Temp = SensorFaulty
			}
		}
		s.convert(now)
	}
	if s.state.Motion != SensorOK {
		if !now.Before(s.mpuRetry) {
			s.configureMPU(now)
		}
	}
	if s.state.Motion == SensorOK {
		m, err := s.mpu.Read()
		if err != nil {
			errs++
			if s.mpuFails++; s.mpuFails >= sensorFailures {
				s.state.Motion, s.mpuRetry = SensorMissing, now.Add(sensorRetry)
			}
		} else {
			s.motion, s.mpuFails = m, 0
		}
	}
	return errs
}
