package publish

import (
	"net"
	"strings"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

// Message is one MQTT message to publish.
type Message struct {
	Topic   string
	Payload []byte
	// Retain publishes the message retained whatever the sink's option
	// (a device's sensor status: a new subscriber must learn it at once).
	Retain bool
}

// internalTopics is the topic subtree of values about the device itself
// rather than the wearer.
const internalTopics = "Internal_Device_Data/"

// valueTopics are the fields in publishing order, derived from the field
// table (wire.Fields) so that a new row is published without a change
// here: the wearer's values, then the device's own (internalTopics), each
// in the table's order. The MPU temperature, the table's last internal
// value, so comes last, where dashboards take a reading to end
// (deploy/flows_fields_test.go checks flows.json against it).
var valueTopics = func() (order [wire.NumFields]wire.Field) {
	n := 0
	for _, internal := range []bool{false, true} {
		for f := range wire.NumFields {
			if strings.HasPrefix(wire.Fields[f].Topic, internalTopics) == internal {
				order[n] = f
				n++
			}
		}
	}
	return order
}()

// absentValue is the payload of a value topic whose sensor is not ok:
// JSON's null, which no parser takes for a number (parseFloat gives NaN),
// rather than no message. A reading always publishes the same topics (a
// consumer that ends a reading at its last topic keeps working), and with
// --retain the null replaces the last measurement, so a new subscriber
// never takes a stale value for a current one. Why the value is absent is
// on the status topic (StatusMessage).
var absentValue = []byte("null")

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
	// Sensors are a v2 device's sensor states (absent for legacy); a value
	// whose sensor is not ok is null in values.
	Sensors *wire.SensorStates `json:"sensors,omitempty"`
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
	base := prefix + "/" + r.Device + "/"
	w := r.Values.Wire()
	for _, f := range valueTopics {
		v := absentValue
		if w[f] != "" {
			v = []byte(w[f])
		}
		dst = append(dst, Message{Topic: base + wire.Fields[f].Topic, Payload: v})
	}
	base = base[:len(base)-1]
	if withAddresses {
		rh, rp := splitAddr(r.Remote)
		lh, lp := splitAddr(r.Local)
		dst = append(dst,
			Message{Topic: base + "/Ip_address", Payload: []byte(rh)},
			Message{Topic: base + "/Port_address", Payload: []byte(rp)},
			Message{Topic: base + "/Internal_Server/Ip_address", Payload: []byte(lh)},
			Message{Topic: base + "/Internal_Server/Port_address", Payload: []byte(lp)},
		)
	}
	if p := batchOf(r); p != nil {
		b := appendPulseBatchJSON(make([]byte, 0, jsonSizeHint(len(p.Samples))), p)
		dst = append(dst, Message{Topic: base + "/Physiological_Data/Pulse_Signal/batch", Payload: b})
	}
	if jsonTopic {
		dst = append(dst, JSONMessage(prefix, r))
	}
	return dst
}

// JSONMessage is a reading as one JSON message on <prefix>/<id>/reading.
func JSONMessage(prefix string, r *bus.Reading) Message {
	j := jsonReading{Device: r.Device, Values: r.Values, Received: r.Received, DeviceTime: r.DeviceTime, Seq: r.Seq, Pulse: batchOf(r)}
	if r.Protocol == bus.ProtocolV2 {
		j.Sensors = &r.Sensors
	}
	n := 0
	if j.Pulse != nil {
		n = len(j.Pulse.Samples)
	}
	b := appendReadingJSON(make([]byte, 0, jsonSizeHint(n)), &j)
	return Message{Topic: prefix + "/" + r.Device + "/reading", Payload: b}
}

// jsonSizeHint is room for a reading's JSON with samples pulse samples
// (a v2 reading's values, times, sensor states and the batch's rate and
// start take about 420 bytes, a sample at most 7 with its comma, as
// PulseVolts rounds to 4 decimals): one allocation, no regrowth.
func jsonSizeHint(samples int) int { return 512 + 8*samples }

// StatusMessage is a v2 device's sensor states, retained, on
// <prefix>/<id>/Internal_Device_Data/Status (wire.StatusTopic):
// {"temperature":"missing","mcu":"ok","pulse":"ok","motion":"ok"}. ok is
// false for a legacy reading: legacy devices report no states, and "ok"
// would be a claim the device never made.
func StatusMessage(prefix string, r *bus.Reading) (m Message, ok bool) {
	if r.Protocol != bus.ProtocolV2 {
		return Message{}, false
	}
	return Message{Topic: prefix + "/" + r.Device + "/" + wire.StatusTopic, Payload: r.Sensors.AppendJSON(nil), Retain: true}, true
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
