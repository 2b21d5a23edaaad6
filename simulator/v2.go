package simulator

import (
	"bufio"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/medpipe/medpipe/wire"
)

// PulseRate is the sample rate of the pulse batches v2 devices send.
const PulseRate = 250

// MaxUnacked bounds the frames a v2 device keeps for resending: at 20
// readings/s, 100 s of readings. Beyond it the oldest is dropped, and counted.
const MaxUnacked = 2000

// v2Device is a v2 device's protocol state: the frames the edge has not
// acknowledged yet, resent in order after every reconnect.
type v2Device struct {
	key     *wire.V2Key
	mu      sync.Mutex
	unacked []unackedFrame
	changed chan struct{} // signalled when frames are acknowledged
}

type unackedFrame struct {
	seq   uint64
	frame []byte
}

func newV2Device(d wire.Device) *v2Device {
	return &v2Device{key: wire.NewV2Key(d), changed: make(chan struct{}, 1)}
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
		p.Pulse = &wire.PulseBatch{Rate: PulseRate, Start: first.UnixMilli(), Samples: append([]float64(nil), samples...)}
	}
	payload, err := json.Marshal(p)
	if err != nil {
		return nil, false, err
	}
	var nonce [12]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, false, err
	}
	frame, err := v.key.SealData(nil, id, seq, nonce, payload)
	if err != nil {
		return nil, false, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	dropped := false
	if len(v.unacked) >= MaxUnacked {
		v.unacked = v.unacked[1:]
		dropped = true
	}
	v.unacked = append(v.unacked, unackedFrame{seq, frame})
	return frame, dropped, nil
}

// pending returns the unacknowledged frames, oldest first, to resend.
func (v *v2Device) pending() [][]byte {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([][]byte, len(v.unacked))
	for i, u := range v.unacked {
		out[i] = u.frame
	}
	return out
}

func (v *v2Device) outstanding() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.unacked)
}

// ack drops every frame up to seq: the edge acknowledges in order.
func (v *v2Device) ack(seq uint64) int {
	v.mu.Lock()
	n := 0
	for n < len(v.unacked) && v.unacked[n].seq <= seq {
		n++
	}
	v.unacked = v.unacked[n:]
	v.mu.Unlock()
	select {
	case v.changed <- struct{}{}:
	default:
	}
	return n
}

// readReplies reads the edge's ACK and ERROR frames until the connection ends.
func (v *v2Device) readReplies(c net.Conn, acked func(int), errored func(code byte)) {
	r := bufio.NewReader(c)
	var buf []byte
	for {
		raw, err := wire.ReadV2Frame(r, buf, 1024)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				c.Close() // the write side notices and reconnects
			}
			return
		}
		buf = raw
		f, err := wire.ParseV2(raw)
		if err != nil {
			c.Close()
			return
		}
		switch f.Type {
		case wire.V2Ack:
			acked(v.ack(f.Seq))
		case wire.V2Error:
			errored(f.Code)
		}
	}
}
