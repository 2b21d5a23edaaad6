// Package onewire speaks Maxim's 1-Wire protocol by bit-banging one pin,
// with the DS18B20 temperature sensor on top. The pin and the microsecond
// delay are interfaces, so the timing code runs on TinyGo and against the
// fake line of the tests.
package onewire

import "errors"

// Line is the open-drain data line: Low drives it low, Release lets the
// pull-up raise it, Read samples it.
type Line interface {
	Low()
	Release()
	Read() bool
}

// Bus drives a Line with standard-speed timing (datasheet slot times).
type Bus struct {
	Line Line
	// Delay waits us microseconds; on a microcontroller it busy-waits,
	// because a slot tolerates a few microseconds at most.
	Delay func(us int)
	// Critical runs f with interrupts off (nil: runs it as is): each
	// reset and time slot runs inside it, so an interrupt (UART, timer)
	// cannot stretch a slot past the sensor's timing.
	Critical func(f func())
}

func (b *Bus) critical(f func()) {
	if b.Critical != nil {
		b.Critical(f)
		return
	}
	f()
}

// Read slot timing: the master holds the line low readLow µs and samples
// readSample µs after the falling edge; the DS18B20 holds its bit valid
// for 15 µs from the edge, so the sample keeps 5 µs of margin (the
// datasheet asks for the sample "close to" but within 15 µs; the line's
// rise time through the 4.7 kΩ pull-up takes some of it).
const (
	readLow    = 2
	readSample = 10
	slotLen    = 70 // a time slot, recovery included (≥ 61 µs)
)

// ErrNoDevice means no device answered a reset with a presence pulse.
var ErrNoDevice = errors.New("onewire: no device present")

// Reset sends a reset pulse and reports whether a device answered.
func (b *Bus) Reset() (present bool) {
	b.critical(func() {
		b.Line.Low()
		b.Delay(480)
		b.Line.Release()
		b.Delay(70)
		present = !b.Line.Read()
	})
	b.Delay(410) // the rest of the presence window needs no precision
	return present
}

// WriteBit writes one time slot.
func (b *Bus) WriteBit(bit bool) {
	b.critical(func() {
		b.Line.Low()
		if bit {
			b.Delay(6)
			b.Line.Release()
			b.Delay(slotLen - 6)
			return
		}
		b.Delay(60)
		b.Line.Release()
		b.Delay(slotLen - 60)
	})
}

// ReadBit reads one time slot.
func (b *Bus) ReadBit() (bit bool) {
	b.critical(func() {
		b.Line.Low()
		b.Delay(readLow)
		b.Line.Release()
		b.Delay(readSample - readLow)
		bit = b.Line.Read()
	})
	b.Delay(slotLen - readSample)
	return bit
}

// Send writes the byte c, least significant bit first.
func (b *Bus) Send(c byte) {
	for i := range 8 {
		b.WriteBit(c>>i&1 == 1)
	}
}

// Receive reads one byte, least significant bit first.
func (b *Bus) Receive() byte {
	var c byte
	for i := range 8 {
		if b.ReadBit() {
			c |= 1 << i
		}
	}
	return c
}

// CRC8 is the Dallas/Maxim CRC (polynomial x^8+x^5+x^4+1) of data.
func CRC8(data []byte) byte {
	var crc byte
	for _, c := range data {
		for range 8 {
			mix := (crc ^ c) & 1
			crc >>= 1
			if mix != 0 {
				crc ^= 0x8C
			}
			c >>= 1
		}
	}
	return crc
}

// DS18B20 commands.
const (
	cmdSkipROM         = 0xCC
	cmdConvertT        = 0x44
	cmdReadScratchpad  = 0xBE
	scratchpadLen      = 9
	conversionTime12   = 750 // ms at 12-bit resolution
	powerOnTemperature = 0x0550
)

// ErrCRC means a scratchpad read failed its check (noise, a loose wire).
var ErrCRC = errors.New("onewire: scratchpad CRC mismatch")

// ErrNotReady means the sensor still holds its power-on value (85 °C):
// no conversion has finished yet.
var ErrNotReady = errors.New("onewire: DS18B20 has not converted yet")

// DS18B20 is the one temperature sensor on a bus (addressed with Skip ROM).
type DS18B20 struct{ Bus *Bus }

// Convert starts a temperature conversion; read it ConversionTime later.
func (d DS18B20) Convert() error {
	if !d.Bus.Reset() {
		return ErrNoDevice
	}
	d.Bus.Send(cmdSkipROM)
	d.Bus.Send(cmdConvertT)
	return nil
}

// ConversionMillis is how long a 12-bit conversion takes.
const ConversionMillis = conversionTime12

// Read reads the last converted temperature in °C.
func (d DS18B20) Read() (float64, error) {
	if !d.Bus.Reset() {
		return 0, ErrNoDevice
	}
	d.Bus.Send(cmdSkipROM)
	d.Bus.Send(cmdReadScratchpad)
	var sp [scratchpadLen]byte
	for i := range sp {
		sp[i] = d.Bus.Receive()
	}
	if CRC8(sp[:8]) != sp[8] {
		return 0, ErrCRC
	}
	raw := int16(uint16(sp[0]) | uint16(sp[1])<<8)
	if raw == powerOnTemperature {
		return 0, ErrNotReady
	}
	return float64(raw) / 16, nil
}
