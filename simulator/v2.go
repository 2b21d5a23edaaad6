package simulator

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/medpipe/medpipe/wire"
)

// PulseRate is the sample rate of the pulse batches v2 devices send.
const PulseRate = 250

// MaxPulseBatch bounds the samples of one frame to the last
// wire.MaxPulseSeconds: below 0.25 readings/s a whole interval's batch
// would grow without bound.
const MaxPulseBatch = wire.MaxPulseSeconds * PulseRate

// MaxUnacked bounds the frames a v2 device keeps for resending (within the
// server's replay window of 1,024, so every resent frame is judged): at 20
// readings/s, 50 s of readings. Beyond it the oldest is dropped, and counted.
const MaxUnacked = 1000

// v2Device is a v2 device's protocol state: its boot epoch and the frames
// the pipeline has not acknowledged yet, resent in order after every
// reconnect. A frame leaves the buffer only on a reply whose MAC verifies
// for exactly that frame (wire.Outbox.Settle).
type v2Device struct {
	key     *wire.V2Key
	mu      sync.Mutex
	outbox  *wire.Outbox
	epoch   uint32            // boot epoch: the high 32 bits of every sequence number
	base    uint64            // the reading number before the epoch's counter 1
	last    uint64            // the last reading sealed
	changed chan struct{}     // signalled when frames are settled
	ended   chan net.Conn     // the connection whose reply reader ended
	sensors wire.SensorStates // reported with every reading
	halted  bool              // a verified refusal said stop sending (key revoked, protocol pinned)
	// forged counts replies that did not verify (forged, or for a frame
	// already settled): they change nothing.
	forged *atomic.Uint64
}

func newV2Device(d wire.Device, epoch uint32, forged *atomic.Uint64) *v2Device {
	return &v2Device{key: wire.NewV2Key(d), outbox: wire.NewOutbox(MaxUnacked, 0), epoch: epoch, changed: make(chan struct{}, 1), ended: make(chan net.Conn, 1), forged: forged}
}

// seal builds reading number n as a v2 frame with a pulse batch and keeps
// it until it is acknowledged. It returns the frame and whether an old one
// had to be dropped.
func (v *v2Device) seal(n uint64, r wire.Reading, sig *Signal) ([]byte, bool, error) {
	var p wire.V2Payload
	now := time.Now()
	p.Time = now.UnixMilli()
	p.Values = r.Numbers()
	p.Sensors = v.sensors
	p.Pulse = PulseCodes(sig.Batch(), now)
	payload, err := wire.AppendV2Payload(nil, &p)
	if err != nil {
		return nil, false, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	seq := wire.V2Seq(v.epoch, uint32(n-v.base))
	v.last = n
	frame, err := v.key.SealData(nil, seq, payload)
	if err != nil {
		return nil, false, err
	}
	return frame, v.outbox.Add(seq, frame) > 0, nil
}

// pending returns the unacknowledged frames, oldest first, to resend.
func (v *v2Device) pending() [][]byte {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.outbox.Frames()
}

func (v *v2Device) outstanding() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.outbox.Len()
}

// settle applies one reply as the firmware does (PROTOCOL.md): a verified
// `replayed` refusal starts a new boot epoch, as a rebooted device would,
// so that the next frames are new; `revoked`, `downgrade` or an unknown
// code halts the device (it keeps sealing, sends nothing) until an ACK
// verifies again; a first `tampered` returns the frame to resend in resend.
func (v *v2Device) settle(f *wire.V2Frame) (s wire.Settlement, resend []byte) {
	v.mu.Lock()
	s = v.outbox.Settle(v.key, f)
	switch {
	case s == wire.Dropped && f.Code == wire.V2RefReplayed && wire.V2SeqEpoch(f.Seq) == v.epoch:
		v.epoch = max(v.epoch+1, wallEpoch())
		v.base = v.last
	case s == wire.Resend:
		resend = v.outbox.Frame(f.Seq)
	case s == wire.Halt:
		v.halted = true
	case s == wire.Acked:
		v.halted = false
	}
	v.mu.Unlock()
	if s == wire.Unverified {
		v.forged.Add(1)
	}
	select {
	case v.changed <- struct{}{}:
	default:
	}
	return s, resend
}

// isHalted reports whether a verified refusal stopped the device sending.
func (v *v2Device) isHalted() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.halted
}

// readReplies reads the pipeline's replies until the connection ends.
// refused is told of each refusal or ERROR and whether it dropped a frame.
func (v *v2Device) readReplies(c net.Conn, acked func(), refused func(code byte, dropped bool)) {
	err := wire.ReadV2Replies(c, func(f *wire.V2Frame) {
		switch f.Type {
		case wire.V2Error:
			refused(f.Code, false) // not authenticated: counted, nothing dropped
		default:
			s, resend := v.settle(f)
			switch s {
			case wire.Acked:
				acked()
			case wire.Resend:
				refused(f.Code, false)
				_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
				_, _ = c.Write(resend) // a failed write: resent after the reconnect
			case wire.Dropped, wire.Halt:
				refused(f.Code, s == wire.Dropped)
			}
		}
	})
	if !errors.Is(err, io.EOF) {
		c.Close() // the write side notices and reconnects
	}
	select {
	case v.ended <- c: // a flushing device reconnects at once
	default:
	}
}

// PulseCodes turns the pulse samples (volts) ending at now into the batch
// a v2 frame carries: 12-bit ADC codes; nil when there are none.
func PulseCodes(samples []float64, now time.Time) *wire.PulseCodes {
	if len(samples) == 0 {
		return nil
	}
	first := now.Add(-time.Duration(len(samples)-1) * time.Second / PulseRate)
	codes := make([]uint16, len(samples))
	for i, s := range samples {
		codes[i] = wire.PulseCode(s)
	}
	return &wire.PulseCodes{Rate: PulseRate, Start: first.UnixMilli(), Codes: codes}
}

// wallEpoch is a boot epoch from the wall clock: seconds since 1970, which
// grow between two starts of a simulator at least a second apart.
func wallEpoch() uint32 { return uint32(time.Now().Unix()) }

// EpochFile is where a simulated fleet's boot epoch is kept: next to its
// keys file ("" without one).
func EpochFile(keys string) string {
	if keys == "" {
		return ""
	}
	return keys + ".epoch"
}

// BootEpoch returns the boot epoch for a simulator start: the wall clock's
// seconds, but above the epoch recorded in file (when given), which it then
// records. A simulator restarted from nothing (no file) still moves on by
// the clock; the file keeps it moving on when the clock does not (two
// starts within a second, a clock set back).
func BootEpoch(file string) (uint32, error) {
	epoch := wallEpoch()
	if file == "" {
		return epoch, nil
	}
	b, err := os.ReadFile(file)
	switch {
	case err == nil:
		last, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
		if perr != nil {
			return 0, fmt.Errorf("simulator: boot epoch file %s: %w", file, perr)
		}
		if uint32(last) >= epoch {
			epoch = uint32(last) + 1
		}
	case !errors.Is(err, os.ErrNotExist):
		return 0, fmt.Errorf("simulator: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return 0, fmt.Errorf("simulator: %w", err)
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatUint(uint64(epoch), 10)+"\n"), 0o600); err != nil {
		return 0, fmt.Errorf("simulator: %w", err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return 0, fmt.Errorf("simulator: %w", err)
	}
	return epoch, nil
}
