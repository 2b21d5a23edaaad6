package bus

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/medpipe/medpipe/wire"
)

// Reading is a READINGS message: one validated device reading with where and
// when it arrived. It is JSON on the bus.
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
	// Received is when the edge read the frame.
	Received time.Time `json:"received"`
	Conn     string    `json:"conn"`
	FrameSeq uint64    `json:"frame_seq"`
	RawSeq   uint64    `json:"raw_seq"`
	Remote   string    `json:"remote"`
	Local    string    `json:"local"`
}

// Values holds a reading's values as the device formatted them.
type Values struct {
	Temp     string `json:"Temp"`
	TempMcu  string `json:"TempMcu"`
	PulseSig string `json:"PulseSig"`
	AcelX    string `json:"Acel_x"`
	AcelY    string `json:"Acel_y"`
	AcelZ    string `json:"Acel_z"`
	TempMpu  string `json:"TempMpu"`
}

// Numbers holds a reading's values as numbers: the shape v2 devices send.
type Numbers = wire.V2Values

// SetWire fills Values and Numbers from a validated device reading.
func (r *Reading) SetWire(w *wire.Reading) {
	r.Values = Values{w[wire.Temp], w[wire.TempMcu], w[wire.PulseSig], w[wire.AcelX], w[wire.AcelY], w[wire.AcelZ], w[wire.TempMpu]}
	r.Numbers = w.Numbers()
}

// Wire returns the values as a wire.Reading.
func (v *Values) Wire() wire.Reading {
	return wire.Reading{v.Temp, v.TempMcu, v.PulseSig, v.AcelX, v.AcelY, v.AcelZ, v.TempMpu}
}

// MarshalReading encodes r for READINGS.
func MarshalReading(r *Reading) ([]byte, error) { return json.Marshal(r) }

// UnmarshalReading decodes and checks a READINGS message.
func UnmarshalReading(b []byte) (*Reading, error) {
	var r Reading
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("bus: READINGS message: %w", err)
	}
	if !wire.ValidID(r.Device) {
		return nil, fmt.Errorf("bus: READINGS message: invalid device id %q", r.Device)
	}
	w := r.Values.Wire()
	if err := w.Validate(); err != nil {
		return nil, fmt.Errorf("bus: READINGS message: %w", err)
	}
	return &r, nil
}
