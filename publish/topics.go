package publish

import (
	"encoding/json"
	"net"
	"time"

	"github.com/medpipe/medpipe/bus"
)

// Message is one MQTT message to publish.
type Message struct {
	Topic   string
	Payload []byte
}

// The value topics, in publishing order, with the field each carries.
var valueTopics = []struct {
	suffix string
	value  func(v *bus.Values) string
}{
	{"/Physiological_Data/Temperature", func(v *bus.Values) string { return v.Temp }},
	{"/Physiological_Data/Pulse_Signal", func(v *bus.Values) string { return v.PulseSig }},
	{"/Physiological_Data/Accelerometer/x", func(v *bus.Values) string { return v.AcelX }},
	{"/Physiological_Data/Accelerometer/y", func(v *bus.Values) string { return v.AcelY }},
	{"/Physiological_Data/Accelerometer/z", func(v *bus.Values) string { return v.AcelZ }},
	{"/Internal_Device_Data/Temperature/MCU", func(v *bus.Values) string { return v.TempMcu }},
	{"/Internal_Device_Data/Temperature/MPU", func(v *bus.Values) string { return v.TempMpu }},
}

// jsonReading is the payload of <prefix>/<id>/reading: the values as the
// device sent them and when the edge received them.
type jsonReading struct {
	Device   string     `json:"device"`
	Values   bus.Values `json:"values"`
	Received time.Time  `json:"received"`
	// DeviceTime is when a v2 device took the reading, by its clock
	// (absent for legacy).
	DeviceTime time.Time `json:"device_time,omitzero"`
	// Seq is a v2 device's frame sequence number (absent for legacy).
	Seq uint64 `json:"seq,omitempty"`
	// Pulse is a v2 device's pulse batch, as on the batch topic (absent for
	// legacy): with --json-only it is the only place the 250 Hz samples go.
	Pulse *pulseBatch `json:"pulse,omitempty"`
}

// pulseBatch is the payload of <prefix>/<id>/Physiological_Data/Pulse_Signal/batch:
// a v2 device's pulse samples with their rate and the first sample's time.
type pulseBatch struct {
	Rate    float64   `json:"rate"`
	Start   time.Time `json:"start"`
	Samples []float64 `json:"samples"`
}

// Topics appends the MQTT messages of one reading, in publishing order: the
// seven value topics, then (withAddresses) the device's and the edge's
// addresses, then a v2 device's pulse batch, then (jsonTopic) the whole
// reading as one JSON message.
func Topics(dst []Message, prefix string, r *bus.Reading, withAddresses, jsonTopic bool) []Message {
	base := prefix + "/" + r.Device
	for _, t := range valueTopics {
		dst = append(dst, Message{base + t.suffix, []byte(t.value(&r.Values))})
	}
	if withAddresses {
		rh, rp := splitAddr(r.Remote)
		lh, lp := splitAddr(r.Local)
		dst = append(dst,
			Message{base + "/Ip_address", []byte(rh)},
			Message{base + "/Port_address", []byte(rp)},
			Message{base + "/Internal_Server/Ip_address", []byte(lh)},
			Message{base + "/Internal_Server/Port_address", []byte(lp)},
		)
	}
	if p := batchOf(r); p != nil {
		b, _ := json.Marshal(p)
		dst = append(dst, Message{base + "/Physiological_Data/Pulse_Signal/batch", b})
	}
	if jsonTopic {
		dst = append(dst, JSONMessage(prefix, r))
	}
	return dst
}

// JSONMessage is a reading as one JSON message on <prefix>/<id>/reading.
func JSONMessage(prefix string, r *bus.Reading) Message {
	b, _ := json.Marshal(jsonReading{r.Device, r.Values, r.Received, r.DeviceTime, r.Seq, batchOf(r)})
	return Message{prefix + "/" + r.Device + "/reading", b}
}

// batchOf is a reading's pulse batch as published, nil when it has none.
func batchOf(r *bus.Reading) *pulseBatch {
	if r.Pulse == nil {
		return nil
	}
	return &pulseBatch{r.Pulse.Rate, time.UnixMilli(r.Pulse.Start).UTC(), r.Pulse.Samples}
}

// splitAddr splits host:port, tolerating an address without a port.
func splitAddr(a string) (host, port string) {
	h, p, err := net.SplitHostPort(a)
	if err != nil {
		return a, ""
	}
	return h, p
}
