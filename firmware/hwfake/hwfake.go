// Package hwfake holds fake peripherals for host tests of the firmware: an
// MPU6050 on I2C, a DS18B20 on a 1-Wire line with simulated slot timing,
// ADC inputs, pins, an LED and flash memory.
package hwfake

import (
	"encoding/binary"
	"errors"
	"fmt"
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
	// WhoAmI is what register 0x75 answers (0: 0x68, a genuine MPU6050;
	// clones answer 0x70, 0x72 or 0x98).
	WhoAmI byte
	absent bool
}

// SetAbsent unplugs (true) or plugs the sensor back; plugged back, it is
// asleep, as after power-on.
func (m *MPU6050) SetAbsent(absent bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.absent = absent
	if absent {
		m.awake = false
	}
}

// Set changes what the sensor measures.
func (m *MPU6050) Set(x, y, z, temp float64) {
	m.mu.Lock()
	m.X, m.Y, m.Z, m.Temp = x, y, z, temp
	m.mu.Unlock()
}

// Tx implements the I2C transaction of sensors.I2C.
func (m *MPU6050) Tx(addr uint16, w, r []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if addr != 0x68 || m.absent {
		return errors.New("i2c: no ACK")
	}
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
			if m.WhoAmI != 0 {
				r[0] = m.WhoAmI
			}
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

// SectorSize is the erase unit of the Pico's QSPI flash (W25Q16JV: 4 KiB).
const SectorSize = 4096

// ErrPowerCut is what every flash operation returns after CutPowerAfter's
// step until PowerOn.
var ErrPowerCut = errors.New("flash: power cut")

// Flash is a region of NOR flash with a real part's limits: it erases in
// 4 KiB sectors to 0xFF, programming only clears bits (a write over bits
// that are not erased is refused, where a real part would silently AND
// them: the firmware must never rely on that), and every sector counts its
// erase cycles. Power can be cut in the middle of any erase or program.
type Flash struct {
	mu     sync.Mutex
	data   []byte
	erases []int
	steps  int // erase and program operations so far
	cutAt  int // the step that power fails in (0: never)
	dead   bool
}

// NewFlash returns an erased region of size bytes (a multiple of SectorSize).
func NewFlash(size int) *Flash {
	size = (size + SectorSize - 1) / SectorSize * SectorSize
	f := &Flash{data: make([]byte, size), erases: make([]int, size/SectorSize)}
	for i := range f.data {
		f.data[i] = 0xFF
	}
	return f
}

// Size is the region's size in bytes.
func (f *Flash) Size() int64 { return int64(len(f.data)) }

// ReadAt implements io.ReaderAt.
func (f *Flash) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dead {
		return 0, ErrPowerCut
	}
	if off < 0 || off+int64(len(p)) > int64(len(f.data)) {
		return 0, errors.New("flash: out of range")
	}
	return copy(p, f.data[off:]), nil
}

// step counts one erase or program and reports whether power fails during it.
func (f *Flash) step() (cut bool, err error) {
	if f.dead {
		return false, ErrPowerCut
	}
	f.steps++
	if f.cutAt > 0 && f.steps >= f.cutAt {
		f.dead = true
		return true, nil
	}
	return false, nil
}

// WriteAt programs p at off. Every bit p clears must be erased (1) there.
// Power cut during a program leaves its first half programmed.
func (f *Flash) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(f.data)) {
		return 0, errors.New("flash: out of range")
	}
	for i, b := range p {
		if f.data[off+int64(i)]&b != b {
			return 0, fmt.Errorf("flash: program at %#x sets bits that are not erased (erase the sector first)", off+int64(i))
		}
	}
	cut, err := f.step()
	if err != nil {
		return 0, err
	}
	if cut {
		p = p[:len(p)/2]
	}
	for i, b := range p {
		f.data[off+int64(i)] &= b
	}
	if cut {
		return len(p), ErrPowerCut
	}
	return len(p), nil
}

// EraseSector erases the sector at off (a multiple of SectorSize). Power
// cut during an erase leaves its first half erased and the rest as it was.
func (f *Flash) EraseSector(off int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off < 0 || off%SectorSize != 0 || off >= int64(len(f.data)) {
		return fmt.Errorf("flash: erase at %#x: not a sector", off)
	}
	cut, err := f.step()
	if err != nil {
		return err
	}
	n := SectorSize
	if cut {
		n /= 2
	}
	for i := range n {
		f.data[off+int64(i)] = 0xFF
	}
	f.erases[off/SectorSize]++
	if cut {
		return ErrPowerCut
	}
	return nil
}

// Erases returns how often each sector was erased.
func (f *Flash) Erases() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int(nil), f.erases...)
}

// Steps returns how many erase and program operations were made.
func (f *Flash) Steps() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.steps
}

// CutPowerAfter makes power fail during the n-th erase or program from now
// (n ≥ 1); that operation is left half done and every later operation
// fails with ErrPowerCut until PowerOn.
func (f *Flash) CutPowerAfter(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cutAt = f.steps + n
}

// PowerOn restores power (what is in flash stays).
func (f *Flash) PowerOn() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dead, f.cutAt = false, 0
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
	// LatestSample is the latest a read slot was sampled, in µs after its
	// falling edge (the sensor's bit is valid for 15).
	LatestSample int
	// OutsideCritical counts slots not run inside the bus's Critical
	// section (set InCritical from it).
	OutsideCritical int
	// InCritical is set by a test's Critical function while it runs.
	InCritical bool
	// Absent makes the sensor answer no reset (unplugged).
	Absent bool
}

// NewDS18B20 returns a sensor measuring temp °C.
func NewDS18B20(temp float64) *DS18B20 { return &DS18B20{temp: temp} }

// Set changes the temperature measured (seen at the next conversion).
func (d *DS18B20) Set(temp float64) {
	d.mu.Lock()
	d.temp = temp
	d.mu.Unlock()
}

// Bus returns a 1-Wire bus on this sensor's line with its virtual delay,
// its critical sections marked as the board's interrupt switch would.
func (d *DS18B20) Bus() *onewire.Bus {
	return &onewire.Bus{Line: d, Delay: d.Delay, Critical: func(f func()) {
		d.mu.Lock()
		d.InCritical = true
		d.mu.Unlock()
		f()
		d.mu.Lock()
		d.InCritical = false
		d.mu.Unlock()
	}}
}

// SetAbsent unplugs (true) or plugs the sensor back.
func (d *DS18B20) SetAbsent(absent bool) {
	d.mu.Lock()
	d.Absent = absent
	d.mu.Unlock()
}

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
	if !d.InCritical {
		d.OutsideCritical++
	}
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
		return d.Absent || !(since >= 15 && since <= 240) // the presence pulse
	}
	if d.readSlot && !d.sampled {
		d.sampled = true
		d.LatestSample = max(d.LatestSample, d.now-d.slotAt)
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
