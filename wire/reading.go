package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Field names one of the seven values a device reports.
type Field uint8

// The seven fields, in the order the device firmware writes them.
const (
	Temp     Field = iota // body temperature, °C
	TempMcu               // microcontroller temperature, °C
	PulseSig              // pulse sensor signal, V
	AcelX                 // accelerometer x, g
	AcelY                 // accelerometer y, g
	AcelZ                 // accelerometer z, g
	TempMpu               // accelerometer chip temperature, °C
	NumFields
)

// Name is the field's JSON key as devices send it.
func (f Field) Name() string {
	if f >= NumFields {
		return "Field(" + strconv.Itoa(int(f)) + ")"
	}
	return fieldNames[f]
}

// String returns Name.
func (f Field) String() string { return f.Name() }

// FieldByName returns the field whose JSON key is name.
func FieldByName(name string) (Field, bool) {
	for i, n := range fieldNames {
		if n == name {
			return Field(i), true
		}
	}
	return 0, false
}

// Reading is one device reading: the seven values as the device formatted
// them ("36.600", not 36.6), indexed by Field. Consumers see the text exactly
// as sent, so the reading keeps it rather than a float.
type Reading [NumFields]string

// Errors returned when a decrypted message is not a valid reading.
var (
	ErrBadJSON      = errors.New("wire: reading is not a JSON object of strings")
	ErrMissingField = errors.New("wire: reading lacks a field")
	ErrBadValue     = errors.New("wire: reading value is not a finite decimal")
)

// maxValueLen bounds one value's text; devices send at most a handful of digits.
const maxValueLen = 32

// MaxReadingLen and MinReadingLen are the longest and shortest reading a
// device writes (AppendJSON with every value maxValueLen characters long,
// and one character long). No valid reading is shorter than MinReadingLen:
// it holds all seven fields. A longer one parses (spaces, unknown fields),
// but no device sends it; they bound legacy frames at the edge.
var (
	MaxReadingLen = readingLen(maxValueLen)
	MinReadingLen = readingLen(1)
)

// readingLen is the length of AppendJSON's output when every value is n characters.
func readingLen(n int) int {
	var r Reading
	for f := range r {
		r[f] = strings.Repeat("1", n)
	}
	return len(r.AppendJSON(nil))
}

// ParseReading parses and validates a reading's JSON text: an object holding
// all seven fields, each a string that is a finite decimal number. Unknown
// fields are ignored.
func ParseReading(b []byte) (Reading, error) {
	r, seen, ok := parseFlat(b)
	if !ok {
		// Escapes, unknown keys or odd layout: let the standard library decide.
		var err error
		if r, seen, err = parseStd(b); err != nil {
			return Reading{}, err
		}
	}
	return r, r.validate(seen)
}

func (r *Reading) validate(seen [NumFields]bool) error {
	for f := range NumFields {
		if !seen[f] {
			return fmt.Errorf("%w: %s", ErrMissingField, f.Name())
		}
		if !IsDecimal(r[f]) {
			return fmt.Errorf("%w: %s", ErrBadValue, f.Name())
		}
	}
	return nil
}

// Validate reports whether every field holds a finite decimal.
func (r *Reading) Validate() error {
	var all [NumFields]bool
	for i := range all {
		all[i] = true
	}
	return r.validate(all)
}

// ValidateWith is Validate for a reading with sensor states s: a value
// whose sensor is not SensorOK must be empty (absent), every other one a
// finite decimal.
func (r *Reading) ValidateWith(s *SensorStates) error {
	for f := range NumFields {
		if s.Absent(f) {
			if r[f] != "" {
				return fmt.Errorf("%w: %s is %q, but its sensor is %s", ErrBadValue, f.Name(), r[f], s.Of(f))
			}
			continue
		}
		if !IsDecimal(r[f]) {
			return fmt.Errorf("%w: %s", ErrBadValue, f.Name())
		}
	}
	return nil
}

// Float returns field f as a number. It is only meaningful on a validated reading.
func (r *Reading) Float(f Field) float64 {
	v, _ := strconv.ParseFloat(r[f], 64)
	return v
}

// AppendJSON appends the reading as a device writes it:
// {"Temp":"36.600","TempMcu":"23.700",...} in field order, no spaces.
func (r *Reading) AppendJSON(dst []byte) []byte {
	dst = append(dst, '{')
	for f := range NumFields {
		if f > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = append(dst, fieldNames[f]...)
		dst = append(dst, `":"`...)
		dst = append(dst, r[f]...)
		dst = append(dst, '"')
	}
	return append(dst, '}')
}

// IsDecimal reports whether s is a finite decimal number as devices write it:
// an optional sign, digits with at most one decimal point, at least one digit,
// no exponent, at most 32 characters.
func IsDecimal(s string) bool {
	if len(s) == 0 || len(s) > maxValueLen {
		return false
	}
	i := 0
	if s[0] == '-' || s[0] == '+' {
		i++
	}
	digits, dot := 0, false
	for ; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' && !dot:
			dot = true
		default:
			return false
		}
	}
	return digits > 0
}

// parseFlat is the allocation-light fast path for the layout devices send: a
// flat object of known keys with string values and no escapes. ok is false
// when the input needs the general parser.
func parseFlat(b []byte) (r Reading, seen [NumFields]bool, ok bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return r, seen, false
	}
	i++
	for {
		i = skipSpace(b, i)
		key, next, good := flatString(b, i)
		if !good {
			return r, seen, false
		}
		f, known := FieldByName(key)
		if !known || seen[f] {
			return r, seen, false
		}
		i = skipSpace(b, next)
		if i >= len(b) || b[i] != ':' {
			return r, seen, false
		}
		i = skipSpace(b, i+1)
		val, next, good := flatString(b, i)
		if !good {
			return r, seen, false
		}
		r[f], seen[f] = val, true
		i = skipSpace(b, next)
		if i >= len(b) {
			return r, seen, false
		}
		if b[i] == '}' {
			return r, seen, skipSpace(b, i+1) == len(b)
		}
		if b[i] != ',' {
			return r, seen, false
		}
		i++
	}
}

// flatString reads a JSON string without escapes starting at b[i].
func flatString(b []byte, i int) (s string, next int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return "", i, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return string(b[i+1 : j]), j + 1, true
		case c == '\\' || c < 0x20:
			return "", i, false
		}
	}
	return "", i, false
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

func parseStd(b []byte) (r Reading, seen [NumFields]bool, err error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return r, seen, ErrBadJSON
	}
	for f := range NumFields {
		raw, ok := m[fieldNames[f]]
		if !ok {
			continue
		}
		if err := json.Unmarshal(raw, &r[f]); err != nil {
			return r, seen, fmt.Errorf("%w: %s is not a string", ErrBadJSON, f.Name())
		}
		seen[f] = true
	}
	return r, seen, nil
}
