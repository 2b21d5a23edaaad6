package device

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/medpipe/medpipe/firmware/esp"
	"github.com/medpipe/medpipe/firmware/onewire"
	"github.com/medpipe/medpipe/firmware/sensors"
	"github.com/medpipe/medpipe/wire"
)

// Work runs working mode: join the Wi-Fi network, connect to the edge,
// then sample, seal and send a reading every Period, reconnecting as
// needed. v2 frames stay in an outbox until the edge acknowledges them and
// are resent after a reconnect; legacy readings made while disconnected
// are dropped (legacy has no acknowledgement to resend by) and counted.
func (d *Device) Work(ctx context.Context, cfg Config) error {
	d.log("working mode: device %s, server %s:%d, protocol %s", cfg.Device.ID, cfg.Server, cfg.Port, cfg.Protocol)
	w := &worker{d: d, cfg: cfg, acks: make(chan wire.V2Frame, 64), outbox: wire.NewOutbox(d.o.OutboxFrames, d.o.OutboxBytes)}
	if cfg.Protocol == ProtocolLegacy {
		w.legacy = wire.NewLegacyKey(cfg.Device)
	} else {
		w.v2 = wire.NewV2Key(cfg.Device)
		epoch, err := NextBootEpoch(d.b.Storage)
		if err != nil {
			return fmt.Errorf("device: boot epoch: %w", err)
		}
		w.seq = uint64(epoch) << 32
		d.log("boot epoch %d", epoch)
	}
	w.sensors = sensorSet{mpu: sensors.MPU6050{Bus: d.b.I2C}, ds: onewire.DS18B20{Bus: d.b.OneWire}}
	w.sensors.start(time.Now())
	w.reportSensors()
	return w.run(ctx)
}

type worker struct {
	d        *Device
	cfg      Config
	legacy   *wire.LegacyKey
	v2       *wire.V2Key
	seq      uint64 // last sequence number used: boot epoch << 32 | counter
	outbox   *wire.Outbox
	acks     chan wire.V2Frame // replies from the pipeline, verified by settle
	link     *esp.Link
	sensors  sensorSet
	reported Sensors // the sensor states last logged

	pulse       *sampler
	samples     []float64 // the pulse samples of the reading being made
	codes       []uint16  // the same as 12-bit ADC codes, as v2 carries them
	backoff     time.Duration
	nextConnect time.Time
	buf, plain  []byte

	clockOffset time.Duration // SNTP time minus Board.Clock
	clockSet    bool
	nextClock   time.Time // when to read the module's clock again

	halted     bool      // a verified refusal stopped sending (Device.Halted)
	answered   bool      // a reply verified on the current link
	unanswered int       // v2 links in a row that ended with no verified reply
	nextProbe  time.Time // when a halted device sends its oldest frame again
	errBackoff time.Duration
	retry      []uint64 // frames the edge could not store (ERROR 3), resent at retryAt
	retryAt    time.Time
}

// haltProbe is how often a halted device sends one frame to learn whether
// it may send again (an operator restored its key).
const haltProbe = time.Minute

// Clock resync intervals: until the module has the time, and after.
const (
	clockRetry  = 10 * time.Second
	clockResync = time.Hour
)

// now is the device's wall clock: the board's, corrected by SNTP.
func (w *worker) now() time.Time { return w.d.b.Clock().Add(w.clockOffset) }

// syncClock reads the module's clock when due. v2 readings carry the
// device's time; legacy ones carry none, so legacy devices never ask.
func (w *worker) syncClock(ctx context.Context) {
	if w.v2 != nil && !time.Now().Before(w.nextClock) {
		w.readClock(ctx)
	}
}

// readClock reads the ESP8266's SNTP clock, corrects the device's clock by
// it, and sets when to read it next.
func (w *worker) readClock(ctx context.Context) {
	w.nextClock = time.Now().Add(clockRetry)
	t, err := w.d.modem.SNTPTime(ctx)
	if err != nil {
		if !errors.Is(err, esp.ErrNotSynced) {
			// Not a clock still unset: an AT firmware without SNTP, say.
			w.d.log("clock: %v", err)
			w.nextClock = time.Now().Add(clockResync)
		}
		return
	}
	// The module tells whole seconds: the time is within the second after t.
	off := t.Add(500 * time.Millisecond).Sub(w.d.b.Clock())
	w.nextClock = time.Now().Add(clockResync)
	d := off - w.clockOffset
	if w.clockSet && d >= -time.Second && d <= time.Second {
		// Within the module's rounding (a crystal drifts 0.2 s an hour):
		// a step would only make readings' times go back and forth.
		return
	}
	w.d.log("clock set by SNTP: %s (moved %v)", t.Format(time.RFC3339), d.Round(time.Millisecond))
	// The pulse samples gathered so far move with the clock: the sampler
	// notes the board's clock, corrected when a reading takes them.
	w.clockOffset, w.clockSet = off, true
}

func (w *worker) run(ctx context.Context) error {
	d := w.d
	if err := w.join(ctx); err != nil {
		return err
	}
	readingTick := time.NewTicker(d.o.Period)
	defer readingTick.Stop()
	defer func() {
		if w.link != nil {
			w.link.Close()
		}
	}()
	// The pulse sensor is sampled on its own goroutine: a send waiting on
	// the UART (or on a busy module) must not cost samples.
	sampling, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	w.pulse = newSampler(d.b.Pulse, d.b.Clock, time.Second/time.Duration(d.o.PulseRate), wire.MaxPulseSeconds*d.o.PulseRate)
	d.sampler.Store(w.pulse)
	go w.pulse.run(sampling, d.o.pulseTicks)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-w.acks:
			w.settle(ctx, &r)
		case <-readingTick.C:
			d.alive()
			w.syncClock(ctx)
			if err := w.reading(ctx); err != nil {
				return err
			}
			if d.o.Readings > 0 && d.Stats.Readings >= uint64(d.o.Readings) {
				return w.flush(ctx)
			}
		}
	}
}

// join joins the configured network, retrying with backoff: a ward's
// access point may be down for a while.
func (w *worker) join(ctx context.Context) error {
	m := w.d.modem
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		w.d.alive()
		err := m.Sync(ctx)
		if err == nil {
			err = m.SetMode(ctx, esp.ModeStation)
		}
		if err == nil {
			err = m.Join(ctx, w.cfg.WiFiSSID, w.cfg.WiFiPassword)
		}
		if err == nil {
			w.d.log("joined Wi-Fi %q", w.cfg.WiFiSSID)
			w.startClock(ctx)
			return nil
		}
		w.d.log("Wi-Fi: %v; retrying in %v", err, wait)
		w.d.blink(2)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// startClock has the module keep time by SNTP and waits a little for it,
// so that the first readings carry the right time. An AT firmware without
// SNTP leaves the device on its uptime clock.
func (w *worker) startClock(ctx context.Context) {
	if w.v2 == nil {
		return
	}
	if err := w.d.modem.SNTP(ctx, w.d.o.SNTPServers...); err != nil {
		w.d.log("clock: SNTP: %v", err)
		return
	}
	for range 10 {
		w.readClock(ctx)
		if w.clockSet {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
	w.d.log("clock: no SNTP time yet; readings carry the uptime clock until it comes")
}

// sample reads every sensor into a reading's values. A sensor that is not
// SensorOK leaves its values 0: the state says they are absent.
func (w *worker) sample() wire.V2Values {
	d := w.d
	d.Stats.SensorErrors += uint64(w.sensors.read(time.Now()))
	w.reportSensors()
	v := wire.V2Values{TempMcu: d.b.ChipTemp(), PulseSig: w.pulse.lastValue()}
	if w.sensors.state.Temp == SensorOK {
		v.Temp = w.sensors.temp
	}
	if m := w.sensors.motion; w.sensors.state.Motion == SensorOK {
		v.AcelX, v.AcelY, v.AcelZ, v.TempMpu = m.X, m.Y, m.Z, m.Temp
	}
	return v
}

// reportSensors logs a change of a sensor's state and publishes the
// states to Device.Sensors.
func (w *worker) reportSensors() {
	st := w.sensors.state
	if st != w.reported || w.d.Stats.Readings == 0 {
		w.d.log("sensors: temperature %s, motion %s", st.Temp, st.Motion)
		w.reported = st
	}
	w.d.sensors.Store(uint32(st.Temp) | uint32(st.Motion)<<8)
}

// reading makes, seals and sends one reading.
func (w *worker) reading(ctx context.Context) error {
	d := w.d
	vals := w.sample()
	d.Stats.Readings++
	d.Stats.PulseSamples, d.Stats.PulseMissed = w.pulse.counts()
	var frame []byte
	if w.v2 != nil {
		if uint32(w.seq+1) == 0 {
			// The counter is used up (2^32 readings: 6.8 years at 20/s):
			// a new boot epoch goes on from a fresh counter.
			epoch, err := NextBootEpoch(d.b.Storage)
			if err != nil {
				return fmt.Errorf("device: boot epoch: %w", err)
			}
			w.seq = uint64(epoch) << 32
		}
		w.seq++
		// The states say which values are measurements: a missing
		// DS18B20's temperature travels as absent, never as 0 °C.
		p := wire.V2Payload{Time: w.now().UnixMilli(), Values: vals, Sensors: w.sensors.state.Wire()}
		var start time.Time
		w.samples, start = w.pulse.take(w.samples[:0])
		if len(w.samples) > 0 {
			w.codes = w.codes[:0]
			for _, v := range w.samples {
				w.codes = append(w.codes, wire.PulseCode(v))
			}
			p.Pulse = &wire.PulseCodes{Rate: uint16(d.o.PulseRate), Start: start.Add(w.clockOffset).UnixMilli(), Codes: w.codes}
		}
		var err error
		if w.plain, err = wire.AppendV2Payload(w.plain[:0], &p); err != nil {
			return err
		}
		// The nonce comes from the sequence number (wire.V2Key.Nonce):
		// unique under the key by construction (the boot epoch never
		// repeats), with no RNG.
		f, err := w.v2.SealData(nil, w.seq, w.plain)
		if err != nil {
			return err
		}
		d.Stats.Dropped += uint64(w.outbox.Add(w.seq, f))
		frame = f
		if w.halted {
			// Kept, not sent (the oldest dropped when the outbox is full);
			// now and then the oldest goes out as a probe.
			w.probe(ctx)
			return nil
		}
		w.resendRetries(ctx)
	} else {
		w.samples, _ = w.pulse.take(w.samples[:0]) // legacy carries the last value only
		r := vals.Reading()
		w.plain = r.AppendJSON(w.plain[:0])
		w.buf = w.legacy.Seal(w.buf[:0], wire.Pico, w.plain)
		frame = w.buf
	}
	if !w.connected(ctx) {
		if w.legacy != nil {
			d.Stats.Dropped++
		}
		return nil
	}
	if _, err := w.link.WriteContext(ctx, frame); err != nil {
		w.lost(err)
		return nil
	}
	d.Stats.Sent++
	d.b.LED.Set(d.Stats.Sent%10 < 5) // a slow blink: working
	return nil
}

// connected makes sure a link to the edge is open, reconnecting (with
// backoff) and resending unacknowledged v2 frames.
func (w *worker) connected(ctx context.Context) bool {
	if w.link != nil && !w.link.Closed() {
		return true
	}
	if w.link != nil {
		w.lost(io.EOF)
	}
	if time.Now().Before(w.nextConnect) {
		return false
	}
	l, err := w.d.modem.Dial(ctx, w.cfg.Server, w.cfg.Port)
	if err != nil {
		w.backoff = min(max(2*w.backoff, 500*time.Millisecond), 30*time.Second)
		w.nextConnect = time.Now().Add(w.backoff)
		w.d.log("connect: %v; retrying in %v", err, w.backoff)
		return false
	}
	w.link, w.answered = l, false
	if w.v2 == nil || w.unanswered == 0 {
		// A v2 link that keeps ending unanswered keeps its backoff (see lost).
		w.backoff = 0
	}
	if w.v2 != nil {
		go readAcks(l, w.acks)
		frames := w.outbox.Frames()
		if w.halted && len(frames) > 1 {
			frames = frames[:1] // a probe only
		}
		// Resend, in order and byte-identical, what the edge has not acknowledged.
		for _, f := range frames {
			if _, err := l.WriteContext(ctx, f); err != nil {
				w.lost(err)
				return false
			}
		}
	}
	return true
}

// lost forgets a broken link.
//
// A v2 link that ends before any reply verified is "unanswered": the edge
// closes the connections of a device decrypt does not know (its frames
// are dead-lettered as unknown_device, and no reply can be made without
// its key). Nothing unauthenticated may halt the device, so it keeps its
// frames and retries, but with a growing backoff, and says what is likely.
func (w *worker) lost(err error) {
	w.d.log("link lost: %v", err)
	w.d.Stats.Reconnects++
	if w.link != nil {
		w.link.Close()
		w.link = nil
	}
	if w.v2 == nil || w.answered {
		w.unanswered = 0
		return
	}
	w.unanswered++
	w.d.Stats.Unanswered++
	w.backoff = min(max(2*w.backoff, 500*time.Millisecond), 30*time.Second)
	w.nextConnect = time.Now().Add(w.backoff)
	if w.unanswered&(w.unanswered-1) == 0 && w.unanswered >= 4 {
		w.d.log("%d connections in a row ended with no verified reply: is this device registered with this key (medpipe keys add)? retrying in %v", w.unanswered, w.backoff)
	}
}

// flush waits (bounded) for the edge to acknowledge every v2 frame.
func (w *worker) flush(ctx context.Context) error {
	deadline := time.After(10 * time.Second)
	for w.v2 != nil && w.outbox.Len() > 0 {
		select {
		case r := <-w.acks:
			w.settle(ctx, &r)
		case <-deadline:
			return fmt.Errorf("device: %d frames unacknowledged", w.outbox.Len())
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// settle applies a reply from the pipeline (PROTOCOL.md, the table of
// codes): a frame leaves the outbox only on an ACK (or a final refusal)
// whose MAC verifies for exactly that frame; the edge's ERROR frames are
// not authenticated and drop nothing.
func (w *worker) settle(ctx context.Context, r *wire.V2Frame) {
	d := w.d
	if r.Type == wire.V2Error {
		w.edgeError(r)
		return
	}
	var refused []byte
	if r.Type == wire.V2Refused && r.Code == wire.V2RefReplayed {
		refused = w.outbox.Frame(r.Seq) // Settle drops it: its reading is sealed again
	}
	st := w.outbox.Settle(w.v2, r)
	if st != wire.Unverified {
		w.answered, w.unanswered = true, 0
	}
	switch st {
	case wire.Unverified:
		// Forged, or about a frame already settled: nothing changes.
	case wire.Acked:
		d.Stats.Acked++
		w.errBackoff = 0
		if w.halted {
			d.log("the pipeline accepts this device's frames again: sending")
			w.halted = false
			d.halted.Store(false)
			if w.link != nil {
				w.lost(errors.New("resuming")) // the reconnect resends the outbox
			}
		}
	case wire.Dropped:
		switch r.Code {
		case wire.V2RefReplayed:
			d.Stats.Replayed++
			w.reseal(ctx, r.Seq, refused)
		case wire.V2RefInvalid:
			d.Stats.Invalid++
			d.Stats.Dropped++
			d.log("frame %d refused as invalid: dropped (a firmware bug)", r.Seq)
		default: // tampered a second time
			d.Stats.Tampered++
			d.Stats.Dropped++
			d.log("frame %d altered on the way twice: dropped", r.Seq)
		}
	case wire.Resend:
		d.log("frame %d arrived altered: sending it once more", r.Seq)
		w.write(ctx, w.outbox.Frame(r.Seq))
	case wire.Halt:
		d.Stats.Halts++
		if !w.halted {
			d.log("the pipeline refuses this device (code %d: %s): not sending until reprovisioned; readings are kept", r.Code, refusal(r.Code))
			w.halted = true
			d.halted.Store(true)
			w.nextProbe = time.Now().Add(haltProbe)
		}
	}
}

// refusal names a REFUSED code for the log.
func refusal(code byte) string {
	switch code {
	case wire.V2RefRevoked:
		return "key revoked"
	case wire.V2RefDowngrade:
		return "pinned to another protocol"
	}
	return "unknown to this firmware"
}

// reseal handles a `replayed` refusal of frame seq: the pipeline has seen
// this sequence number, so this boot's epoch is not new (the flash record
// was lost, or the unit replaced). A new boot epoch is persisted (once for
// all frames of the old one), and the refused frame's reading is sealed
// again under the next sequence number of the new one: a sequence number
// seals one payload, so it cannot be reused, but the reading need not be lost.
func (w *worker) reseal(ctx context.Context, seq uint64, frame []byte) {
	d := w.d
	if wire.V2SeqEpoch(seq) == wire.V2SeqEpoch(w.seq) {
		epoch, err := NextBootEpoch(d.b.Storage)
		if err != nil {
			d.log("frame %d refused as replayed, and no new boot epoch: %v", seq, err)
			d.Stats.Dropped++
			return
		}
		d.log("frame %d refused as replayed: the sequence went back; new boot epoch %d", seq, epoch)
		w.seq = uint64(epoch) << 32
	}
	f, err := wire.ParseV2(frame)
	if err != nil {
		d.Stats.Dropped++
		return
	}
	plain, err := w.v2.Open(nil, &f)
	if err != nil {
		d.Stats.Dropped++
		return
	}
	w.seq++
	sealed, err := w.v2.SealData(nil, w.seq, plain)
	if err != nil {
		d.Stats.Dropped++
		return
	}
	d.Stats.Dropped += uint64(w.outbox.Add(w.seq, sealed))
	if !w.halted {
		w.write(ctx, sealed)
	}
}

// edgeError acts on an ERROR frame. It is not authenticated (anyone on the
// path can make one), so it never drops a frame: a malformed or oversized
// frame makes the edge close the connection, and the device reconnects
// with a growing backoff; a frame the edge could not store is resent a
// second later.
func (w *worker) edgeError(r *wire.V2Frame) {
	d := w.d
	d.Stats.EdgeErrors++
	switch r.Code {
	case wire.V2ErrStore:
		if r.Seq != 0 && w.outbox.Frame(r.Seq) != nil && len(w.retry) < 64 {
			w.retry = append(w.retry, r.Seq)
			w.retryAt = time.Now().Add(time.Second)
		}
		return
	case wire.V2ErrTooLarge:
		d.log("edge: frame too large (a firmware bug): %s", printable(r.Message))
	default:
		d.log("edge: error %d: %s", r.Code, printable(r.Message))
	}
	w.errBackoff = min(max(2*w.errBackoff, time.Second), 30*time.Second)
	w.nextConnect = time.Now().Add(w.errBackoff)
}

// resendRetries resends, once due, the frames the edge could not store.
func (w *worker) resendRetries(ctx context.Context) {
	if len(w.retry) == 0 || time.Now().Before(w.retryAt) {
		return
	}
	for _, seq := range w.retry {
		w.write(ctx, w.outbox.Frame(seq))
	}
	w.retry = w.retry[:0]
}

// probe sends a halted device's oldest frame once every haltProbe: an ACK
// resumes sending, another refusal keeps the device halted.
func (w *worker) probe(ctx context.Context) {
	if time.Now().Before(w.nextProbe) || w.outbox.Len() == 0 {
		return
	}
	w.nextProbe = time.Now().Add(haltProbe)
	if w.link == nil || w.link.Closed() {
		w.connected(ctx) // a halted device's connect sends the oldest frame
		return
	}
	w.write(ctx, w.outbox.Frames()[0])
}

// write sends a frame on the link if there is one; a frame that cannot be
// written stays in the outbox and goes out after the reconnect.
func (w *worker) write(ctx context.Context, frame []byte) {
	if frame == nil || w.link == nil || w.link.Closed() {
		return
	}
	if _, err := w.link.WriteContext(ctx, frame); err != nil {
		w.lost(err)
		return
	}
	w.d.Stats.Sent++
}

// printable keeps an unauthenticated message's printable ASCII, for the log.
func printable(s string) string {
	b := []byte(s)
	n := 0
	for _, c := range b {
		if c >= 0x20 && c < 0x7f {
			b[n] = c
			n++
		}
	}
	return string(b[:n])
}

// readAcks reads ACK, REFUSED and ERROR frames from the edge until the
// link ends; a link that carries something else is closed, and reconnected.
func readAcks(l *esp.Link, acks chan<- wire.V2Frame) {
	if err := wire.ReadV2Replies(l, func(f *wire.V2Frame) {
		acks <- *f
	}); !errors.Is(err, io.EOF) {
		l.Close()
	}
}
