//go:build tinygo && rp2040

package board

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"machine"
	"time"

	"github.com/medpipe/medpipe/firmware/device"
	"github.com/medpipe/medpipe/firmware/onewire"
)

// Pins of the medpipe wearable.
const (
	pinLED       = machine.GP2
	pinConfig    = machine.GP3 // slide switch: pulled to ground in configuration position
	pinWorking   = machine.GP4
	pinOneWire   = machine.GP16
	pinPulse     = machine.ADC0 // GP26
	pinI2CSDA    = machine.GP14
	pinI2CSCL    = machine.GP15
	espBaudRate  = 115200
	storageBlock = 0 // first erase block of the flash data area (after the program)
)

// New configures the hardware and returns the firmware's Board.
// provisioningKey is 32 hex digits (set at build time per device).
func New(serial, apPassword, provisioningKey string) (*device.Board, error) {
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
	pinLED.Configure(machine.PinConfig{Mode: machine.PinOutput})
	pinConfig.Configure(machine.PinConfig{Mode: machine.PinInputPullup})
	pinWorking.Configure(machine.PinConfig{Mode: machine.PinInputPullup})
	pinOneWire.Configure(machine.PinConfig{Mode: machine.PinInputPullup})

	var f device.Factory
	key, err := hex.DecodeString(provisioningKey)
	if err != nil || len(key) != 16 {
		return nil, errors.New("board: provisioning key must be 32 hex digits")
	}
	copy(f.ProvisioningKey[:], key)
	f.Serial, f.APPassword = serial, apPassword
	return &device.Board{
		UART:         blockingUART{uart},
		I2C:          i2c,
		Pulse:        pulse,
		ChipTemp:     func() float64 { return float64(machine.ReadTemperature()) / 1000 },
		OneWire:      &onewire.Bus{Line: oneWireLine{pinOneWire}, Delay: busyWait},
		ConfigSwitch: switchPin{pinConfig},
		LED:          ledPin{pinLED},
		Storage:      &flashStorage{},
		Rand:         rand.Reader,
		Factory:      f,
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
func busyWait(us int) {
	end := time.Now().Add(time.Duration(us) * time.Microsecond)
	for time.Now().Before(end) {
	}
}

type switchPin struct{ p machine.Pin }

// Get reports configuration mode: the switch pulls the pin to ground.
func (s switchPin) Get() bool { return !s.p.Get() }

type ledPin struct{ p machine.Pin }

func (l ledPin) Set(on bool) { l.p.Set(on) }

// flashStorage keeps the device's region in the first erase block of the
// flash data area. Flash must be erased before it is programmed, so a write
// reads the block, changes it in RAM, erases and programs it whole.
type flashStorage struct{ block [4096]byte }

func (s *flashStorage) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(s.block)) {
		return 0, errors.New("board: storage read out of range")
	}
	return machine.Flash.ReadAt(p, storageBlock*machine.Flash.EraseBlockSize()+off)
}

func (s *flashStorage) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(s.block)) {
		return 0, errors.New("board: storage write out of range")
	}
	base := storageBlock * machine.Flash.EraseBlockSize()
	if _, err := machine.Flash.ReadAt(s.block[:], base); err != nil {
		return 0, err
	}
	copy(s.block[off:], p)
	if err := machine.Flash.EraseBlocks(storageBlock, 1); err != nil {
		return 0, err
	}
	if _, err := machine.Flash.WriteAt(s.block[:], base); err != nil {
		return 0, err
	}
	return len(p), nil
}
