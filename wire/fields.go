package wire

import "strconv"

// FieldSpec describes one value a device reports. The table Fields is the
// one place a value is defined: the legacy JSON key, the MQTT topic, the
// fixed-point scale of the v2 payload and the text dashboards get all come
// from it, so a new sensor is one row here (and one Field constant).
type FieldSpec struct {
	// Name is the value's JSON key in legacy readings and READINGS.
	Name string
	// Topic is the MQTT topic path under Pico/<device id>/.
	Topic string
	// Scale is the v2 fixed-point divisor: the payload carries
	// round(value × Scale) as a signed 32-bit integer.
	Scale float64
	// Decimals is how many decimals the legacy text has for a
	// non-negative value; the Pico firmware writes negatives with one fewer.
	Decimals int
	// Unit is for documentation and dashboards.
	Unit string
	// Sensor is the part that measures the value: when the v2 payload
	// says its state is not SensorOK, the value is absent.
	Sensor Sensor
}

// Fields is the field table, indexed by Field.
var Fields = [NumFields]FieldSpec{
	Temp:     {Name: "Temp", Topic: "Physiological_Data/Temperature", Scale: 1000, Decimals: 3, Unit: "°C", Sensor: TempSensor},
	TempMcu:  {Name: "TempMcu", Topic: "Internal_Device_Data/Temperature/MCU", Scale: 1000, Decimals: 3, Unit: "°C", Sensor: MCUSensor},
	PulseSig: {Name: "PulseSig", Topic: "Physiological_Data/Pulse_Signal", Scale: 1000, Decimals: 3, Unit: "V", Sensor: PulseSensor},
	AcelX:    {Name: "Acel_x", Topic: "Physiological_Data/Accelerometer/x", Scale: 1000, Decimals: 3, Unit: "g", Sensor: MotionSensor},
	AcelY:    {Name: "Acel_y", Topic: "Physiological_Data/Accelerometer/y", Scale: 1000, Decimals: 3, Unit: "g", Sensor: MotionSensor},
	AcelZ:    {Name: "Acel_z", Topic: "Physiological_Data/Accelerometer/z", Scale: 1000, Decimals: 3, Unit: "g", Sensor: MotionSensor},
	TempMpu:  {Name: "TempMpu", Topic: "Internal_Device_Data/Temperature/MPU", Scale: 1000, Decimals: 3, Unit: "°C", Sensor: MotionSensor},
}

// StatusTopic is the MQTT topic path, under Pico/<id>/ beside the values'
// topics, of a v2 device's sensor states (SensorStates' JSON, retained).
const StatusTopic = "Internal_Device_Data/Status"

// fieldNames are the JSON keys, from the table.
var fieldNames = func() (n [NumFields]string) {
	for i, f := range Fields {
		n[i] = f.Name
	}
	return n
}()

// Spec returns the field's row of the table.
func (f Field) Spec() FieldSpec { return Fields[f] }

// Format writes v as the Pico firmware writes field f: Decimals decimals,
// one fewer for negative numbers, and never "-0".
func (f Field) Format(v float64) string {
	d := Fields[f].Decimals
	if v < 0 {
		s := strconv.FormatFloat(v, 'f', max(d-1, 0), 64)
		if s != "-"+strconv.FormatFloat(0, 'f', max(d-1, 0), 64) {
			return s
		}
		v = 0
	}
	return strconv.FormatFloat(v, 'f', d, 64)
}
