// Package device is the firmware of the medpipe wearable (Raspberry Pi
// Pico + ESP8266): configuration mode (an access point serving an encrypted
// configuration form) and working mode (sample the sensors, seal readings,
// send them to the medpipe edge). It is plain Go behind small hardware
// interfaces; board bindings for TinyGo live in package board.
package device

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/medpipe/medpipe/firmware/esp"
	"github.com/medpipe/medpipe/firmware/onewire"
	"github.com/medpipe/medpipe/firmware/sensors"
	"github.com/medpipe/medpipe/provision"
)

// Pin is a digital input.
type Pin interface{ Get() bool }

// LED is the status LED.
type LED interface{ Set(on bool) }

// Board is the hardware the firmware runs on.
type Board struct {
	UART         io.ReadWriter  // to the ESP8266, 115200 baud
	I2C          sensors.I2C    // MPU6050 (SDA GP14, SCL GP15)
	Pulse        sensors.ADC    // pulse sensor (ADC0, GP26)
	ChipTemp     func() float64 // RP2040 temperature diode (ADC4), °C
	OneWire      *onewire.Bus   // DS18B20 (GP16)
	ConfigSwitch Pin            // slide switch: high selects configuration mode (GP3)
	LED          LED            // GP2
	Storage      Storage        // a flash region of StorageSize bytes
	// Noise is optional hardware noise (the RP2040's ring oscillator) mixed
	// into configuration challenges. Nothing relies on it: TinyGo serves
	// no crypto/rand on the RP2040, so challenges and nonces are unique by
	// construction (boot epoch and counter).
	Noise    io.Reader
	Factory  Factory          // zero: read from the storage's factory block
	Log      func(string)     // where status lines go (USB serial); nil: nowhere
	Watchdog Watchdog         // the hardware watchdog; nil: none
	Clock    func() time.Time // wall clock; nil: time.Now
}

// Watchdog is a hardware watchdog: once started, it resets the chip unless
// fed within its timeout.
type Watchdog interface {
	Start()
	Feed()
}

// Factory is what each device carries from manufacturing, printed on its
// label: the block `medpipe keys add ID --firmware-config` writes.
type Factory = provision.Factory

// Options tunes the firmware; zero values take the defaults.
type Options struct {
	Period       time.Duration // between readings (default 50 ms: 20 readings/s)
	PulseRate    int           // pulse samples per second in v2 batches (default 250)
	OutboxFrames int           // v2 frames kept until acknowledged (default 200: 10 s at 20/s)
	OutboxBytes  int           // and their bytes (default 64 KiB of the Pico's 264 KiB RAM)
	Readings     int           // stop after this many readings (0: never; for tests)
	// SNTPServers set the clock of v2 readings through the ESP8266 (at most
	// three; default pool.ntp.org). Until the module has the time, readings
	// carry the Pico's uptime clock.
	SNTPServers []string
	ESP         esp.Options

	pulseTicks <-chan time.Time // tests: drive the pulse sampler
}

func (o *Options) defaults() {
	if o.Period <= 0 {
		o.Period = 50 * time.Millisecond
	}
	if o.PulseRate <= 0 {
		o.PulseRate = 250
	}
	if o.OutboxFrames <= 0 {
		o.OutboxFrames = 200
	}
	if o.OutboxBytes <= 0 {
		o.OutboxBytes = 64 << 10
	}
	if len(o.SNTPServers) == 0 {
		o.SNTPServers = []string{"pool.ntp.org"}
	}
}

// Device is the firmware's state.
type Device struct {
	b       *Board
	o       Options
	modem   *esp.Modem
	sampler atomic.Pointer[sampler] // working mode's pulse sampler
	due     atomic.Int64            // when the main loop must check in again (Unix ns)
	sensors atomic.Uint32           // working mode's Sensors, packed
	halted  atomic.Bool             // a verified refusal stopped sending (see Halted)
	Stats   Stats
}

// Halted reports whether the pipeline refused this device's frames in a
// way that stops it sending until reprovisioned (its key revoked, or it is
// pinned to another protocol): it keeps its readings, sends one as a probe
// now and then, and resumes when the probe is acknowledged.
func (d *Device) Halted() bool { return d.halted.Load() }

// Main loop check-ins: a loop that does not check in within aliveFor (the
// longest step, joining Wi-Fi, takes 20 s) stops the watchdog's feeding,
// and the watchdog resets the chip a few seconds later.
const (
	aliveFor  = 30 * time.Second
	feedEvery = time.Second
)

// alive is the main loop's check-in.
func (d *Device) alive() { d.due.Store(time.Now().Add(aliveFor).UnixNano()) }

// watch feeds the hardware watchdog while the main loop checks in. On
// TinyGo's cooperative scheduler it also catches a loop that spins without
// yielding: then watch itself never runs.
func (d *Device) watch(ctx context.Context) {
	wd := d.b.Watchdog
	if wd == nil {
		return
	}
	d.alive()
	wd.Start()
	t := time.NewTicker(feedEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if time.Now().UnixNano() < d.due.Load() {
				wd.Feed()
			}
		}
	}
}

// Sensors returns the sensors' states as working mode last saw them.
func (d *Device) Sensors() Sensors {
	v := d.sensors.Load()
	return Sensors{Temp: SensorState(v), Motion: SensorState(v >> 8)}
}

// pulseCounts reads the pulse sampler's counters while working mode runs.
func (d *Device) pulseCounts() (taken, missed uint64) {
	if s := d.sampler.Load(); s != nil {
		return s.counts()
	}
	return 0, 0
}

// Stats counts what the device did (shown by LED patterns on hardware, read
// by tests on a host).
type Stats struct {
	Readings, Sent, Acked, Dropped, Reconnects, SensorErrors uint64
	// PulseSamples counts pulse samples taken, PulseMissed the sampler's
	// ticks that came too late to be taken (as of the last reading).
	PulseSamples, PulseMissed uint64
	// The pipeline's verified refusals (PROTOCOL.md): Replayed frames were
	// sealed again under a new boot epoch; Invalid (a firmware bug) and
	// Tampered (altered on the way twice) frames were dropped; Halts counts
	// refusals that stopped sending (key revoked, protocol pinned).
	// EdgeErrors counts the edge's unauthenticated ERROR frames; Unanswered,
	// v2 links that ended before any reply verified (an unknown device's).
	Replayed, Invalid, Tampered, Halts, EdgeErrors, Unanswered uint64
}

// New prepares the firmware on b.
func New(b *Board, o Options) *Device {
	o.defaults()
	if b.Clock == nil {
		b.Clock = time.Now
	}
	return &Device{b: b, o: o, modem: esp.New(b.UART, o.ESP)}
}

func (d *Device) log(format string, args ...any) {
	if d.b.Log != nil {
		d.b.Log(fmt.Sprintf(format, args...))
	}
}

// Run is the firmware's main loop: configuration mode when the switch asks
// for it or flash holds no configuration, then working mode until ctx ends.
func (d *Device) Run(ctx context.Context) error {
	watching, stop := context.WithCancel(ctx)
	defer stop()
	go d.watch(watching)
	cfg, err := LoadConfig(d.b.Storage)
	if d.b.ConfigSwitch.Get() || errors.Is(err, ErrNoConfig) {
		if d.b.Factory == (Factory{}) {
			f, ferr := LoadFactory(d.b.Storage)
			if ferr != nil {
				// No per-device secrets: an access point with published
				// defaults would let anyone configure the device.
				return fmt.Errorf("device: configuration mode needs the factory block (medpipe keys add ID --firmware-config): %w", ferr)
			}
			d.b.Factory = f
		}
		if cfg, err = d.Configure(ctx); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	return d.Work(ctx, cfg)
}

// blink shows an error: n short flashes.
func (d *Device) blink(n int) {
	for range n {
		d.b.LED.Set(true)
		time.Sleep(80 * time.Millisecond)
		d.b.LED.Set(false)
		time.Sleep(80 * time.Millisecond)
	}
}
