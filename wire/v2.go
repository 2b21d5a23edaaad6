package wire

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
)

// Protocol v2 (see PROTOCOL.md): binary, length-prefixed frames,
// AES-128-GCM over the payload with the header as associated data.
const (
	// V2Magic starts every v2 frame. It is not a hex digit, so the edge
	// tells v2 from legacy by a connection's first byte.
	V2Magic byte = 0xB2
	// V2Version is the protocol version carried in every frame.
	V2Version byte = 2

	V2Data  byte = 0x01 // device → edge: a sealed reading
	V2Ack   byte = 0x02 // edge → device: frame seq is stored
	V2Error byte = 0x03 // edge → device: frame seq (or the connection) is refused

	v2Prefix   = 5  // magic, version, type, 2-byte body length
	v2NonceLen = 12 // 96-bit GCM nonce
	v2TagLen   = 16
	// V2MaxBody is the largest body the length field can describe.
	V2MaxBody = math.MaxUint16
)

// Errors from the v2 codec.
var (
	ErrV2Malformed = errors.New("wire: malformed v2 frame")
	ErrV2Tampered  = errors.New("wire: v2 frame failed authentication")
)

// V2 error codes carried by an ERROR frame.
const (
	V2ErrMalformed byte = 1 // the frame could not be parsed; the connection is closed
	V2ErrTooLarge  byte = 2 // the frame exceeds the edge's limit; the connection is closed
	V2ErrStore     byte = 3 // the edge could not store the frame; resend later
)

// V2Frame is a parsed v2 frame. Sealed and AAD alias the input.
type V2Frame struct {
	Type    byte
	Device  string // DATA
	Seq     uint64 // DATA, ACK, ERROR
	Nonce   [v2NonceLen]byte
	Sealed  []byte // DATA: ciphertext and tag
	AAD     []byte // DATA: the header bytes the tag covers
	Code    byte   // ERROR
	Message string // ERROR
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
		hdr := 1 + idLen + 8 + v2NonceLen
		if len(body) < hdr+v2TagLen {
			return f, fmt.Errorf("%w: DATA body of %d bytes", ErrV2Malformed, len(body))
		}
		f.Device = string(body[1 : 1+idLen])
		if !ValidID(f.Device) {
			return f, fmt.Errorf("%w: device id %q", ErrV2Malformed, f.Device)
		}
		f.Seq = binary.BigEndian.Uint64(body[1+idLen:])
		copy(f.Nonce[:], body[1+idLen+8:])
		f.AAD = frame[:v2Prefix+hdr]
		f.Sealed = body[hdr:]
	case V2Ack:
		if len(body) != 8 {
			return f, fmt.Errorf("%w: ACK body of %d bytes", ErrV2Malformed, len(body))
		}
		f.Seq = binary.BigEndian.Uint64(body)
	case V2Error:
		if len(body) < 9 {
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

func appendV2Prefix(dst []byte, typ byte, bodyLen int) []byte {
	return append(dst, V2Magic, V2Version, typ, byte(bodyLen>>8), byte(bodyLen))
}

// AppendV2Ack appends an ACK frame for seq.
func AppendV2Ack(dst []byte, seq uint64) []byte {
	dst = appendV2Prefix(dst, V2Ack, 8)
	return binary.BigEndian.AppendUint64(dst, seq)
}

// AppendV2Error appends an ERROR frame for seq (0: the connection) with a
// short message (truncated to 200 bytes).
func AppendV2Error(dst []byte, seq uint64, code byte, msg string) []byte {
	msg = msg[:min(len(msg), 200)]
	dst = appendV2Prefix(dst, V2Error, 9+len(msg))
	dst = binary.BigEndian.AppendUint64(dst, seq)
	dst = append(dst, code)
	return append(dst, msg...)
}

// ReadV2Replies reads the edge's ACK and ERROR frames from a device's
// connection until it fails, calling ack and refused (which may be nil) for
// each in order. It returns what ended it: io.EOF when the edge closed the
// connection cleanly, otherwise a read error or a frame no device should get.
// The simulator and the firmware both read their replies with it.
func ReadV2Replies(r io.Reader, ack func(seq uint64), refused func(seq uint64, code byte)) error {
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
		switch f.Type {
		case V2Ack:
			ack(f.Seq)
		case V2Error:
			if refused != nil {
				refused(f.Seq, f.Code)
			}
		}
	}
}

// V2Key is a device's AES-128-GCM key for protocol v2, derived from its
// keys-file secret so that one keys file serves both protocols. It is safe
// for concurrent use.
type V2Key struct {
	aead cipher.AEAD
}

// v2KeyInfo separates the v2 key from any other use of the device secret.
const v2KeyInfo = "medpipe v2 aead"

// DeriveV2Key returns the 16-byte AEAD key of d: HKDF-Expand-SHA256 with the
// 32-byte key‖IV as pseudorandom key, info "medpipe v2 aead", length 16,
// i.e. the first 16 bytes of HMAC-SHA256(key‖IV, info‖0x01).
func DeriveV2Key(d Device) [16]byte {
	m := hmac.New(sha256.New, append(d.Key[:], d.IV[:]...))
	m.Write([]byte(v2KeyInfo))
	m.Write([]byte{1})
	var k [16]byte
	copy(k[:], m.Sum(nil))
	return k
}

// NewV2Key prepares d's v2 key.
func NewV2Key(d Device) *V2Key {
	k := DeriveV2Key(d)
	b, err := aes.NewCipher(k[:])
	if err != nil {
		panic(err) // a 16-byte key cannot fail
	}
	aead, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return &V2Key{aead: aead}
}

// SealData appends a DATA frame carrying payload for device id with
// sequence number seq and nonce, which must never repeat for a key (draw it
// from a CSPRNG).
func (k *V2Key) SealData(dst []byte, id string, seq uint64, nonce [12]byte, payload []byte) ([]byte, error) {
	if !ValidID(id) {
		return dst, fmt.Errorf("wire: device id %q", id)
	}
	body := 1 + len(id) + 8 + v2NonceLen + len(payload) + v2TagLen
	if body > V2MaxBody {
		return dst, fmt.Errorf("%w: payload of %d bytes", ErrFrameTooLong, len(payload))
	}
	start := len(dst)
	dst = appendV2Prefix(dst, V2Data, body)
	dst = append(dst, byte(len(id)))
	dst = append(dst, id...)
	dst = binary.BigEndian.AppendUint64(dst, seq)
	dst = append(dst, nonce[:]...)
	aad := dst[start:]
	return k.aead.Seal(dst, nonce[:], payload, aad), nil
}

// Open authenticates and decrypts a DATA frame's payload, appending it to
// buf. The tag check is the AEAD's own, in constant time.
func (k *V2Key) Open(buf []byte, f *V2Frame) ([]byte, error) {
	if f.Type != V2Data {
		return nil, fmt.Errorf("%w: not a DATA frame", ErrV2Malformed)
	}
	out, err := k.aead.Open(buf, f.Nonce[:], f.Sealed, f.AAD)
	if err != nil {
		return nil, ErrV2Tampered
	}
	return out, nil
}

// V2Payload is the plaintext of a DATA frame.
type V2Payload struct {
	// Time is the device's clock when it took the reading, Unix milliseconds.
	Time int64 `json:"time"`
	// Values are the seven values as numbers, keyed like legacy readings.
	Values V2Values `json:"values"`
	// Pulse optionally carries pulse/ECG samples taken since the previous frame.
	Pulse *PulseBatch `json:"pulse,omitempty"`
}

// V2Values are the seven values of a v2 reading.
type V2Values struct {
	Temp     float64 `json:"Temp"`
	TempMcu  float64 `json:"TempMcu"`
	PulseSig float64 `json:"PulseSig"`
	AcelX    float64 `json:"Acel_x"`
	AcelY    float64 `json:"Acel_y"`
	AcelZ    float64 `json:"Acel_z"`
	TempMpu  float64 `json:"TempMpu"`
}

// MaxPulseSeconds bounds the pulse samples a device puts in one frame: 4 s
// at 250 Hz is 1,000 samples, about 6 KB of JSON, so the frame stays under
// the edge's 8 KB limit however rarely the device sends (a frame over it is
// refused, and a device that resends it would do so for ever).
const MaxPulseSeconds = 4

// PulseBatch is a run of evenly spaced pulse samples.
type PulseBatch struct {
	Rate    float64   `json:"rate"`    // samples per second
	Start   int64     `json:"start"`   // device time of the first sample, Unix ms
	Samples []float64 `json:"samples"` // volts
}

// ParseV2Payload decodes and validates a DATA payload.
func ParseV2Payload(b []byte) (V2Payload, error) {
	var p V2Payload
	// Pointers tell a missing value from a zero; a struct decodes faster than a map.
	var raw struct {
		Time   *int64 `json:"time"`
		Values struct {
			Temp     *float64 `json:"Temp"`
			TempMcu  *float64 `json:"TempMcu"`
			PulseSig *float64 `json:"PulseSig"`
			AcelX    *float64 `json:"Acel_x"`
			AcelY    *float64 `json:"Acel_y"`
			AcelZ    *float64 `json:"Acel_z"`
			TempMpu  *float64 `json:"TempMpu"`
		} `json:"values"`
		Pulse *PulseBatch `json:"pulse"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return p, fmt.Errorf("%w: %w", ErrBadJSON, err)
	}
	if raw.Time == nil {
		return p, fmt.Errorf("%w: time", ErrMissingField)
	}
	p.Time = *raw.Time
	rv := &raw.Values
	var vals [NumFields]float64
	for f, v := range [NumFields]*float64{rv.Temp, rv.TempMcu, rv.PulseSig, rv.AcelX, rv.AcelY, rv.AcelZ, rv.TempMpu} {
		if v == nil {
			return p, fmt.Errorf("%w: %s", ErrMissingField, Field(f).Name())
		}
		vals[f] = *v
	}
	p.Values = V2Values{vals[Temp], vals[TempMcu], vals[PulseSig], vals[AcelX], vals[AcelY], vals[AcelZ], vals[TempMpu]}
	if raw.Pulse != nil {
		if !(raw.Pulse.Rate > 0 && raw.Pulse.Rate <= 10000) || len(raw.Pulse.Samples) > 10000 {
			return p, fmt.Errorf("%w: pulse batch rate %v with %d samples", ErrBadValue, raw.Pulse.Rate, len(raw.Pulse.Samples))
		}
		p.Pulse = raw.Pulse
	}
	return p, nil
}

// Reading formats the values as legacy devices do: three decimals, two for
// negative numbers.
func (v V2Values) Reading() Reading {
	return Reading{FormatValue(v.Temp), FormatValue(v.TempMcu), FormatValue(v.PulseSig), FormatValue(v.AcelX), FormatValue(v.AcelY), FormatValue(v.AcelZ), FormatValue(v.TempMpu)}
}

// FormatValue writes a value as the Pico firmware does: three decimals, but
// two for negative numbers.
func FormatValue(v float64) string {
	if v < 0 {
		if s := strconv.FormatFloat(v, 'f', 2, 64); s != "-0.00" {
			return s
		}
		return "0.000"
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

// Numbers returns a validated reading's values as numbers.
func (r *Reading) Numbers() V2Values {
	return V2Values{r.Float(Temp), r.Float(TempMcu), r.Float(PulseSig), r.Float(AcelX), r.Float(AcelY), r.Float(AcelZ), r.Float(TempMpu)}
}

// AppendV2Payload appends p as the JSON text of a DATA payload, without
// reflection: the firmware and the simulator encode one per frame. A value
// that is not finite is written as null, which the server refuses.
func AppendV2Payload(dst []byte, p *V2Payload) []byte {
	dst = append(dst, `{"time":`...)
	dst = strconv.AppendInt(dst, p.Time, 10)
	dst = append(dst, `,"values":{`...)
	v := &p.Values
	for i, x := range [NumFields]float64{v.Temp, v.TempMcu, v.PulseSig, v.AcelX, v.AcelY, v.AcelZ, v.TempMpu} {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = append(dst, fieldNames[i]...)
		dst = append(dst, `":`...)
		dst = appendJSONNumber(dst, x)
	}
	dst = append(dst, '}')
	if p.Pulse != nil {
		dst = append(dst, `,"pulse":`...)
		dst = p.Pulse.appendJSON(dst)
	}
	return append(dst, '}')
}

// appendJSONNumber writes x as encoding/json does: the shortest text that
// reads back as x, exponent form only for very small or large magnitudes.
func appendJSONNumber(dst []byte, x float64) []byte {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return append(dst, "null"...)
	}
	if a := math.Abs(x); a != 0 && (a < 1e-6 || a >= 1e21) {
		dst = strconv.AppendFloat(dst, x, 'e', -1, 64)
		// clean up e-09 to e-9, as encoding/json does
		if n := len(dst); n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
		return dst
	}
	return strconv.AppendFloat(dst, x, 'f', -1, 64)
}
