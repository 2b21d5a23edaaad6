package simulator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/medpipe/medpipe/wire"
)

// DefaultRate is a simulated device's readings per second: today's devices' rate.
const DefaultRate = 20

// Options configures a Fleet.
type Options struct {
	// Server is the edge's host:port.
	Server string
	// Devices are the simulated devices.
	Devices []Device
	// Rate is readings per second per device (default DefaultRate).
	Rate float64
	// Duration stops the fleet after this long; 0 runs until ctx is cancelled.
	Duration time.Duration
	// Count stops each device after this many readings; 0 is no limit.
	Count int
	// Ramp spreads connection starts over this long (default min(1 s, N ms)).
	Ramp time.Duration
	// Seed makes the signals deterministic.
	Seed int64
	// FeverPerHour is each device's chance per hour of a fever episode.
	FeverPerHour float64
	// Log receives connection events; nil uses slog.Default().
	Log *slog.Logger
	// Adjust, when set, changes each reading before it is sealed (the
	// interactive device applies the operator's settings with it).
	Adjust func(r *wire.Reading)
	// Sensors are the sensor states every v2 device reports (the zero
	// value: all ok); the values of a sensor not ok are sent absent, as
	// the firmware sends a missing DS18B20's temperature.
	Sensors wire.SensorStates
	// Epoch is the v2 devices' boot epoch (see BootEpoch); zero takes the
	// wall clock's seconds.
	Epoch uint32
	// OnSend, when set, is told of each reading written to the edge (the
	// index of the device in Devices, the reading's sequence number, the
	// time of the write), so that a benchmark can time it end to end. It
	// runs on the device's goroutine and must be quick.
	OnSend func(device int, seq uint64, at time.Time)
}

// Stats is a snapshot of a fleet's counters.
type Stats struct {
	Devices, Connected int
	Sent, Reconnects   uint64
	Errors             uint64
	// Acked counts v2 frames the pipeline acknowledged with a verified
	// ACK; Dropped, v2 frames dropped unacknowledged from a full resend
	// buffer or refused for good; Unverified, replies whose MAC did not
	// verify (forged, or for a frame already settled), which drop nothing.
	Acked, Dropped, Unverified uint64
}

// Fleet runs simulated devices.
type Fleet struct {
	o          Options
	connected  atomic.Int64
	sent       atomic.Uint64
	reconnects atomic.Uint64
	errors     atomic.Uint64
	acked      atomic.Uint64
	dropped    atomic.Uint64
	fallMu     sync.Mutex
	falls      map[int]bool // devices asked to fall
	unverified atomic.Uint64
}

// NewFleet checks the options.
func NewFleet(o Options) (*Fleet, error) {
	if o.Server == "" {
		return nil, errors.New("simulator: no server address")
	}
	if len(o.Devices) == 0 {
		return nil, errors.New("simulator: no devices")
	}
	if o.Rate <= 0 {
		o.Rate = DefaultRate
	}
	if o.Ramp <= 0 {
		o.Ramp = min(time.Second, time.Duration(len(o.Devices))*time.Millisecond)
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Epoch == 0 {
		o.Epoch = wallEpoch()
	}
	for _, d := range o.Devices {
		if !d.V2 && d.Variant != wire.Pico && d.Variant != wire.Pseudo {
			return nil, fmt.Errorf("simulator: device %s has no variant", d.ID)
		}
	}
	return &Fleet{o: o}, nil
}

// Fall makes the wearer of device i fall at its next reading.
func (f *Fleet) Fall(i int) {
	f.fallMu.Lock()
	defer f.fallMu.Unlock()
	if f.falls == nil {
		f.falls = map[int]bool{}
	}
	f.falls[i] = true
}

// takeFall reports, once, whether device i was asked to fall.
func (f *Fleet) takeFall(i int) bool {
	f.fallMu.Lock()
	defer f.fallMu.Unlock()
	if !f.falls[i] {
		return false
	}
	delete(f.falls, i)
	return true
}

// Stats returns the fleet's counters.
func (f *Fleet) Stats() Stats {
	return Stats{
		Devices: len(f.o.Devices), Connected: int(f.connected.Load()),
		Sent: f.sent.Load(), Reconnects: f.reconnects.Load(), Errors: f.errors.Load(),
		Acked: f.acked.Load(), Dropped: f.dropped.Load(), Unverified: f.unverified.Load(),
	}
}

// Run runs every device until Duration, Count or ctx ends it. It returns
// ctx's error when cancelled, nil when the devices finished.
func (f *Fleet) Run(ctx context.Context) error {
	if f.o.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.o.Duration)
		defer cancel()
	}
	var wg sync.WaitGroup
	step := f.o.Ramp / time.Duration(len(f.o.Devices))
	for i, d := range f.o.Devices {
		wg.Go(func() { f.runDevice(ctx, i, d, time.Duration(i)*step) })
	}
	wg.Wait()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) && f.o.Duration > 0 {
		return nil
	}
	return ctx.Err()
}

// device is one device's loop state.
type device struct {
	f       *Fleet
	index   int
	d       Device
	key     *wire.LegacyKey
	sig     *Signal
	rng     *rand.Rand
	conn    net.Conn
	buf     []byte
	plain   []byte
	backoff time.Duration
	// everConnected tells a reconnection from a first connection.
	everConnected bool
	v2            *v2Device // nil for legacy devices
}

func (f *Fleet) runDevice(ctx context.Context, i int, d Device, delay time.Duration) {
	dev := &device{
		f: f, index: i, d: d, key: wire.NewLegacyKey(d.Device),
		sig: NewSignal(f.o.Seed*1_000_003+int64(i), f.o.Rate),
		rng: rand.New(rand.NewPCG(uint64(f.o.Seed), uint64(i))),
	}
	dev.sig.FeverPerHour = f.o.FeverPerHour
	if d.V2 {
		dev.v2 = newV2Device(d.Device, f.o.Epoch, &f.unverified)
		dev.v2.sensors = f.o.Sensors
	}
	defer dev.disconnect()
	timer := time.NewTimer(delay)
	defer timer.Stop()
	interval := time.Duration(float64(time.Second) / f.o.Rate)
	next := time.Now().Add(delay)
	for seq := uint64(1); f.o.Count == 0 || seq <= uint64(f.o.Count); {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		if dev.conn == nil && !dev.connect(ctx) {
			timer.Reset(dev.nextBackoff())
			continue
		}
		if err := dev.send(seq); err != nil {
			f.errors.Add(1)
			f.o.Log.Debug("device write failed; reconnecting", "device", d.ID, "err", err)
			dev.disconnect()
			timer.Reset(dev.nextBackoff())
			if dev.v2 != nil && errors.Is(err, errBuffered) {
				seq++ // kept for resending: the next reading is a new one
			}
			// Resume the schedule from now: a device does not send the
			// readings it missed while disconnected in one burst.
			next = time.Now()
			continue
		}
		seq++
		// ±10% jitter around the schedule, without drifting from it.
		next = next.Add(interval)
		jitter := time.Duration((dev.rng.Float64() - 0.5) * 0.2 * float64(interval))
		timer.Reset(max(0, time.Until(next.Add(jitter))))
	}
	if dev.v2 != nil {
		dev.flushV2(ctx)
	}
}

// flushStall is how long a flushing v2 device waits for an ACK before it
// reconnects and resends. ACKs come from decrypt once READINGS holds the
// reading, so they wait behind decrypt's backlog: reconnecting sooner only
// resends frames still queued and adds to that backlog.
const flushStall = 20 * time.Second

// flushV2 keeps a v2 device connected until the edge has acknowledged
// every frame, reconnecting (which resends) when acknowledgements stall.
func (dev *device) flushV2(ctx context.Context) {
	lastProgress, left := time.Now(), dev.v2.outstanding()
	for left > 0 {
		if dev.conn == nil && !dev.connect(ctx) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(dev.nextBackoff()):
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-dev.v2.changed:
		case c := <-dev.v2.ended:
			if c == dev.conn {
				dev.disconnect() // the edge closed the connection: reconnect and resend
			}
			continue
		case <-time.After(time.Second):
		}
		if n := dev.v2.outstanding(); n < left {
			left, lastProgress = n, time.Now()
		} else if time.Since(lastProgress) > flushStall {
			dev.disconnect() // the pipeline went quiet: reconnect and resend
			lastProgress = time.Now()
		}
	}
}

func (dev *device) connect(ctx context.Context) bool {
	var dialer net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := dialer.DialContext(dctx, "tcp", dev.f.o.Server)
	if err != nil {
		dev.f.errors.Add(1)
		return false
	}
	if dev.everConnected {
		dev.f.reconnects.Add(1)
	}
	dev.everConnected = true
	dev.conn = c
	dev.backoff = 0
	dev.f.connected.Add(1)
	if dev.v2 != nil {
		go dev.v2.readReplies(c, func() { dev.f.acked.Add(1) }, func(code byte, dropped bool) {
			if dropped {
				dev.f.dropped.Add(1)
			}
			dev.f.errors.Add(1)
			dev.f.o.Log.Debug("pipeline refused a frame", "device", dev.d.ID, "code", code)
		})
		// Resend, in order, what the edge has not acknowledged; a saturated
		// edge must not hold the device (and a stopping fleet) for ever.
		for _, frame := range dev.v2.pending() {
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(frame); err != nil || ctx.Err() != nil {
				dev.f.errors.Add(1)
				dev.disconnect()
				return false
			}
		}
	}
	return true
}

func (dev *device) disconnect() {
	if dev.conn != nil {
		dev.conn.Close()
		dev.conn = nil
		dev.f.connected.Add(-1)
	}
}

// sentOne counts reading seq as sent (a v2 frame kept for resending is
// sent as far as the device is concerned) and reports it.
func (dev *device) sentOne(seq uint64, at time.Time) {
	dev.f.sent.Add(1)
	if dev.f.o.OnSend != nil {
		dev.f.o.OnSend(dev.index, seq, at)
	}
}

// nextBackoff returns a full-jitter exponential backoff: 100 ms doubling to 5 s.
func (dev *device) nextBackoff() time.Duration {
	dev.backoff = min(max(2*dev.backoff, 100*time.Millisecond), 5*time.Second)
	return time.Duration(dev.rng.Int64N(int64(dev.backoff)) + 1)
}

// errBuffered is a v2 write failure: the frame stays buffered and is resent
// after the reconnect.
var errBuffered = errors.New("simulator: v2 frame kept for resending")

// send writes reading seq as one frame in one write, like the firmware.
func (dev *device) send(seq uint64) error {
	if dev.f.takeFall(dev.index) {
		dev.sig.Fall()
	}
	r := dev.sig.Next(seq)
	EncodeSeq(&r, seq)
	if dev.f.o.Adjust != nil {
		dev.f.o.Adjust(&r)
	}
	if dev.v2 != nil {
		frame, dropped, err := dev.v2.seal(seq, r, dev.sig)
		if err != nil {
			return err
		}
		if dropped {
			dev.f.dropped.Add(1)
		}
		if dev.v2.isHalted() {
			// Kept (the oldest dropped when the buffer is full), not sent:
			// the pipeline refused this key; an ACK resumes.
			return nil
		}
		dev.buf = append(dev.buf[:0], frame...)
	} else {
		dev.plain = r.AppendJSON(dev.plain[:0])
		dev.buf = dev.key.Seal(dev.buf[:0], dev.d.Variant, dev.plain)
	}
	_ = dev.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	at := time.Now()
	if _, err := dev.conn.Write(dev.buf); err != nil {
		if dev.v2 != nil {
			dev.sentOne(seq, at)
			return fmt.Errorf("%w: %w", errBuffered, err)
		}
		return err
	}
	dev.sentOne(seq, at)
	return nil
}
