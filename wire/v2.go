package wire

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"sync"
)

// Protocol v2 (see PROTOCOL.md): binary, length-prefixed frames,
// AES-128-GCM over a binary payload with the header as associated data,
// nonces derived from the sequence number, and replies a device can verify.
// The wire format is version 3 (version 2, with random nonces, unverified
// ACKs and a JSON payload, was never in the field).
const (
	// V2Magic starts every v2 frame. It is not a hex digit, so the edge
	// tells v2 from legacy by a connection's first byte.
	V2Magic byte = 0xB2
	// V2Version is the wire format version carried in every frame.
	V2Version byte = 3

	V2Data    byte = 0x01 // device → edge: a sealed reading
	V2Ack     byte = 0x02 // pipeline → device: the frame is accepted (MAC under the device's ACK key)
	V2Error   byte = 0x03 // edge → device: about the connection or a frame, not authenticated
	V2Refused byte = 0x04 // pipeline → device: the frame is refused for good (MAC under the ACK key)

	v2Prefix = 5 // magic, version, type, 2-byte body length
	// V2TagLen is the GCM tag's length; a DATA frame ends with it.
	V2TagLen = 16
	// V2MACLen is the length of an ACK's or REFUSED's MAC.
	V2MACLen = 16
	// V2MaxBody is the largest body the length field can describe.
	V2MaxBody = math.MaxUint16
)

// Errors from the v2 codec.
var (
	ErrV2Malformed = errors.New("wire: malformed v2 frame")
	ErrV2Tampered  = errors.New("wire: v2 frame failed authentication")
)

// ERROR codes (unauthenticated, from the edge): a device never drops a
// buffered frame because of one.
const (
	V2ErrMalformed byte = 1 // the frame could not be parsed; the connection is closed
	V2ErrTooLarge  byte = 2 // the frame exceeds the edge's limit; the connection is closed
	V2ErrStore     byte = 3 // the edge could not store the frame; resend later
)

// REFUSED codes (authenticated by decrypt, bound to the frame's tag).
const (
	V2RefReplayed  byte = 16 // sequence number already used: drop the frame, start a new boot epoch
	V2RefInvalid   byte = 17 // the payload is not a valid reading: drop the frame
	V2RefRevoked   byte = 18 // the device's key is revoked: keep the frames, stop sending until reprovisioned
	V2RefTampered  byte = 19 // the frame arrived altered (its tag did not check): keep it, resend
	V2RefDowngrade byte = 20 // reserved: the device is pinned to another protocol
)

// Sequence numbers: a boot epoch, persisted once per boot by the device,
// in the high 32 bits, and a counter kept in RAM, from 1 at each boot, in
// the low 32 bits.

// V2Seq returns the sequence number of frame counter of boot epoch.
func V2Seq(epoch, counter uint32) uint64 { return uint64(epoch)<<32 | uint64(counter) }

// V2SeqEpoch returns the boot epoch of a sequence number.
func V2SeqEpoch(seq uint64) uint32 { return uint32(seq >> 32) }

// V2SeqCounter returns the in-boot counter of a sequence number.
func V2SeqCounter(seq uint64) uint32 { return uint32(seq) }

// V2Frame is a parsed v2 frame. Sealed and AAD alias the input.
type V2Frame struct {
	Type    byte
	Device  string // DATA
	Seq     uint64 // DATA, ACK, ERROR, REFUSED
	Sealed  []byte // DATA: ciphertext and tag
	AAD     []byte // DATA: the header bytes the tag covers
	MAC     [V2MACLen]byte
	Code    byte   // ERROR, REFUSED
	Message string // ERROR
}

// Tag returns a DATA frame's GCM tag (its last 16 bytes).
func (f *V2Frame) Tag() []byte {
	if f.Type != V2Data || len(f.Sealed) < V2TagLen {
		return nil
	}
	return f.Sealed[len(f.Sealed)-V2TagLen:]
}

// V2FrameLen returns the total length of the frame whose first bytes are
// prefix (at least 5), or an error when they cannot start a v2 frame.
func V2FrameLen(prefix []byte) (int, error) {
	if len(prefix) < v2Prefix {
		return 0, fmt.Errorf("%w: %d-byte prefix", ErrV2Malformed, len(prefix))
	}
	if prefix[0] != V2Magic {
		return 0, fmt.Errorf("%w: magic 0x%02x", ErrV2Malformed, prefix[0])
	}
	if prefix[1] != V2Version {
		return 0, fmt.Errorf("%w: version %d", ErrV2Malformed, prefix[1])
	}
	return v2Prefix + int(binary.BigEndian.Uint16(prefix[3:5])), nil
}

// ReadV2Frame reads one whole v2 frame of at most max bytes from r into buf.
// It returns io.EOF at a clean end between frames.
func ReadV2Frame(r io.Reader, buf []byte, max int) ([]byte, error) {
	buf = append(buf[:0], make([]byte, v2Prefix)...)
	if n, err := io.ReadFull(r, buf); err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("%w after %d bytes: %w", ErrTruncated, n, err)
	}
	n, err := V2FrameLen(buf)
	if err != nil {
		return nil, err
	}
	if n > max {
		return nil, fmt.Errorf("%w (%d bytes, limit %d)", ErrFrameTooLong, n, max)
	}
	if cap(buf) < n {
		nb := make([]byte, n)
		copy(nb, buf)
		buf = nb
	}
	buf = buf[:n]
	if m, err := io.ReadFull(r, buf[v2Prefix:]); err != nil {
		return nil, fmt.Errorf("%w after %d bytes: %w", ErrTruncated, v2Prefix+m, err)
	}
	return buf, nil
}

// ParseV2 parses a whole frame.
func ParseV2(frame []byte) (V2Frame, error) {
	n, err := V2FrameLen(frame)
	if err != nil {
		return V2Frame{}, err
	}
	if n != len(frame) {
		return V2Frame{}, fmt.Errorf("%w: length field says %d bytes, frame has %d", ErrV2Malformed, n, len(frame))
	}
	f := V2Frame{Type: frame[2]}
	body := frame[v2Prefix:]
	switch f.Type {
	case V2Data:
		if len(body) < 1 {
			return f, fmt.Errorf("%w: empty DATA body", ErrV2Malformed)
		}
		idLen := int(body[0])
		hdr := 1 + idLen + 8
		if len(body) < hdr+V2TagLen {
			return f, fmt.Errorf("%w: DATA body of %d bytes", ErrV2Malformed, len(body))
		}
		f.Device = string(body[1 : 1+idLen])
		if !ValidID(f.Device) {
			return f, fmt.Errorf("%w: device id %q", ErrV2Malformed, f.Device)
		}
		f.Seq = binary.BigEndian.Uint64(body[1+idLen:])
		f.AAD = frame[:v2Prefix+hdr]
		f.Sealed = body[hdr:]
	case V2Ack:
		if len(body) != 8+V2MACLen {
			return f, fmt.Errorf("%w: ACK body of %d bytes", ErrV2Malformed, len(body))
		}
		f.Seq = binary.BigEndian.Uint64(body)
		copy(f.MAC[:], body[8:])
	case V2Refused:
		if len(body) != 9+V2MACLen {
			return f, fmt.Errorf("%w: REFUSED body of %d bytes", ErrV2Malformed, len(body))
		}
		f.Seq = binary.BigEndian.Uint64(body)
		f.Code = body[8]
		copy(f.MAC[:], body[9:])
	case V2Error:
		if len(body) < 9 || len(body) > 9+maxErrorText {
			return f, fmt.Errorf("%w: ERROR body of %d bytes", ErrV2Malformed, len(body))
		}
		f.Seq = binary.BigEndian.Uint64(body)
		f.Code = body[8]
		f.Message = string(body[9:])
	default:
		return f, fmt.Errorf("%w: type 0x%02x", ErrV2Malformed, f.Type)
	}
	return f, nil
}

// maxErrorText bounds an ERROR frame's text.
const maxErrorText = 200

func appendV2Prefix(dst []byte, typ byte, bodyLen int) []byte {
	return append(dst, V2Magic, V2Version, typ, byte(bodyLen>>8), byte(bodyLen))
}

// AppendV2Error appends an (unauthenticated) ERROR frame for seq (0: the
// connection) with a short message (truncated to 200 bytes).
func AppendV2Error(dst []byte, seq uint64, code byte, msg string) []byte {
	msg = msg[:min(len(msg), maxErrorText)]
	dst = appendV2Prefix(dst, V2Error, 9+len(msg))
	dst = binary.BigEndian.AppendUint64(dst, seq)
	dst = append(dst, code)
	return append(dst, msg...)
}

// ReadV2Replies reads the pipeline's replies (ACK, REFUSED, ERROR) from a
// device's connection until it fails, calling reply for each in order. The
// frame passed is valid only during the call; verify ACK and REFUSED with
// V2Key.VerifyReply (or Outbox.Settle) before acting on them. It returns
// what ended it: io.EOF when the edge closed the connection cleanly,
// otherwise a read error or a frame no device should get. The simulator and
// the firmware both read their replies with it.
func ReadV2Replies(r io.Reader, reply func(f *V2Frame)) error {
	br := bufio.NewReaderSize(r, 256)
	var buf []byte
	for {
		raw, err := ReadV2Frame(br, buf, 1024)
		if err != nil {
			return err
		}
		buf = raw
		f, err := ParseV2(raw)
		if err != nil {
			return err
		}
		if f.Type == V2Data {
			return fmt.Errorf("%w: a DATA frame sent to a device", ErrV2Malformed)
		}
		reply(&f)
	}
}

// The HKDF (RFC 5869) parameters of v2's keys. The input keying material
// is the device's 32 bytes of keys-file secret (key ‖ IV), so one keys
// file serves both protocols; the salt is fixed by the protocol (RFC 5869
// §3.1: a non-secret constant still makes the extract step a proper
// randomness extractor); info names the purpose and the device, so that
// each device and each use gets independent keys.
const (
	v2Salt           = "medpipe v2 hkdf salt 2026"
	v2InfoAEAD       = "medpipe v2 aead"
	v2InfoACK        = "medpipe v2 ack"
	v2InfoNonce      = "medpipe v2 nonce"
	v2InfoGeneration = "medpipe v2 generation"
)

// V2KeyMaterial is what HKDF derives from a device's secret for v2.
type V2KeyMaterial struct {
	AEAD  [16]byte // AES-128-GCM key of DATA frames
	ACK   [32]byte // HMAC-SHA256 key of ACK and REFUSED frames
	Nonce [12]byte // XORed with the sequence number to make each frame's nonce
	// Generation names this key publicly (it reveals nothing of the
	// secret): the pipeline scopes a device's replay state by it, so a
	// rotated key starts clean.
	Generation [8]byte
}

// hkdfExtract is RFC 5869's HKDF-Extract with SHA-256.
func hkdfExtract(salt, ikm []byte) []byte {
	m := hmac.New(sha256.New, salt)
	m.Write(ikm)
	return m.Sum(nil)
}

// hkdfExpand is RFC 5869's HKDF-Expand with SHA-256 for out of at most 32
// bytes (one block: T(1) = HMAC(PRK, info ‖ 0x01)). It is written out with
// crypto/hmac rather than taken from crypto/hkdf so that TinyGo builds it
// for the firmware; a test checks it against crypto/hkdf.
func hkdfExpand(prk []byte, info string, id string, out []byte) {
	m := hmac.New(sha256.New, prk)
	m.Write([]byte(info))
	m.Write([]byte{0})
	m.Write([]byte(id))
	m.Write([]byte{1})
	copy(out, m.Sum(nil))
}

// v2Info is the HKDF info of purpose for device id: purpose ‖ 0x00 ‖ id.
func v2Info(purpose, id string) []byte {
	return append(append([]byte(purpose), 0), id...)
}

// DeriveV2Keys derives d's v2 keys: PRK = HKDF-Extract(salt, key ‖ IV),
// then one HKDF-Expand per purpose with info = purpose ‖ 0x00 ‖ device id.
func DeriveV2Keys(d Device) V2KeyMaterial {
	prk := hkdfExtract([]byte(v2Salt), append(d.Key[:], d.IV[:]...))
	var km V2KeyMaterial
	hkdfExpand(prk, v2InfoAEAD, d.ID, km.AEAD[:])
	hkdfExpand(prk, v2InfoACK, d.ID, km.ACK[:])
	hkdfExpand(prk, v2InfoNonce, d.ID, km.Nonce[:])
	hkdfExpand(prk, v2InfoGeneration, d.ID, km.Generation[:])
	return km
}

// V2Key is a device's v2 key set. It is safe for concurrent use.
type V2Key struct {
	id    string
	aead  cipher.AEAD
	ack   [32]byte
	nonce [12]byte
	gen   string
	// mac is the HMAC of the ACK key, kept and Reset between replies
	// rather than made anew for each: hmac.New hashes the key's pads and
	// allocates two SHA-256 states every time, while Reset restores the
	// pads' saved state. macMu serialises its users (one partition owner
	// makes a device's replies, so it is uncontended in decrypt).
	macMu sync.Mutex
	mac   hash.Hash
}

// NewV2Key prepares d's v2 keys.
func NewV2Key(d Device) *V2Key {
	km := DeriveV2Keys(d)
	b, err := aes.NewCipher(km.AEAD[:])
	if err != nil {
		panic(err) // a 16-byte key cannot fail
	}
	aead, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	k := &V2Key{id: d.ID, aead: aead, ack: km.ACK, nonce: km.Nonce, gen: hex.EncodeToString(km.Generation[:])}
	k.mac = hmac.New(sha256.New, k.ack[:])
	return k
}

// Generation is the key's public name (16 hex digits).
func (k *V2Key) Generation() string { return k.gen }

// Nonce returns the nonce of frame seq: the key's nonce base XORed with
// the sequence number in its last 8 bytes, as TLS 1.3 does (RFC 8446
// §5.3). It is unique for as long as sequence numbers are, with no RNG.
func (k *V2Key) Nonce(seq uint64) [12]byte {
	n := k.nonce
	s := binary.BigEndian.Uint64(n[4:])
	binary.BigEndian.PutUint64(n[4:], s^seq)
	return n
}

// SealData appends a DATA frame carrying payload for the key's device with
// sequence number seq, which must never repeat for the key (see PROTOCOL.md:
// boot epoch and counter).
func (k *V2Key) SealData(dst []byte, seq uint64, payload []byte) ([]byte, error) {
	id := k.id
	if !ValidID(id) {
		return dst, fmt.Errorf("wire: device id %q", id)
	}
	body := 1 + len(id) + 8 + len(payload) + V2TagLen
	if body > V2MaxBody {
		return dst, fmt.Errorf("%w: payload of %d bytes", ErrFrameTooLong, len(payload))
	}
	start := len(dst)
	dst = appendV2Prefix(dst, V2Data, body)
	dst = append(dst, byte(len(id)))
	dst = append(dst, id...)
	dst = binary.BigEndian.AppendUint64(dst, seq)
	aad := dst[start:]
	nonce := k.Nonce(seq)
	return k.aead.Seal(dst, nonce[:], payload, aad), nil
}

// Open authenticates and decrypts a DATA frame's payload, appending it to
// buf. The tag check is the AEAD's own, in constant time.
func (k *V2Key) Open(buf []byte, f *V2Frame) ([]byte, error) {
	if f.Type != V2Data {
		return nil, fmt.Errorf("%w: not a DATA frame", ErrV2Malformed)
	}
	nonce := k.Nonce(f.Seq)
	out, err := k.aead.Open(buf, nonce[:], f.Sealed, f.AAD)
	if err != nil {
		return nil, ErrV2Tampered
	}
	return out, nil
}

// replyMAC is the MAC of a reply: HMAC-SHA256(ACK key, type ‖ seq ‖ code ‖
// tag of the DATA frame replied to), first 16 bytes.
func (k *V2Key) replyMAC(typ byte, seq uint64, code byte, tag []byte) [V2MACLen]byte {
	var b [10]byte
	b[0] = typ
	binary.BigEndian.PutUint64(b[1:], seq)
	b[9] = code
	var sum [sha256.Size]byte
	k.macMu.Lock()
	k.mac.Reset()
	k.mac.Write(b[:])
	k.mac.Write(tag)
	k.mac.Sum(sum[:0])
	k.macMu.Unlock()
	var out [V2MACLen]byte
	copy(out[:], sum[:])
	return out
}

// AppendAck appends an ACK of the DATA frame seq whose tag is tag.
func (k *V2Key) AppendAck(dst []byte, seq uint64, tag []byte) []byte {
	dst = appendV2Prefix(dst, V2Ack, 8+V2MACLen)
	dst = binary.BigEndian.AppendUint64(dst, seq)
	mac := k.replyMAC(V2Ack, seq, 0, tag)
	return append(dst, mac[:]...)
}

// AppendRefused appends a REFUSED reply with code for the DATA frame seq
// whose tag is tag.
func (k *V2Key) AppendRefused(dst []byte, seq uint64, code byte, tag []byte) []byte {
	dst = appendV2Prefix(dst, V2Refused, 9+V2MACLen)
	dst = binary.BigEndian.AppendUint64(dst, seq)
	dst = append(dst, code)
	mac := k.replyMAC(V2Refused, seq, code, tag)
	return append(dst, mac[:]...)
}

// VerifyReply reports whether an ACK or REFUSED reply f was made by the
// pipeline for exactly the DATA frame data (the frame the device sent, as
// it keeps it for resending). It compares in constant time.
func (k *V2Key) VerifyReply(f *V2Frame, data []byte) bool {
	if (f.Type != V2Ack && f.Type != V2Refused) || len(data) < v2Prefix+V2TagLen {
		return false
	}
	d, err := ParseV2(data)
	if err != nil || d.Type != V2Data || d.Seq != f.Seq || d.Device != k.id {
		return false
	}
	code := byte(0)
	if f.Type == V2Refused {
		code = f.Code
	}
	want := k.replyMAC(f.Type, f.Seq, code, d.Tag())
	return hmac.Equal(want[:], f.MAC[:])
}

// V2Payload is the plaintext of a DATA frame.
type V2Payload struct {
	// Time is the device's clock when it took the reading, Unix milliseconds.
	Time int64
	// Values are the reading's values, as the field table defines them.
	// A value whose sensor is not SensorOK travels as 0 and is absent.
	Values V2Values
	// Sensors are the states of the sensors behind the values.
	Sensors SensorStates
	// Pulse optionally carries pulse/ECG samples taken since the previous frame.
	Pulse *PulseCodes
}

// V2Values are the seven values of a reading as numbers. It is the shape
// READINGS carries (bus.Numbers); the v2 codec goes through Array and
// ValuesOf, in field-table order.
type V2Values struct {
	Temp     float64 `json:"Temp"`
	TempMcu  float64 `json:"TempMcu"`
	PulseSig float64 `json:"PulseSig"`
	AcelX    float64 `json:"Acel_x"`
	AcelY    float64 `json:"Acel_y"`
	AcelZ    float64 `json:"Acel_z"`
	TempMpu  float64 `json:"TempMpu"`
}

// Fields are v's values indexed by Field, for code that ranges over them
// (bus's codec). A test holds each to its row of the field table, and
// Array and ValuesOf to Fields: they spell the fields out because the
// firmware uses them, where a loop over pointers costs flash.
func (v *V2Values) Fields() [NumFields]*float64 {
	return [...]*float64{&v.Temp, &v.TempMcu, &v.PulseSig, &v.AcelX, &v.AcelY, &v.AcelZ, &v.TempMpu}
}

// Array returns the values indexed by Field.
func (v V2Values) Array() [NumFields]float64 {
	return [NumFields]float64{v.Temp, v.TempMcu, v.PulseSig, v.AcelX, v.AcelY, v.AcelZ, v.TempMpu}
}

// ValuesOf returns the values indexed by Field as V2Values.
func ValuesOf(a [NumFields]float64) V2Values {
	return V2Values{a[Temp], a[TempMcu], a[PulseSig], a[AcelX], a[AcelY], a[AcelZ], a[TempMpu]}
}

// Pulse samples travel as the ADC's 12-bit codes.
const (
	// PulseADCBits is the resolution of the pulse sensor's ADC (RP2040: 12).
	PulseADCBits = 12
	// PulseMaxCode is the largest pulse code.
	PulseMaxCode = 1<<PulseADCBits - 1
	// PulseVoltsPerCode converts a pulse code to volts: the ADC's 3.3 V
	// reference over 4,096 codes.
	PulseVoltsPerCode = 3.3 / 4096
	// MaxPulseRate bounds a batch's sample rate (samples per second).
	MaxPulseRate = 10000
	// MaxPulseSamples bounds a batch's samples.
	MaxPulseSamples = 10000
)

// MaxPulseSeconds bounds the pulse samples a device puts in one frame: 4 s
// at 250 Hz is 1,000 samples, 1,500 bytes packed, so a frame stays far under
// the edge's 8 KB limit however rarely the device sends (a frame over it is
// refused, and a device that resends it would do so for ever).
const MaxPulseSeconds = 4

// PulseCodes is a run of evenly spaced pulse samples as ADC codes.
type PulseCodes struct {
	Rate  uint16   // samples per second
	Start int64    // device time of the first sample, Unix ms
	Codes []uint16 // 12-bit ADC codes
}

// PulseCode converts volts to the nearest ADC code, clamped to the ADC's range.
func PulseCode(volts float64) uint16 {
	c := math.Round(volts / PulseVoltsPerCode)
	switch {
	case !(c > 0): // NaN too
		return 0
	case c > PulseMaxCode:
		return PulseMaxCode
	}
	return uint16(c)
}

// PulseVolts converts an ADC code to volts, rounded to 0.1 mV (the ADC
// resolves 0.8 mV) so that READINGS carries short numbers.
func PulseVolts(code uint16) float64 {
	return math.Round(float64(code)*PulseVoltsPerCode*1e4) / 1e4
}

// Batch returns the samples in volts, as READINGS carries them.
func (p *PulseCodes) Batch() *PulseBatch {
	b := &PulseBatch{Rate: float64(p.Rate), Start: p.Start, Samples: make([]float64, len(p.Codes))}
	for i, c := range p.Codes {
		b.Samples[i] = PulseVolts(c)
	}
	return b
}

// PulseBatch is a run of evenly spaced pulse samples in volts: how READINGS
// carries them.
type PulseBatch struct {
	Rate    float64   `json:"rate"`    // samples per second
	Start   int64     `json:"start"`   // device time of the first sample, Unix ms
	Samples []float64 `json:"samples"` // volts
}

// The v2 payload's fixed part: time (8), value count (1), then 4 bytes per
// value, the sensor count (1) and packed states, and a 2-byte pulse sample count.
const v2PayloadFixed = 8 + 1 + 1 + 2

// ErrV2Payload marks a DATA payload that is not a valid reading.
var ErrV2Payload = errors.New("wire: v2 payload")

// AppendV2Payload appends p in the binary payload format (PROTOCOL.md).
// A value that does not fit its fixed-point field (or is not finite) is an
// error, as is a pulse batch beyond the protocol's bounds.
func AppendV2Payload(dst []byte, p *V2Payload) ([]byte, error) {
	dst = binary.BigEndian.AppendUint64(dst, uint64(p.Time))
	dst = append(dst, byte(NumFields))
	for f, v := range p.Values.Array() {
		if p.Sensors.Absent(Field(f)) {
			// Not a measurement: a placeholder 0, whatever the caller held.
			v = 0
		}
		x := math.Round(v * Fields[f].Scale)
		if !(x >= math.MinInt32 && x <= math.MaxInt32) {
			return dst, fmt.Errorf("%w: %s = %v does not fit its fixed-point field", ErrV2Payload, Fields[f].Name, v)
		}
		dst = binary.BigEndian.AppendUint32(dst, uint32(int32(x)))
	}
	dst = appendSensorStates(dst, &p.Sensors)
	if p.Pulse == nil || len(p.Pulse.Codes) == 0 {
		return binary.BigEndian.AppendUint16(dst, 0), nil
	}
	pc := p.Pulse
	if len(pc.Codes) > MaxPulseSamples || pc.Rate == 0 || pc.Rate > MaxPulseRate {
		return dst, fmt.Errorf("%w: pulse batch of %d samples at %d/s", ErrV2Payload, len(pc.Codes), pc.Rate)
	}
	off := pc.Start - p.Time
	if off < math.MinInt32 || off > math.MaxInt32 {
		return dst, fmt.Errorf("%w: pulse batch starts %d ms from the reading", ErrV2Payload, off)
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(pc.Codes)))
	dst = binary.BigEndian.AppendUint16(dst, pc.Rate)
	dst = binary.BigEndian.AppendUint32(dst, uint32(int32(off)))
	return appendCodes(dst, pc.Codes), nil
}

// appendSensorStates writes the sensor count, then the states two bits
// each, the first sensor in the top bits of the first byte, unused bits 0.
func appendSensorStates(dst []byte, s *SensorStates) []byte {
	dst = append(dst, byte(NumSensors))
	var b byte
	for i, st := range s {
		b |= byte(st&3) << (6 - 2*(i%4))
		if i%4 == 3 || i == len(s)-1 {
			dst = append(dst, b)
			b = 0
		}
	}
	return dst
}

// appendCodes packs 12-bit codes two to three bytes, most significant
// first: a = b0<<4 | b1>>4, b = (b1&0x0f)<<8 | b2; an odd last code takes
// two bytes, its low nibble zero.
func appendCodes(dst []byte, codes []uint16) []byte {
	i := 0
	for ; i+1 < len(codes); i += 2 {
		a, b := codes[i]&PulseMaxCode, codes[i+1]&PulseMaxCode
		dst = append(dst, byte(a>>4), byte(a<<4)|byte(b>>8), byte(b))
	}
	if i < len(codes) {
		a := codes[i] & PulseMaxCode
		dst = append(dst, byte(a>>4), byte(a<<4))
	}
	return dst
}

// packedLen is the size of n packed codes.
func packedLen(n int) int { return (n*PulseADCBits + 7) / 8 }

// ParseV2Payload decodes and validates a DATA payload. It needs every
// value of the field table (more are ignored: a newer device), and
// nothing may follow the pulse samples.
func ParseV2Payload(b []byte) (V2Payload, error) {
	var p V2Payload
	if len(b) < v2PayloadFixed {
		return p, fmt.Errorf("%w: %d bytes", ErrV2Payload, len(b))
	}
	p.Time = int64(binary.BigEndian.Uint64(b))
	n := int(b[8])
	if n < int(NumFields) {
		return p, fmt.Errorf("%w: %w: %d values, want %d", ErrV2Payload, ErrMissingField, n, NumFields)
	}
	i := 9
	if len(b) < i+4*n+1 {
		return p, fmt.Errorf("%w: %d bytes for %d values", ErrV2Payload, len(b), n)
	}
	i += 4 * n
	ns := int(b[i])
	if ns < int(NumSensors) {
		return p, fmt.Errorf("%w: %w: %d sensor states, want %d", ErrV2Payload, ErrMissingField, ns, NumSensors)
	}
	sb := sensorStateBytes(ns)
	if len(b) < i+1+sb+2 {
		return p, fmt.Errorf("%w: %d bytes for %d values and %d sensor states", ErrV2Payload, len(b), n, ns)
	}
	for k := range ns {
		st := SensorState(b[i+1+k/4] >> (6 - 2*(k%4)) & 3)
		if k < int(NumSensors) {
			p.Sensors[k] = st
		}
	}
	if pad := (4 - ns%4) % 4; pad > 0 && b[i+sb]&(1<<(2*pad)-1) != 0 {
		return p, fmt.Errorf("%w: sensor state padding is not zero", ErrV2Payload)
	}
	var vals [NumFields]float64
	for f := range NumFields {
		x := int32(binary.BigEndian.Uint32(b[9+4*int(f):]))
		if p.Sensors.Absent(f) {
			if x != 0 {
				return p, fmt.Errorf("%w: %s is absent (%s sensor %s) but not 0", ErrV2Payload, f.Name(), Fields[f].Sensor, p.Sensors.Of(f))
			}
			continue
		}
		vals[f] = float64(x) / Fields[f].Scale
	}
	p.Values = ValuesOf(vals)
	i += 1 + sb
	count := int(binary.BigEndian.Uint16(b[i:]))
	i += 2
	if count == 0 {
		if i != len(b) {
			return p, fmt.Errorf("%w: %d bytes after the values", ErrV2Payload, len(b)-i)
		}
		return p, nil
	}
	if len(b) < i+6 {
		return p, fmt.Errorf("%w: pulse batch header cut short", ErrV2Payload)
	}
	rate := binary.BigEndian.Uint16(b[i:])
	off := int32(binary.BigEndian.Uint32(b[i+2:]))
	i += 6
	if rate == 0 || rate > MaxPulseRate || count > MaxPulseSamples {
		return p, fmt.Errorf("%w: pulse batch of %d samples at %d/s", ErrV2Payload, count, rate)
	}
	if len(b)-i != packedLen(count) {
		return p, fmt.Errorf("%w: %d bytes for %d pulse samples, want %d", ErrV2Payload, len(b)-i, count, packedLen(count))
	}
	codes := make([]uint16, count)
	for j := 0; j < count; j += 2 {
		c := b[i:]
		codes[j] = uint16(c[0])<<4 | uint16(c[1])>>4
		if j+1 == count {
			if c[1]&0x0f != 0 {
				return p, fmt.Errorf("%w: pulse padding is not zero", ErrV2Payload)
			}
			break
		}
		codes[j+1] = uint16(c[1]&0x0f)<<8 | uint16(c[2])
		i += 3
	}
	p.Pulse = &PulseCodes{Rate: rate, Start: p.Time + int64(off), Codes: codes}
	return p, nil
}

// Reading formats the values as legacy devices do (the field table's
// Format), which dashboards expect.
func (v V2Values) Reading() Reading {
	var r Reading
	for f, x := range v.Array() {
		r[f] = Field(f).Format(x)
	}
	return r
}

// Reading formats the values as legacy devices do, and an absent value
// (its sensor not SensorOK) as "": never a placeholder 0 that reads like
// a measurement.
func (p *V2Payload) Reading() Reading {
	r := p.Values.Reading()
	for f := range NumFields {
		if p.Sensors.Absent(f) {
			r[f] = ""
		}
	}
	return r
}

// FormatValue writes a value as the Pico firmware does: three decimals, but
// two for negative numbers (Field.Format of a three-decimal field).
func FormatValue(v float64) string { return Temp.Format(v) }

// Numbers returns a validated reading's values as numbers.
func (r *Reading) Numbers() V2Values {
	var a [NumFields]float64
	for f := range NumFields {
		a[f] = r.Float(f)
	}
	return ValuesOf(a)
}
