// Package sensors reads the device's sensors through small hardware
// interfaces: the MPU6050 accelerometer on I2C, the pulse sensor and the
// RP2040's temperature diode on the ADC.
package sensors

import (
	"errors"
	"fmt"
	"slices"
)

// I2C is a bus transaction: write w to the device at addr, then read into r.
type I2C interface {
	Tx(addr uint16, w, r []byte) error
}

// ADC is one analog input, full scale 0-65535 (TinyGo's machine.ADC.Get).
type ADC interface {
	Get() uint16
}

// MPU6050 registers and scale (datasheet).
const (
	MPU6050Address = 0x68
	regPowerMgmt1  = 0x6B
	regAccelConfig = 0x1C
	regAccelXOut   = 0x3B
	regWhoAmI      = 0x75
	accelPerG      = 16384 // LSB per g at ±2 g
)

// MPU6050 is the accelerometer (with its own temperature sensor).
type MPU6050 struct {
	Bus  I2C
	Addr uint16 // MPU6050Address when zero
}

func (m MPU6050) addr() uint16 {
	if m.Addr == 0 {
		return MPU6050Address
	}
	return m.Addr
}

// MPU6050WhoAmI are the WHO_AM_I answers of the MPU6050 and of the clones
// sold as one (MPU6500-family dies answer 0x70, 0x72 and 0x98); they share
// the registers the firmware uses.
var MPU6050WhoAmI = []byte{0x68, 0x70, 0x72, 0x98}

// ErrMPU6050Unknown means a device answered on the address with a WHO_AM_I
// that is none of MPU6050WhoAmI.
var ErrMPU6050Unknown = errors.New("mpu6050: unknown WHO_AM_I")

// Configure wakes the sensor and sets the ±2 g range. A sensor that does
// not answer, or answers as an unknown chip, is an error: it would send
// zeros for ever if left asleep.
func (m MPU6050) Configure() error {
	id := []byte{0}
	if err := m.Bus.Tx(m.addr(), []byte{regWhoAmI}, id); err != nil {
		return fmt.Errorf("mpu6050: %w", err)
	}
	if !slices.Contains(MPU6050WhoAmI, id[0]) {
		return fmt.Errorf("%w %#x", ErrMPU6050Unknown, id[0])
	}
	if err := m.Bus.Tx(m.addr(), []byte{regPowerMgmt1, 0}, nil); err != nil {
		return fmt.Errorf("mpu6050: wake: %w", err)
	}
	return m.Bus.Tx(m.addr(), []byte{regAccelConfig, 0}, nil)
}

// Motion is one accelerometer sample.
type Motion struct {
	X, Y, Z float64 // g
	Temp    float64 // °C, the chip's own temperature
}

// Read reads acceleration and temperature in one burst.
func (m MPU6050) Read() (Motion, error) {
	var b [8]byte
	if err := m.Bus.Tx(m.addr(), []byte{regAccelXOut}, b[:]); err != nil {
		return Motion{}, fmt.Errorf("mpu6050: %w", err)
	}
	word := func(i int) float64 { return float64(int16(uint16(b[i])<<8 | uint16(b[i+1]))) }
	return Motion{
		X: word(0) / accelPerG, Y: word(2) / accelPerG, Z: word(4) / accelPerG,
		Temp: word(6)/340 + 36.53,
	}, nil
}

// Volts converts an ADC reading to volts at the Pico's 3.3 V reference.
func Volts(raw uint16) float64 { return float64(raw) * 3.3 / 65535 }

// ChipTemperature converts the RP2040 temperature diode's ADC reading (ADC4)
// to °C (RP2040 datasheet, 4.9.5).
func ChipTemperature(raw uint16) float64 { return 27 - (Volts(raw)-0.706)/0.001721 }
