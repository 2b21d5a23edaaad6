package wire

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Device is one device's identity and legacy key material, as operators keep
// it in their JSON-lines keys file:
//
//	{ "id":"iot_med_dev_01", "key":"1234567890123456", "iv":"AAAAAAAAAAAAAAAA"}
//
// Key and IV are secrets: never log or print a Device.
type Device struct {
	ID  string
	Key [16]byte
	IV  [16]byte
}

// String hides the key material so that a Device printed by mistake leaks nothing.
func (d Device) String() string { return "device " + d.ID }

// GoString hides the key material from %#v as well.
func (d Device) GoString() string { return d.String() }

// ErrKeysFile marks every error about the keys file's content.
var ErrKeysFile = errors.New("wire: keys file")

// maxIDLen bounds a device id: it becomes part of NATS subjects and MQTT topics.
const maxIDLen = 64

// ValidID reports whether id can name a device: 1 to 64 characters from
// [A-Za-z0-9_-], so that it is safe as a NATS subject token and an MQTT topic level.
func ValidID(id string) bool {
	if len(id) == 0 || len(id) > maxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// keyLine is one line of the keys file. Unknown fields are ignored.
type keyLine struct {
	ID  *string `json:"id"`
	Key *string `json:"key"`
	IV  *string `json:"iv"`
}

// ReadKeys reads a JSON-lines keys file. Blank lines and lines starting with
// '#' are skipped. Errors name the line number and never quote key material.
func ReadKeys(r io.Reader) ([]Device, error) {
	var devs []Device
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		d, err := parseKeyLine(line)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrKeysFile, n, err)
		}
		if prev, dup := seen[d.ID]; dup {
			return nil, fmt.Errorf("%w: line %d: device %q already defined on line %d", ErrKeysFile, n, d.ID, prev)
		}
		seen[d.ID] = n
		devs = append(devs, d)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeysFile, err)
	}
	return devs, nil
}

func parseKeyLine(line []byte) (Device, error) {
	var kl keyLine
	if err := json.Unmarshal(line, &kl); err != nil {
		// The decoder's message can quote input, which may be key material.
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return Device{}, fmt.Errorf("not a JSON object (syntax error at column %d)", se.Offset)
		}
		return Device{}, errors.New(`not a JSON object of strings "id", "key", "iv"`)
	}
	var d Device
	switch {
	case kl.ID == nil:
		return d, errors.New(`missing "id"`)
	case !ValidID(*kl.ID):
		return d, fmt.Errorf("device id %q: want 1-64 characters of A-Z a-z 0-9 _ -", *kl.ID)
	case kl.Key == nil:
		return d, fmt.Errorf(`device %q: missing "key"`, *kl.ID)
	case kl.IV == nil:
		return d, fmt.Errorf(`device %q: missing "iv"`, *kl.ID)
	case len(*kl.Key) != 16:
		return d, fmt.Errorf(`device %q: "key" must be 16 bytes, has %d`, *kl.ID, len(*kl.Key))
	case len(*kl.IV) != 16:
		return d, fmt.Errorf(`device %q: "iv" must be 16 bytes, has %d`, *kl.ID, len(*kl.IV))
	}
	d.ID = *kl.ID
	copy(d.Key[:], *kl.Key)
	copy(d.IV[:], *kl.IV)
	return d, nil
}

// AppendKeyLine appends d as one line of a keys file, newline included.
func AppendKeyLine(dst []byte, d Device) []byte {
	b, _ := json.Marshal(struct {
		ID  string `json:"id"`
		Key string `json:"key"`
		IV  string `json:"iv"`
	}{d.ID, string(d.Key[:]), string(d.IV[:])})
	dst = append(dst, b...)
	return append(dst, '\n')
}

// secretAlphabet is what generated keys and IVs are made of: legacy devices
// store them as 16 printable characters.
const secretAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// RandomSecret returns 16 alphanumeric characters from crypto/rand (about
// 95 bits), the form of a device key or IV.
func RandomSecret() ([16]byte, error) {
	var out [16]byte
	var b [1]byte
	for i := 0; i < len(out); {
		if _, err := rand.Read(b[:]); err != nil {
			return out, fmt.Errorf("wire: random secret: %w", err)
		}
		if int(b[0]) >= 256-256%len(secretAlphabet) { // reject to keep the draw uniform
			continue
		}
		out[i] = secretAlphabet[int(b[0])%len(secretAlphabet)]
		i++
	}
	return out, nil
}

// NewRandomDevice returns a device with a fresh random key and IV.
func NewRandomDevice(id string) (Device, error) {
	if !ValidID(id) {
		return Device{}, fmt.Errorf("wire: invalid device id %q", id)
	}
	d := Device{ID: id}
	var err error
	if d.Key, err = RandomSecret(); err != nil {
		return d, err
	}
	d.IV, err = RandomSecret()
	return d, err
}
