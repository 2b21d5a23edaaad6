package bus

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/medpipe/medpipe/wire"
)

// Reading is a READINGS message: one validated device reading with where and
// when it arrived. On the bus it is a compact binary body (AppendReading);
// MarshalReading gives its JSON.
type Reading struct {
	Device   string  `json:"device"`
	Protocol string  `json:"protocol"`
	Variant  string  `json:"variant,omitempty"` // legacy: pico or pseudo
	Values   Values  `json:"values"`            // the text the device sent
	Numbers  Numbers `json:"numbers"`           // the same values as numbers
	// Seq is a v2 device's sequence number of the frame.
	Seq uint64 `json:"seq,omitempty"`
	// DeviceTime is when a v2 device took the reading.
	DeviceTime time.Time `json:"device_time,omitzero"`
	// Pulse is a v2 device's batch of pulse samples, if it sent one.
	Pulse *wire.PulseBatch `json:"pulse,omitempty"`
	// Sensors are a v2 device's sensor states; absent (the zero value)
	// when every sensor is ok, and for legacy devices, which report none.
	// A value whose sensor is not ok is absent: "" in Values (null in
	// JSON), 0 in Numbers.
	Sensors wire.SensorStates `json:"sensors,omitzero"`
	// Received is when the edge read the frame.
	Received time.Time `json:"received"`
	Conn     string    `json:"conn"`
	FrameSeq uint64    `json:"frame_seq"`
	RawSeq   uint64    `json:"raw_seq"`
	Remote   string    `json:"remote"`
	Local    string    `json:"local"`
}

// Values holds a reading's values as the device formatted them; "" is a
// value absent because its sensor is not ok, null in JSON.
type Values struct {
	Temp     string `json:"Temp"`
	TempMcu  string `json:"TempMcu"`
	PulseSig string `json:"PulseSig"`
	AcelX    string `json:"Acel_x"`
	AcelY    string `json:"Acel_y"`
	AcelZ    string `json:"Acel_z"`
	TempMpu  string `json:"TempMpu"`
}

// MarshalJSON writes the values as an object in field order, an absent
// value ("") as null.
func (v Values) MarshalJSON() ([]byte, error) {
	w := v.Wire()
	dst := []byte{'{'}
	for f := range wire.NumFields {
		if f > 0 {
			dst = append(dst, ',')
		}
		dst = strconv.AppendQuote(dst, f.Name())
		dst = append(dst, ':')
		if w[f] == "" {
			dst = append(dst, "null"...)
		} else {
			dst = strconv.AppendQuote(dst, w[f])
		}
	}
	return append(dst, '}'), nil
}

// Numbers holds a reading's values as numbers: the shape v2 devices send.
type Numbers = wire.V2Values

// Fields are v's values indexed by wire.Field: the one place the struct's
// fields meet the field table (a test holds each to its row's Name).
func (v *Values) Fields() [wire.NumFields]*string {
	return [...]*string{&v.Temp, &v.TempMcu, &v.PulseSig, &v.AcelX, &v.AcelY, &v.AcelZ, &v.TempMpu}
}

// SetWire fills Values and Numbers from a validated device reading.
func (r *Reading) SetWire(w *wire.Reading) {
	for f, p := range r.Values.Fields() {
		*p = w[f]
	}
	r.Numbers = w.Numbers()
}

// Wire returns the values as a wire.Reading.
func (v *Values) Wire() (w wire.Reading) {
	for f, p := range v.Fields() {
		w[f] = *p
	}
	return w
}

// MarshalReading encodes r as JSON: the shape of a reading outside the bus
// (replay's JSON lines, and READINGS messages stored before the compact
// body). READINGS messages are written with AppendReading.
func MarshalReading(r *Reading) ([]byte, error) { return json.Marshal(r) }

// readingBodyV1 starts a compact READINGS body. A JSON body starts with
// '{', so UnmarshalReading tells the two apart by the first byte.
const readingBodyV1 = 0xB1

// AppendReading appends r's compact READINGS body to dst: a version byte,
// then every field in the order of Reading, strings and a v2 pulse batch
// (as its JSON) length-prefixed, integers and times (Unix ns, UTC) as
// varints, numbers as IEEE 754 bits. Against JSON it is less than half the
// bytes and an order of magnitude less CPU each way (BenchmarkReadingCodec),
// paid once per reading by decrypt and once by publish.
func AppendReading(dst []byte, r *Reading) ([]byte, error) {
	var pulse []byte
	if r.Pulse != nil {
		var err error
		if pulse, err = json.Marshal(r.Pulse); err != nil {
			return nil, fmt.Errorf("bus: encode pulse batch: %w", err)
		}
	}
	dst = append(dst, readingBodyV1)
	for _, s := range [...]string{r.Device, r.Protocol, r.Variant} {
		dst = appendString(dst, s)
	}
	for _, p := range r.Values.Fields() {
		dst = appendString(dst, *p)
	}
	for _, p := range r.Numbers.Fields() {
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(*p))
	}
	dst = binary.AppendUvarint(dst, r.Seq)
	dst = appendTime(dst, r.DeviceTime)
	dst = binary.AppendUvarint(dst, uint64(len(pulse)))
	dst = append(dst, pulse...)
	dst = appendTime(dst, r.Received)
	dst = appendString(dst, r.Conn)
	dst = binary.AppendUvarint(dst, r.FrameSeq)
	dst = binary.AppendUvarint(dst, r.RawSeq)
	dst = appendString(dst, r.Remote)
	dst = appendString(dst, r.Local)
	if !r.Sensors.OK() {
		// Only when a sensor is not ok: a body without this trailer (every
		// body before it, and every healthy reading) reads as all ok.
		dst = append(dst, byte(len(r.Sensors)))
		for _, st := range r.Sensors {
			dst = append(dst, byte(st))
		}
	}
	return dst, nil
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// appendTime writes 0 for the zero time, else 1 + Unix nanoseconds
// (zig-zag), which covers 1678-2262.
func appendTime(dst []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(dst, 0)
	}
	dst = append(dst, 1)
	return binary.AppendVarint(dst, t.UnixNano())
}

// errShortBody reports a compact body that ends early or has a bad length.
var errShortBody = errors.New("truncated or malformed compact body")

// bodyReader reads a compact body; the first error sticks.
type bodyReader struct {
	b   []byte
	err error
}

func (d *bodyReader) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err, d.b = errShortBody, nil
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *bodyReader) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.err, d.b = errShortBody, nil
		return nil
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *bodyReader) string() string { return string(d.bytes()) }

func (d *bodyReader) float() float64 {
	if len(d.b) < 8 {
		d.err, d.b = errShortBody, nil
		return 0
	}
	v := math.Float64frombits(binary.LittleEndian.Uint64(d.b))
	d.b = d.b[8:]
	return v
}

func (d *bodyReader) time() time.Time {
	if len(d.b) == 0 {
		d.err = errShortBody
		return time.Time{}
	}
	set := d.b[0]
	d.b = d.b[1:]
	switch set {
	case 0:
		return time.Time{}
	case 1:
		v, n := binary.Varint(d.b)
		if n <= 0 {
			d.err, d.b = errShortBody, nil
			return time.Time{}
		}
		d.b = d.b[n:]
		return time.Unix(0, v).UTC()
	}
	d.err, d.b = errShortBody, nil
	return time.Time{}
}

func decodeReadingBody(b []byte, r *Reading) error {
	d := bodyReader{b: b[1:]}
	r.Device, r.Protocol, r.Variant = d.string(), d.string(), d.string()
	for _, p := range r.Values.Fields() {
		*p = d.string()
	}
	for _, p := range r.Numbers.Fields() {
		*p = d.float()
	}
	r.Seq = d.uvarint()
	r.DeviceTime = d.time()
	if pulse := d.bytes(); len(pulse) > 0 && d.err == nil {
		r.Pulse = new(wire.PulseBatch)
		if err := json.Unmarshal(pulse, r.Pulse); err != nil {
			return fmt.Errorf("pulse batch: %w", err)
		}
	}
	r.Received = d.time()
	r.Conn = d.string()
	r.FrameSeq, r.RawSeq = d.uvarint(), d.uvarint()
	r.Remote, r.Local = d.string(), d.string()
	if d.err == nil && len(d.b) > 0 {
		// The sensor states' trailer: a count, then one state a byte.
		n := int(d.b[0])
		if n < int(wire.NumSensors) || len(d.b) < 1+n {
			return errShortBody
		}
		for i := range wire.NumSensors {
			if r.Sensors[i] = wire.SensorState(d.b[1+i]); r.Sensors[i] > wire.SensorError {
				return errShortBody
			}
		}
		d.b = d.b[1+n:]
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d bytes after the last field", len(d.b))
	}
	return d.err
}

// UnmarshalReading decodes and checks a READINGS message, compact or JSON.
func UnmarshalReading(b []byte) (*Reading, error) {
	var r Reading
	var err error
	if len(b) > 0 && b[0] == readingBodyV1 {
		err = decodeReadingBody(b, &r)
	} else {
		err = json.Unmarshal(b, &r)
	}
	if err != nil {
		return nil, fmt.Errorf("bus: READINGS message: %w", err)
	}
	if !wire.ValidID(r.Device) {
		return nil, fmt.Errorf("bus: READINGS message: invalid device id %q", r.Device)
	}
	w := r.Values.Wire()
	if err := w.ValidateWith(&r.Sensors); err != nil {
		return nil, fmt.Errorf("bus: READINGS message: %w", err)
	}
	return &r, nil
}
