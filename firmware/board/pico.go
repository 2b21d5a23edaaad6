//go:build tinygo && rp2040

package board

import (
	"errors"
	"machine"
	"runtime/interrupt"
	"time"

	"github.com/medpipe/medpipe/firmware/device"
	"github.com/medpipe/medpipe/firmware/onewire"
	"github.com/medpipe/medpipe/provision"
)

// Wiring is how the mode switch and the LED are connected.
type Wiring int

// The two boards in use (firmware/README.md, "Wiring").
const (
	// WiringOld is the first board: GP2 is driven high as the slide
	// switch's common, GP3 (configuration) and GP4 (working) read it
	// active-high with pull-downs; the status LED is the Pico's own (GP25).
	WiringOld Wiring = iota
	// WiringNew is the later board: the switch's common is ground, GP3 and
	// GP4 read it active-low with pull-ups; the status LED is on GP2.
	WiringNew
)

// Pins of the medpipe wearable that both wirings share.
const (
	pinOneWire  = machine.GP16
	pinPulse    = machine.ADC0 // GP26
	pinI2CSDA   = machine.GP14
	pinI2CSCL   = machine.GP15
	pinConfig   = machine.GP3
	pinWorking  = machine.GP4
	espBaudRate = 115200
	// watchdogMillis is the hardware watchdog's timeout (the RP2040's
	// longest is ~8.3 s); device.Device feeds it while its main loop
	// makes progress.
	watchdogMillis = 8000
)

// New configures the hardware for wiring w and returns the firmware's
// Board. The per-device secrets come from the factory block in flash.
func New(w Wiring) (*device.Board, error) {
	uart := machine.UART0
	if err := uart.Configure(machine.UARTConfig{BaudRate: espBaudRate, TX: machine.UART0_TX_PIN, RX: machine.UART0_RX_PIN}); err != nil {
		return nil, err
	}
	i2c := machine.I2C1
	if err := i2c.Configure(machine.I2CConfig{SDA: pinI2CSDA, SCL: pinI2CSCL, Frequency: 400 * machine.KHz}); err != nil {
		return nil, err
	}
	machine.InitADC()
	pulse := machine.ADC{Pin: pinPulse}
	pulse.Configure(machine.ADCConfig{})
	pinOneWire.Configure(machine.PinConfig{Mode: machine.PinInputPullup})

	sw := switchPin{p: pinConfig}
	var led machine.Pin
	switch w {
	case WiringOld:
		common := machine.GP2
		common.Configure(machine.PinConfig{Mode: machine.PinOutput})
		common.High()
		pinConfig.Configure(machine.PinConfig{Mode: machine.PinInputPulldown})
		pinWorking.Configure(machine.PinConfig{Mode: machine.PinInputPulldown})
		sw.activeHigh = true
		led = machine.LED // GP25, on the Pico itself
	case WiringNew:
		pinConfig.Configure(machine.PinConfig{Mode: machine.PinInputPullup})
		pinWorking.Configure(machine.PinConfig{Mode: machine.PinInputPullup})
		led = machine.GP2
	default:
		return nil, errors.New("board: unknown wiring")
	}
	led.Configure(machine.PinConfig{Mode: machine.PinOutput})

	storage, err := newFlashRegion()
	if err != nil {
		return nil, err
	}
	if err := machine.Watchdog.Configure(machine.WatchdogConfig{TimeoutMillis: watchdogMillis}); err != nil {
		return nil, err
	}
	return &device.Board{
		UART:     blockingUART{uart},
		I2C:      i2c,
		Pulse:    pulse,
		ChipTemp: func() float64 { return float64(machine.ReadTemperature()) / 1000 },
		OneWire: &onewire.Bus{Line: oneWireLine{pinOneWire}, Delay: busyWait, Critical: func(f func()) {
			state := interrupt.Disable()
			f()
			interrupt.Restore(state)
		}},
		ConfigSwitch: sw,
		LED:          ledPin{led},
		Storage:      storage,
		Noise:        ringOscillator{},
		Watchdog:     watchdog{},
		Log:          func(s string) { println(s) },
	}, nil
}

// blockingUART makes the UART's Read wait for data: machine.UART returns
// 0, nil when its buffer is empty, which bufio treats as no progress.
type blockingUART struct{ u *machine.UART }

func (b blockingUART) Read(p []byte) (int, error) {
	for b.u.Buffered() == 0 {
		time.Sleep(200 * time.Microsecond) // lets the scheduler run other goroutines
	}
	return b.u.Read(p)
}

func (b blockingUART) Write(p []byte) (int, error) { return b.u.Write(p) }

// oneWireLine drives the open-drain data line: output low, or input with
// the pull-up.
type oneWireLine struct{ p machine.Pin }

func (l oneWireLine) Low() {
	l.p.Configure(machine.PinConfig{Mode: machine.PinOutput})
	l.p.Low()
}

func (l oneWireLine) Release() { l.p.Configure(machine.PinConfig{Mode: machine.PinInputPullup}) }

func (l oneWireLine) Read() bool { return l.p.Get() }

// busyWait waits us microseconds without yielding: 1-Wire slots allow a
// few microseconds of error, more than a goroutine switch can promise.
// The RP2040's timer counts microseconds with interrupts off too.
func busyWait(us int) {
	end := time.Now().Add(time.Duration(us) * time.Microsecond)
	for time.Now().Before(end) {
	}
}

// switchPin reads the slide switch's configuration position.
type switchPin struct {
	p          machine.Pin
	activeHigh bool
}

func (s switchPin) Get() bool { return s.p.Get() == s.activeHigh }

type ledPin struct{ p machine.Pin }

func (l ledPin) Set(on bool) { l.p.Set(on) }

// ringOscillator reads the RP2040's ring oscillator: noise, not a
// cryptographic RNG (TinyGo serves no crypto/rand on the RP2040 for that
// reason), mixed into challenges that are unique without it.
type ringOscillator struct{}

func (ringOscillator) Read(p []byte) (int, error) {
	for i := 0; i < len(p); i += 4 {
		v, err := machine.GetRNG()
		if err != nil {
			return i, err
		}
		for j := 0; j < 4 && i+j < len(p); j++ {
			p[i+j] = byte(v >> (8 * j))
		}
	}
	return len(p), nil
}

type watchdog struct{}

func (watchdog) Start() { _ = machine.Watchdog.Start() }
func (watchdog) Feed()  { machine.Watchdog.Update() }

// flashRegion is the device's storage region: the last
// provision.RegionSize bytes of the Pico's 2 MiB flash, where a UF2 copied
// by the operator puts the factory block and no firmware image reaches.
type flashRegion struct {
	base int64 // offset of the region from machine.Flash's data start
	page [256]byte
}

func newFlashRegion() (*flashRegion, error) {
	start := int64(machine.FlashDataStart())
	base := int64(provision.RegionAddr) - start
	if base < 0 || int64(machine.FlashDataEnd()) < int64(provision.RegionAddr)+provision.RegionSize {
		return nil, errors.New("board: the firmware image reaches into the storage region at the end of flash")
	}
	return &flashRegion{base: base}, nil
}

func (r *flashRegion) check(off int64, n int) error {
	if off < 0 || off+int64(n) > provision.RegionSize {
		return errors.New("board: storage access out of range")
	}
	return nil
}

func (r *flashRegion) ReadAt(p []byte, off int64) (int, error) {
	if err := r.check(off, len(p)); err != nil {
		return 0, err
	}
	return machine.Flash.ReadAt(p, r.base+off)
}

// WriteAt programs p at off, page by page (the boot ROM programs whole
// 256-byte pages at page boundaries): the rest of each page is programmed
// with what it holds, which leaves it unchanged.
func (r *flashRegion) WriteAt(p []byte, off int64) (int, error) {
	if err := r.check(off, len(p)); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		at := off + int64(done)
		pageOff := at &^ 255
		if _, err := machine.Flash.ReadAt(r.page[:], r.base+pageOff); err != nil {
			return done, err
		}
		n := copy(r.page[at-pageOff:], p[done:])
		if _, err := machine.Flash.WriteAt(r.page[:], r.base+pageOff); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

func (r *flashRegion) EraseSector(off int64) error {
	if err := r.check(off, provision.SectorSize); err != nil || off%provision.SectorSize != 0 {
		return errors.New("board: erase out of range or not at a sector")
	}
	return machine.Flash.EraseBlocks((r.base+off)/machine.Flash.EraseBlockSize(), 1)
}
