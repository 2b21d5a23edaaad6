package simulator

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/medpipe/medpipe/wire"
)

// Device is one simulated device.
type Device struct {
	wire.Device
	// Variant is the legacy encoder; ignored when V2 is set.
	Variant wire.Variant
	// V2 makes the device speak protocol v2.
	V2 bool
}

// newDevice makes device number i (from 1) with a fresh random key and IV.
func newDevice(prefix string, i int) (wire.Device, error) {
	return wire.NewRandomDevice(fmt.Sprintf("%s-%05d", prefix, i))
}

// GenerateDevices makes n devices with ids "<prefix>-00001"… and random
// 16-character alphanumeric keys and IVs. variant is "pico", "pseudo" or
// "mixed" (alternating pico, pseudo).
func GenerateDevices(n int, prefix string, variant string) ([]Device, error) {
	out := make([]Device, n)
	for i := range out {
		d, err := newDevice(prefix, i+1)
		if err != nil {
			return nil, err
		}
		v, err := VariantOf(variant, i)
		if err != nil {
			return nil, err
		}
		out[i] = Device{Device: d, Variant: v}
	}
	return out, nil
}

// DefaultVariant and DefaultProtocol are the fleets a command simulates
// unless told otherwise: legacy devices alternately pico and pseudo.
const (
	DefaultVariant  = "mixed"
	DefaultProtocol = "legacy"
)

// VariantOf returns the variant of the i-th device of a fleet: variant
// itself, or alternating pico and pseudo for "mixed".
func VariantOf(variant string, i int) (wire.Variant, error) {
	if variant == "mixed" {
		return wire.Pico + wire.Variant(i%2), nil
	}
	return wire.ParseVariant(variant)
}

// Assign sets the protocol of the i-th device from protocol "legacy", "v2"
// or "mixed" (every third device v2) and, for legacy, the variant.
func Assign(d wire.Device, i int, protocol, variant string) (Device, error) {
	out := Device{Device: d}
	switch protocol {
	case "v2":
		out.V2 = true
		return out, nil
	case "mixed":
		if i%3 == 2 {
			out.V2 = true
			return out, nil
		}
	case "legacy", "":
	default:
		return out, fmt.Errorf("simulator: protocol %q: want legacy, v2 or mixed", protocol)
	}
	v, err := VariantOf(variant, i)
	out.Variant = v
	return out, err
}

// LoadOrCreateKeys returns the first n devices of the keys file at path,
// creating the file (mode 0600, directory 0700) or appending generated
// devices when it holds fewer than n.
func LoadOrCreateKeys(path string, n int, prefix string) ([]wire.Device, error) {
	var devs []wire.Device
	f, err := os.Open(path)
	switch {
	case err == nil:
		devs, err = wire.ReadKeys(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("simulator: %s: %w", path, err)
		}
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("simulator: %w", err)
		}
	default:
		return nil, fmt.Errorf("simulator: %w", err)
	}
	if len(devs) >= n {
		return devs[:n], nil
	}
	ids := map[string]bool{}
	for _, d := range devs {
		ids[d.ID] = true
	}
	var add []byte
	for i := 1; len(devs) < n; i++ {
		d, err := newDevice(prefix, i)
		if err != nil {
			return nil, err
		}
		if ids[d.ID] {
			continue
		}
		devs = append(devs, d)
		add = wire.AppendKeyLine(add, d)
	}
	out, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("simulator: %w", err)
	}
	// A hand-edited file may lack its final newline: do not glue a line to it.
	if st, err := out.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if _, err := out.ReadAt(last, st.Size()-1); err == nil && last[0] != '\n' {
			add = append([]byte{'\n'}, add...)
		}
	}
	if _, err := out.Write(add); err != nil {
		out.Close()
		return nil, fmt.Errorf("simulator: write %s: %w", path, err)
	}
	if err := out.Close(); err != nil {
		return nil, fmt.Errorf("simulator: write %s: %w", path, err)
	}
	return devs, nil
}
