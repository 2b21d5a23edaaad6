package simulator

import (
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/medpipe/medpipe/wire"
)

// PulseRate is the sample rate of the pulse batches v2 devices send.
const PulseRate = 250

// MaxPulseBatch bounds the samples of one frame to the last
// wire.MaxPulseSeconds: below 0.25 readings/s a whole interval's batch (10 s:
// 2,500 samples, ~15 KB) would exceed the edge's 8 KB frame limit.
const MaxPulseBatch = wire.MaxPulseSeconds * PulseRate

// MaxUnacked bounds the frames a v2 device keeps for resending (within the
// server's replay window of 1,024, so every resent frame is judged): at 20
// readings/s, 50 s of readings. Beyond it the oldest is dropped, and counted.
const MaxUnacked = 1000

// v2Device is a v2 device's protocol state: the frames the edge has not
// acknowledged yet, resent in order after every reconnect.
type v2Device struct {
	key     *wire.V2Key
	mu      sync.Mutex
	outbox  *wire.Outbox
	changed chan struct{} // signalled when frames are acknowledged
}

func newV2Device(d wire.Device) *v2Device {
	return &v2Device{key: wire.NewV2Key(d), outbox: wire.NewOutbox(MaxUnacked, 0), changed: make(chan struct{}, 1)}
}

// seal builds reading seq as a v2 frame with a pulse batch and keeps it
// until it is acknowledged. It returns the frame and whether an old one
// had to be dropped.
func (v *v2Device) seal(id string, seq uint64, r wire.Reading, sig *Signal) ([]byte, bool, error) {
	var p wire.V2Payload
	now := time.Now()
	p.Time = now.UnixMilli()
	p.Values = r.Numbers()
	if samples := sig.Batch(); len(samples) > 0 {
		first := now.Add(-time.Duration(len(samples)-1) * time.Second / PulseRate)
		p.Pulse = &wire.PulseBatch{Rate: PulseRate, Start: first.UnixMilli(), Samples: samples}
	}
	var nonce [12]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, false, err
	}
	frame, err := v.key.SealData(nil, id, seq, nonce, wire.AppendV2Payload(nil, &p))
	if err != nil {
		return nil, false, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
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

// ack drops every frame up to seq: the edge acknowledges in order.
func (v *v2Device) ack(seq uint64) int {
	v.mu.Lock()
	n := v.outbox.Ack(seq)
	v.mu.Unlock()
	select {
	case v.changed <- struct{}{}:
	default:
	}
	return n
}

// readReplies reads the edge's ACK and ERROR frames until the connection ends.
func (v *v2Device) readReplies(c net.Conn, acked func(int), errored func(code byte)) {
	err := wire.ReadV2Replies(c, func(seq uint64) { acked(v.ack(seq)) }, func(_ uint64, code byte) { errored(code) })
	if !errors.Is(err, io.EOF) {
		c.Close() // the write side notices and reconnects
	}
}
