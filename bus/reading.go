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
	// Conn and FrameSeq name the frame: the edge's connection and the
	// frame's number in it, unique across edges and restarts.
	Conn     string `json:"conn"`
	FrameSeq uint64 `json:"frame_seq"`
	// RawSeq is the RAW stream sequence of the message that held the
	// frame; the frames an edge stored in one batch share it.
	RawSeq uint64 `json:"raw_seq"`
	Remote string `json:"remote"`
	Local  string `json:"local"`
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

// readingBodyV1, V2 and V3 start a compact READINGS body. A JSON body
// starts with '{', so UnmarshalReading tells them apart by the first byte.
// V1 carried a pulse batch as its JSON; V2 carries it in binary: decoding
// 250 samples' JSON was most of publish's cost per v2 reading at 1
// reading/s a device, and encoding it a good part of decrypt's. V3, written
// now, stores samples that came from the device's ADC codes as those codes,
// 2 bytes a sample instead of 8: a v2 reading's pulse batch is most of
// READINGS' bytes, on disk and on every copy between server and stages.
// V1 and V2 bodies still decode.
const (
	readingBodyV1 = 0xB1
	readingBodyV2 = 0xB2
	readingBodyV3 = 0xB3
)

// How a V3 body's pulse samples are written.
const (
	pulseSamplesFloat = 0 // IEEE 754 bits, 8 bytes a sample
	pulseSamplesCode  = 1 // wire.PulseVolts codes, 2 bytes a sample
)

// AppendReading appends r's compact READINGS body to dst: a version byte,
// then every field in the order of Reading, strings length-prefixed,
// integers and times (Unix ns, UTC) as varints, numbers as IEEE 754 bits,
// and a v2 pulse batch as its sample count (see appendPulse), rate, start
// and samples (as ADC codes where every sample is one). Against JSON it is less than half the
// bytes and an order of magnitude less CPU each way (BenchmarkReadingCodec),
// paid once per reading by decrypt and once by publish.
func AppendReading(dst []byte, r *Reading) ([]byte, error) {
	return appendReading(dst, r, readingBodyV3)
}

// AppendReadingV2 appends r's body as version 0xB2, which publish processes
// before 0xB3 read too: pulse samples always as 8-byte floats. decrypt
// writes it for READINGS messages of one reading, which such a publish may
// still be reading during an upgrade; batches (AppendReadingBatch), which
// only newer publish processes read, carry 0xB3.
func AppendReadingV2(dst []byte, r *Reading) ([]byte, error) {
	return appendReading(dst, r, readingBodyV2)
}

func appendReading(dst []byte, r *Reading, version byte) ([]byte, error) {
	dst = append(dst, version)
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
	dst = appendPulse(dst, r.Pulse, version)
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

// appendPulse writes a pulse batch (V3): 0 for none, 1 for one without
// samples (nil), else 2 + the sample count; then the rate's bits, the start
// as a varint and, when there are samples, how they are written
// (pulseSamplesCode where every one is an ADC code's value, else
// pulseSamplesFloat) and the samples: exactly what the device's payload gave.
func appendPulse(dst []byte, p *wire.PulseBatch, version byte) []byte {
	switch {
	case p == nil:
		return append(dst, 0)
	case p.Samples == nil:
		dst = append(dst, 1)
	default:
		dst = binary.AppendUvarint(dst, uint64(len(p.Samples))+2)
	}
	dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(p.Rate))
	dst = binary.AppendVarint(dst, p.Start)
	if p.Samples == nil {
		return dst
	}
	if version < readingBodyV3 { // V2: the samples' bits, no encoding byte
		for _, v := range p.Samples {
			dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(v))
		}
		return dst
	}
	mark := len(dst)
	dst = append(dst, pulseSamplesCode)
	for _, v := range p.Samples {
		c, ok := pulseCodeOf(v)
		if !ok {
			dst = append(dst[:mark], pulseSamplesFloat)
			for _, v := range p.Samples {
				dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(v))
			}
			return dst
		}
		dst = binary.LittleEndian.AppendUint16(dst, c)
	}
	return dst
}

// pulse reads what appendPulse wrote, or its V2 form (samples always as
// IEEE 754 bits, no encoding byte).
func (d *bodyReader) pulse(version byte) *wire.PulseBatch {
	n := d.uvarint()
	if n == 0 || d.err != nil {
		return nil
	}
	p := &wire.PulseBatch{Rate: d.float()}
	v, k := binary.Varint(d.b)
	if k <= 0 {
		d.err, d.b = errShortBody, nil
		return nil
	}
	d.b = d.b[k:]
	p.Start = v
	if n == 1 {
		return p
	}
	enc := byte(pulseSamplesFloat)
	if version >= readingBodyV3 {
		if len(d.b) == 0 {
			d.err = errShortBody
			return nil
		}
		enc, d.b = d.b[0], d.b[1:]
	}
	size := uint64(8)
	switch enc {
	case pulseSamplesFloat:
	case pulseSamplesCode:
		size = 2
	default:
		d.err, d.b = fmt.Errorf("%w: unknown pulse sample encoding %d", errShortBody, enc), nil
		return nil
	}
	if n-2 > uint64(len(d.b))/size { // checked before allocating
		d.err, d.b = errShortBody, nil
		return nil
	}
	p.Samples = make([]float64, n-2)
	if enc == pulseSamplesFloat {
		for i := range p.Samples {
			p.Samples[i] = math.Float64frombits(binary.LittleEndian.Uint64(d.b[8*i:]))
		}
	} else {
		for i := range p.Samples {
			c := binary.LittleEndian.Uint16(d.b[2*i:])
			if c > wire.PulseMaxCode {
				d.err, d.b = fmt.Errorf("%w: pulse code %d over the ADC's %d", errShortBody, c, wire.PulseMaxCode), nil
				return nil
			}
			p.Samples[i] = pulseVolts[c]
		}
	}
	d.b = d.b[int(size)*len(p.Samples):]
	return p
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
	if b[0] >= readingBodyV2 {
		r.Pulse = d.pulse(b[0])
	} else if pulse := d.bytes(); len(pulse) > 0 && d.err == nil {
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
	if len(b) > 0 && b[0] >= readingBodyV1 && b[0] <= readingBodyV3 {
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

// pulseVolts is wire.PulseVolts of every code: the conversion runs for
// every sample of every batch read. Here, not in wire, which the firmware
// links: 32 KB of RAM a device does not need.
var pulseVolts = func() (t [wire.PulseMaxCode + 1]float64) {
	for c := range t {
		t[c] = wire.PulseVolts(uint16(c))
	}
	return t
}()

// pulseCodeOf returns the code whose wire.PulseVolts is v, bit for bit,
// and whether there is one: a sample that came from a code goes back to it
// exactly, so it can be stored in 2 bytes instead of 8.
func pulseCodeOf(v float64) (uint16, bool) {
	// The nearest code by a multiplication, not wire.PulseCode's division
	// and rounding: this runs for every sample stored, and the bit
	// comparison below decides anyway.
	x := v*(1/wire.PulseVoltsPerCode) + 0.5
	if !(x >= 0 && x < wire.PulseMaxCode+1) { // NaN too
		return 0, false
	}
	c := uint16(x)
	return c, math.Float64bits(pulseVolts[c]) == math.Float64bits(v)
}
