package wire

import (
	"encoding/json"
	"strconv"
)

// Sensor names one of a device's sensors: the part behind one or more
// values of the field table (FieldSpec.Sensor).
type Sensor uint8

// The sensors, in the order the v2 payload carries their states.
const (
	TempSensor   Sensor = iota // DS18B20 body temperature probe (1-Wire)
	MCUSensor                  // the RP2040's temperature diode (ADC4)
	PulseSensor                // the pulse sensor (ADC)
	MotionSensor               // the MPU6050 accelerometer and its temperature (I2C)
	NumSensors
)

// sensorNames are the sensors' names in the status JSON
// (Pico/<id>/Internal_Device_Data/Status) and READINGS.
var sensorNames = [NumSensors]string{
	TempSensor:   "temperature",
	MCUSensor:    "mcu",
	PulseSensor:  "pulse",
	MotionSensor: "motion",
}

// Name is the sensor's name in the status JSON.
func (s Sensor) Name() string {
	if s >= NumSensors {
		return "Sensor(" + strconv.Itoa(int(s)) + ")"
	}
	return sensorNames[s]
}

// String returns Name.
func (s Sensor) String() string { return s.Name() }

// SensorByName returns the sensor called name in the status JSON.
func SensorByName(name string) (Sensor, bool) {
	for i, n := range sensorNames {
		if n == name {
			return Sensor(i), true
		}
	}
	return 0, false
}

// SensorState is what a device knows of one sensor. Only SensorOK values
// are measurements: in any other state the device sends 0 as a placeholder
// and every consumer must treat the value as absent.
type SensorState uint8

// Sensor states (2 bits on the wire).
const (
	SensorOK       SensorState = iota // measuring
	SensorStarting                    // answers, no value yet (a DS18B20 before its first conversion)
	SensorMissing                     // does not answer (unplugged, broken wire); the device retries it
	SensorError                       // answers, but wrongly (unknown chip, failed checks)
)

var stateNames = [...]string{"ok", "starting", "missing", "error"}

func (s SensorState) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "SensorState(" + strconv.Itoa(int(s)) + ")"
}

// SensorStates are the states of a reading's sensors, indexed by Sensor.
// The zero value is every sensor ok: what a legacy reading, which carries
// no states, is taken to be.
type SensorStates [NumSensors]SensorState

// OK reports whether every sensor is ok.
func (s *SensorStates) OK() bool { return *s == SensorStates{} }

// Of returns the state of field f's sensor.
func (s *SensorStates) Of(f Field) SensorState { return s[Fields[f].Sensor] }

// Absent reports whether field f's value is not a measurement.
func (s *SensorStates) Absent(f Field) bool { return s.Of(f) != SensorOK }

// AppendJSON appends the states as a JSON object in sensor order:
// {"temperature":"missing","mcu":"ok","pulse":"ok","motion":"ok"}.
func (s *SensorStates) AppendJSON(dst []byte) []byte {
	dst = append(dst, '{')
	for i, st := range s {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = append(dst, sensorNames[i]...)
		dst = append(dst, `":"`...)
		dst = append(dst, st.String()...)
		dst = append(dst, '"')
	}
	return append(dst, '}')
}

// MarshalJSON writes AppendJSON's object.
func (s SensorStates) MarshalJSON() ([]byte, error) { return s.AppendJSON(nil), nil }

// UnmarshalJSON reads what MarshalJSON writes; a sensor it does not name is
// ok, a name it does not know is ignored (a newer device).
func (s *SensorStates) UnmarshalJSON(b []byte) error {
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*s = SensorStates{}
	for i, name := range sensorNames {
		v, ok := m[name]
		if !ok {
			continue
		}
		st, ok := parseState(v)
		if !ok {
			return &stateError{name, v}
		}
		s[i] = st
	}
	return nil
}

func parseState(v string) (SensorState, bool) {
	for i, n := range stateNames {
		if n == v {
			return SensorState(i), true
		}
	}
	return 0, false
}

type stateError struct{ sensor, state string }

func (e *stateError) Error() string {
	return "wire: sensor " + e.sensor + ": unknown state " + strconv.Quote(e.state)
}

// sensorStateBytes is the size of the payload's packed states for n sensors.
func sensorStateBytes(n int) int { return (n + 3) / 4 }
