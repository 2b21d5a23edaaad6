// Package hwfake holds fake peripherals for host tests of the firmware: an
// MPU6050 on I2C, a DS18B20 on a 1-Wire line with simulated slot timing,
// ADC inputs, pins, an LED and flash memory.
package hwfake

import (
	"encoding/binary"
	"errors"
	"math"
	"sync"
	"sync/atomic"

	"github.com/medpipe/medpipe/firmware/onewire"
)

// MPU6050 is an accelerometer answering on I2C address 0x68.
type MPU6050 struct {
	mu      sync.Mutex
	awake   bool
	X, Y, Z float64 // g, what it measures
	Temp    float64 // °C
}

// Set changes what the sensor measures.
func (m *MPU6050) Set(x, y, z, temp float64) {
	m.mu.Lock()
	m.X, m.Y, m.Z, m.Temp = x, y, z, temp
	m.mu.Unlock()
}

// Tx implements the I2C transaction of sensors.I2C.
func (m *MPU6050) Tx(addr uint16, w, r []byte) error {
	if addr != 0x68 {
		return errors.New("i2c: no ACK")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(w) == 0 {
		return errors.New("i2c: no register")
	}
	switch reg := w[0]; {
	case reg == 0x6B && len(w) == 2:
		m.awake = w[1]&0x40 == 0
	case reg == 0x1C && len(w) == 2:
	case reg == 0x75:
		if len(r) > 0 {
			r[0] = 0x68
		}
	case reg == 0x3B:
		var regs [8]byte
		if m.awake {
			binary.BigEndian.PutUint16(regs[0:], uint16(int16(math.Round(m.X*16384))))
			binary.BigEndian.PutUint16(regs[2:], uint16(int16(math.Round(m.Y*16384))))
			binary.BigEndian.PutUint16(regs[4:], uint16(int16(math.Round(m.Z*16384))))
			binary.BigEndian.PutUint16(regs[6:], uint16(int16(math.Round((m.Temp-36.53)*340))))
		}
		copy(r, regs[:])
	default:
		return errors.New("i2c: register not modelled")
	}
	return nil
}

// ADC is an analog input returning a settable value.
type ADC struct{ v atomic.Uint32 }

// Set sets the raw value returned.
func (a *ADC) Set(raw uint16) { a.v.Store(uint32(raw)) }

// SetVolts sets the value from volts (3.3 V full scale).
func (a *ADC) SetVolts(v float64) { a.Set(uint16(math.Round(v / 3.3 * 65535))) }

// Get implements sensors.ADC.
func (a *ADC) Get() uint16 { return uint16(a.v.Load()) }

// Pin is an input pin.
type Pin struct{ v atomic.Bool }

// Set sets the level read.
func (p *Pin) Set(high bool) { p.v.Store(high) }

// Get returns the level.
func (p *Pin) Get() bool { return p.v.Load() }

// LED is the status LED.
type LED struct{ on atomic.Bool }

// Set switches the LED.
func (l *LED) Set(on bool) { l.on.Store(on) }

// Flash is a region of flash memory, erased to 0xFF.
type Flash struct {
	mu   sync.Mutex
	data []byte
}

// NewFlash returns an erased region of size bytes.
func NewFlash(size int) *Flash {
	f := &Flash{data: make([]byte, size)}
	for i := range f.data {
		f.data[i] = 0xFF
	}
	return f
}

// ReadAt implements io.ReaderAt.
func (f *Flash) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(f.data)) {
		return 0, errors.New("flash: out of range")
	}
	return copy(p, f.data[off:]), nil
}

// WriteAt implements io.WriterAt (erase and program in one, as the board
// binding does for a sector).
func (f *Flash) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(f.data)) {
		return 0, errors.New("flash: out of range")
	}
	return copy(f.data[off:], p), nil
}

// DS18B20 is a temperature sensor on a simulated 1-Wire line. Time is
// virtual: it advances only through Delay, which the bus must use, so the
// slot timing the firmware produces is checked exactly.
type DS18B20 struct {
	mu   sync.Mutex
	temp float64

	now        int  // µs of virtual time
	low        bool // the master drives the line low
	lowAt      int
	releasedAt int
	presence   bool // the last release ended a reset pulse
	readSlot   bool // a short low pulse: a read slot or a 1
	slotAt     int
	sampled    bool // the read slot was sampled

	in        byte // bits being received
	inBits    int
	out       []bool // bits to send
	sp        [9]byte
	state     int // 0 ROM command, 1 function command
	converted bool

	// Errors counts slots the firmware timed outside the datasheet's bounds.
	Errors int
}

// NewDS18B20 returns a sensor measuring temp °C.
func NewDS18B20(temp float64) *DS18B20 { return &DS18B20{temp: temp} }

// Set changes the temperature measured (seen at the next conversion).
func (d *DS18B20) Set(temp float64) {
	d.mu.Lock()
	d.temp = temp
	d.mu.Unlock()
}

// Bus returns a 1-Wire bus on this sensor's line with its virtual delay.
func (d *DS18B20) Bus() *onewire.Bus { return &onewire.Bus{Line: d, Delay: d.Delay} }

// Delay advances virtual time.
func (d *DS18B20) Delay(us int) {
	d.mu.Lock()
	d.now += us
	d.mu.Unlock()
}

// Low implements onewire.Line.
func (d *DS18B20) Low() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.endSlot()
	d.low, d.lowAt = true, d.now
}

// Release implements onewire.Line.
func (d *DS18B20) Release() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.low {
		return
	}
	d.low, d.releasedAt = false, d.now
	switch dur := d.now - d.lowAt; {
	case dur >= 480:
		d.presence, d.state, d.inBits, d.out = true, 0, 0, nil
	case dur >= 60 && dur <= 120:
		d.bit(false)
	case dur >= 1 && dur <= 15:
		d.readSlot, d.slotAt, d.sampled = true, d.lowAt, false
	default:
		d.Errors++
	}
}

// endSlot settles a short slot that was not sampled: it wrote a 1.
func (d *DS18B20) endSlot() {
	if d.readSlot && !d.sampled {
		d.bit(true)
	}
	d.readSlot, d.presence = false, false
}

// Read implements onewire.Line.
func (d *DS18B20) Read() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.low {
		return false
	}
	if d.presence {
		since := d.now - d.releasedAt
		return !(since >= 15 && since <= 240) // the presence pulse
	}
	if d.readSlot && !d.sampled {
		d.sampled = true
		if d.now-d.slotAt > 15 {
			d.Errors++ // sampled too late: the sensor has let go
		}
		if len(d.out) == 0 {
			return true // nothing to send: the line floats high
		}
		b := d.out[0]
		d.out = d.out[1:]
		return b
	}
	return true
}

// bit takes one bit written by the master.
func (d *DS18B20) bit(b bool) {
	if b {
		d.in |= 1 << d.inBits
	}
	d.inBits++
	if d.inBits < 8 {
		return
	}
	c := d.in
	d.in, d.inBits = 0, 0
	switch {
	case d.state == 0 && c == 0xCC:
		d.state = 1
	case d.state == 1 && c == 0x44:
		raw := int16(math.Round(d.temp * 16))
		d.sp = [9]byte{byte(raw), byte(uint16(raw) >> 8), 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10}
		d.sp[8] = onewire.CRC8(d.sp[:8])
		d.converted = true
		d.state = 2
	case d.state == 1 && c == 0xBE:
		if !d.converted {
			d.sp = [9]byte{0x50, 0x05, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10} // 85 °C at power-on
			d.sp[8] = onewire.CRC8(d.sp[:8])
		}
		d.out = d.out[:0]
		for _, by := range d.sp {
			for i := range 8 {
				d.out = append(d.out, by>>i&1 == 1)
			}
		}
		d.state = 2
	default:
		d.Errors++
	}
}
