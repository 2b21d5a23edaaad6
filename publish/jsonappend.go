package publish

import (
	"encoding/json"
	"math"
	"strconv"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

// appendReadingJSON appends the JSON of j exactly as encoding/json writes
// it (json.Marshal's bytes, field for field), without reflection: a v2
// reading carries its pulse batch (25 samples at 10 readings/s, 250 at 1/s)
// and formatting that through encoding/json was most of publish's CPU per
// v2 reading (bench/README.md). Anything the fast path does not write the
// way encoding/json would (a string needing an escape, a time outside
// RFC 3339, a float that is not finite) falls back to json.Marshal, so
// the output never differs; TestReadingJSONMatchesEncodingJSON and
// FuzzReadingJSON hold it to that.
func appendReadingJSON(dst []byte, j *jsonReading) []byte {
	return appendOrMarshal(dst, j, appendReadingJSONFast)
}

// appendOrMarshal appends v's JSON written by fast, or, where fast cannot
// write it as encoding/json would, by json.Marshal.
func appendOrMarshal[T any](dst []byte, v T, fast func([]byte, T) ([]byte, bool)) []byte {
	start := len(dst)
	if out, ok := fast(dst, v); ok {
		return out
	}
	b, _ := json.Marshal(v)
	return append(dst[:start], b...)
}

func appendReadingJSONFast(dst []byte, j *jsonReading) ([]byte, bool) {
	ok := true
	dst = append(dst, `{"device":`...)
	dst, ok = appendPlainString(dst, j.Device)
	if !ok {
		return dst, false
	}
	dst = append(dst, `,"values":`...)
	if dst, ok = appendValues(dst, &j.Values); !ok {
		return dst, false
	}
	dst = append(dst, `,"received":`...)
	if dst, ok = appendTime(dst, j.Received); !ok {
		return dst, false
	}
	if !j.DeviceTime.IsZero() {
		dst = append(dst, `,"device_time":`...)
		if dst, ok = appendTime(dst, j.DeviceTime); !ok {
			return dst, false
		}
	}
	if j.Seq != 0 {
		dst = append(dst, `,"seq":`...)
		dst = strconv.AppendUint(dst, j.Seq, 10)
	}
	if j.Pulse != nil {
		dst = append(dst, `,"pulse":`...)
		if dst, ok = appendPulseJSON(dst, j.Pulse); !ok {
			return dst, false
		}
	}
	if j.Sensors != nil {
		dst = append(dst, `,"sensors":`...)
		// Sensor and state names are fixed lower-case ASCII: nothing for
		// encoding/json to escape or compact in AppendJSON's object.
		dst = j.Sensors.AppendJSON(dst)
	}
	return append(dst, '}'), true
}

// appendPulseBatchJSON appends p's JSON as json.Marshal writes it.
func appendPulseBatchJSON(dst []byte, p *pulseBatch) []byte {
	return appendOrMarshal(dst, p, appendPulseJSON)
}

func appendPulseJSON(dst []byte, p *pulseBatch) ([]byte, bool) {
	ok := true
	dst = append(dst, `{"rate":`...)
	if dst, ok = appendFloat(dst, p.Rate); !ok {
		return dst, false
	}
	dst = append(dst, `,"start":`...)
	if dst, ok = appendTime(dst, p.Start); !ok {
		return dst, false
	}
	dst = append(dst, `,"samples":`...)
	if p.Samples == nil {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, '[')
		for i, s := range p.Samples {
			if i > 0 {
				dst = append(dst, ',')
			}
			if dst, ok = appendFloat(dst, s); !ok {
				return dst, false
			}
		}
		dst = append(dst, ']')
	}
	return append(dst, '}'), true
}

// appendValues appends bus.Values as its MarshalJSON writes it (field
// order, "" as null), which encoding/json then copies as is when every
// value is a plain string.
func appendValues(dst []byte, v *bus.Values) ([]byte, bool) {
	ok := true
	dst = append(dst, '{')
	for f, p := range v.Fields() {
		if f > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = append(dst, wire.Field(f).Name()...)
		dst = append(dst, `":`...)
		if *p == "" {
			dst = append(dst, "null"...)
			continue
		}
		if dst, ok = appendPlainString(dst, *p); !ok {
			return dst, false
		}
	}
	return append(dst, '}'), true
}

// appendPlainString appends s quoted when neither encoding/json nor
// strconv.Quote would escape any of its bytes: printable ASCII other than
// the quote, the backslash and encoding/json's HTML characters (<, >, &).
// ok is false otherwise, and the caller falls back to encoding/json.
func appendPlainString(dst []byte, s string) ([]byte, bool) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return dst, false
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"'), true
}

// appendTime appends t as time.Time's MarshalJSON does (RFC 3339 with
// nanoseconds, quoted); ok is false where MarshalJSON fails (a year
// outside 0-9999, a zone offset with seconds).
func appendTime(dst []byte, t time.Time) ([]byte, bool) {
	out, err := t.AppendText(append(dst, '"'))
	if err != nil {
		return dst, false // AppendText returns nil on error
	}
	return append(out, '"'), true
}

// appendFloat appends f as encoding/json writes a float64: the shortest
// representation, in exponent form below 1e-6 and from 1e21 on, with
// encoding/json's exponent clean-up (e-07 → e-7). ok is false for NaN and
// the infinities, which encoding/json refuses.
func appendFloat(dst []byte, f float64) ([]byte, bool) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return dst, false
	}
	if out, ok := appendTenThousandths(dst, f); ok {
		return out, true
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		n := len(dst)
		if n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst, true
}

// appendTenThousandths appends f, when it is a whole number of
// ten-thousandths (pulse samples are: wire.PulseVolts rounds to 4
// decimals; rates are whole) of magnitude below 1e9, in the digits
// strconv's shortest formatting gives, but by integer arithmetic, several
// times faster. The decimal n/10⁴ parses back to f (IEEE division is
// correctly rounded, as parsing is), and no shorter or other decimal of
// at most 4 places does: they are 10⁻⁴ apart, far more than f's spacing.
// ok is false for any other f (and for 0, whose sign matters).
func appendTenThousandths(dst []byte, f float64) ([]byte, bool) {
	if !(f > -1e9 && f < 1e9) || f == 0 {
		return dst, false
	}
	n := math.Round(f * 1e4)
	if n/1e4 != f {
		return dst, false
	}
	if n < 0 {
		dst = append(dst, '-')
		n = -n
	}
	u := uint64(n)
	dst = strconv.AppendUint(dst, u/10000, 10)
	frac := u % 10000
	if frac == 0 {
		return dst, true
	}
	digits := [5]byte{'.', byte('0' + frac/1000), byte('0' + frac/100%10), byte('0' + frac/10%10), byte('0' + frac%10)}
	end := len(digits)
	for digits[end-1] == '0' {
		end--
	}
	return append(dst, digits[:end]...), true
}
