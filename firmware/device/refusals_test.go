package device

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/medpipe/medpipe/firmware/esp/espfake"
	"github.com/medpipe/medpipe/wire"
)

// TestRefusalsActedOn drives each of the pipeline's verified refusals and
// the edge's ERROR frames at a device in working mode. The edge's replies
// are made as decrypt and ingest make them (wire.V2Key.AppendRefused with
// the device's key, wire.AppendV2Error), and every case checks both what
// the device did and that no reading was lost that should not be.
func TestRefusalsActedOn(t *testing.T) {
	const readings = 30
	refuse := func(code byte) func(v *wire.V2Frame, key *wire.V2Key) []byte {
		return func(v *wire.V2Frame, key *wire.V2Key) []byte { return key.AppendRefused(nil, v.Seq, code, v.Tag()) }
	}
	tests := []struct {
		name   string
		answer func(v *wire.V2Frame, n int, key *wire.V2Key) ([]byte, bool)
		check  func(t *testing.T, r *linkRig)
	}{
		{
			name: "tampered once: resent, then accepted",
			answer: func(v *wire.V2Frame, n int, key *wire.V2Key) ([]byte, bool) {
				if wire.V2SeqCounter(v.Seq) == 3 && n == 1 {
					return refuse(wire.V2RefTampered)(v, key), false
				}
				return key.AppendAck(nil, v.Seq, v.Tag()), false
			},
			check: func(t *testing.T, r *linkRig) {
				if s := r.d.Stats; s.Acked != readings || s.Tampered != 0 || s.Dropped != 0 || r.arrivals(3) != 2 {
					t.Fatalf("stats %+v, frame 3 arrived %d times", s, r.arrivals(3))
				}
			},
		},
		{
			name: "tampered twice: dropped and counted",
			answer: func(v *wire.V2Frame, n int, key *wire.V2Key) ([]byte, bool) {
				if wire.V2SeqCounter(v.Seq) == 3 {
					return refuse(wire.V2RefTampered)(v, key), false
				}
				return key.AppendAck(nil, v.Seq, v.Tag()), false
			},
			check: func(t *testing.T, r *linkRig) {
				if s := r.d.Stats; s.Acked != readings-1 || s.Tampered != 1 || s.Dropped != 1 || r.arrivals(3) != 2 {
					t.Fatalf("stats %+v, frame 3 arrived %d times", s, r.arrivals(3))
				}
			},
		},
		{
			name: "invalid: dropped and counted",
			answer: func(v *wire.V2Frame, n int, key *wire.V2Key) ([]byte, bool) {
				if wire.V2SeqCounter(v.Seq) == 2 {
					return refuse(wire.V2RefInvalid)(v, key), false
				}
				return key.AppendAck(nil, v.Seq, v.Tag()), false
			},
			check: func(t *testing.T, r *linkRig) {
				if s := r.d.Stats; s.Acked != readings-1 || s.Invalid != 1 || s.Dropped != 1 || r.arrivals(2) != 1 {
					t.Fatalf("stats %+v", s)
				}
			},
		},
		{
			// A pipeline that saw this device's boot epoch 1 before (its
			// flash record was wiped) refuses every frame of it.
			name: "replayed: a new boot epoch, every reading sealed again",
			answer: func(v *wire.V2Frame, n int, key *wire.V2Key) ([]byte, bool) {
				if wire.V2SeqEpoch(v.Seq) == 1 {
					return refuse(wire.V2RefReplayed)(v, key), false
				}
				return key.AppendAck(nil, v.Seq, v.Tag()), false
			},
			check: func(t *testing.T, r *linkRig) {
				s := r.d.Stats
				if s.Replayed == 0 || s.Dropped != 0 || s.Acked != readings {
					t.Fatalf("stats %+v: want every reading acknowledged under the new epoch", s)
				}
				acked := 0
				for seq := range r.seenSeqs() {
					if e := wire.V2SeqEpoch(seq); e != 1 && e != 2 {
						t.Errorf("frame %#x: epoch %d", seq, e)
					} else if e == 2 {
						acked++
					}
				}
				if acked != readings {
					t.Errorf("%d frames of epoch 2, want %d", acked, readings)
				}
				if e, _ := NextBootEpoch(r.d.b.Storage); e != 3 {
					t.Errorf("next boot epoch %d, want 3: epoch 2 was not persisted", e)
				}
			},
		},
		{
			name: "the edge could not store a frame (ERROR): resent",
			answer: func(v *wire.V2Frame, n int, key *wire.V2Key) ([]byte, bool) {
				if wire.V2SeqCounter(v.Seq) == 4 && n == 1 {
					return wire.AppendV2Error(nil, v.Seq, wire.V2ErrStore, "frame not stored"), false
				}
				return key.AppendAck(nil, v.Seq, v.Tag()), false
			},
			check: func(t *testing.T, r *linkRig) {
				if s := r.d.Stats; s.Acked != readings || s.EdgeErrors != 1 || s.Dropped != 0 || r.arrivals(4) != 2 {
					t.Fatalf("stats %+v, frame 4 arrived %d times", s, r.arrivals(4))
				}
			},
		},
		{
			// Unauthenticated: anyone on the path can send it. The edge
			// closes; the device reconnects after a backoff and drops nothing.
			name: "malformed (ERROR, connection closed): reconnect, nothing dropped",
			answer: func(v *wire.V2Frame, n int, key *wire.V2Key) ([]byte, bool) {
				if wire.V2SeqCounter(v.Seq) == 5 && n == 1 {
					return wire.AppendV2Error(nil, 0, wire.V2ErrMalformed, "malformed\x1b[2J frame"), true
				}
				return key.AppendAck(nil, v.Seq, v.Tag()), false
			},
			check: func(t *testing.T, r *linkRig) {
				if s := r.d.Stats; s.Acked != readings || s.EdgeErrors != 1 || s.Dropped != 0 || s.Reconnects == 0 {
					t.Fatalf("stats %+v", s)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newLinkRig(t, espfake.Options{}, Options{Readings: readings})
			r.setAnswer(tt.answer)
			r.work(t, 60*time.Second)
			tt.check(t, r)
		})
	}
}

// TestRevokedHaltsSending: a verified `revoked` refusal stops the device
// sending (it keeps its readings); a forged one does not.
func TestRevokedHaltsSending(t *testing.T) {
	r := newLinkRig(t, espfake.Options{}, Options{})
	forger := wire.NewV2Key(wire.Device{ID: r.cfg.Device.ID, Key: [16]byte([]byte("not-the-real-key"))})
	r.setAnswer(func(v *wire.V2Frame, n int, key *wire.V2Key) ([]byte, bool) {
		switch c := wire.V2SeqCounter(v.Seq); {
		case c < 5:
			return key.AppendAck(nil, v.Seq, v.Tag()), false
		case c < 10:
			return forger.AppendRefused(nil, v.Seq, wire.V2RefRevoked, v.Tag()), false
		}
		return key.AppendRefused(nil, v.Seq, wire.V2RefRevoked, v.Tag()), false
	})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.d.Work(ctx, r.cfg) }()
	for !r.d.Halted() {
		select {
		case err := <-done:
			t.Fatalf("working mode ended: %v", err)
		case <-ctx.Done():
			t.Fatal("the device never halted")
		case <-time.After(20 * time.Millisecond):
		}
	}
	r.mu.Lock()
	atHalt := r.frames
	r.mu.Unlock()
	time.Sleep(time.Second) // 20 readings' time
	r.mu.Lock()
	after := r.frames
	r.mu.Unlock()
	cancel()
	<-done
	// In flight when the refusal came: a reading's worth or two.
	if after-atHalt > 2 {
		t.Fatalf("a halted device sent %d frames in a second", after-atHalt)
	}
	if s := r.d.Stats; s.Halts == 0 || s.Acked != 4 || s.Dropped != 0 {
		t.Fatalf("stats %+v: want 4 acknowledged, the rest kept", s)
	}
	if r.arrivals(wire.V2Seq(1, 10)) == 0 {
		t.Fatal("the forged refusals halted the device")
	}
}

// arrivals is how many times the edge received frame counter c of boot
// epoch 1 (or the whole sequence number seq when it has an epoch).
func (r *linkRig) arrivals(c uint64) int {
	if c < 1<<32 {
		c = wire.V2Seq(1, uint32(c))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[c]
}

// seenSeqs is every sequence number the edge received.
func (r *linkRig) seenSeqs() map[uint64]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[uint64]int{}
	for k, v := range r.seen {
		out[k] = v
	}
	return out
}

// TestUnknownDeviceBacksOff: an edge that closes every connection without
// a reply (what it does to a device decrypt does not know) costs the
// device no frame, and its reconnects slow down (0.5 s, 1 s, 2 s, …)
// instead of hammering the edge; the first verified ACK ends it.
func TestUnknownDeviceBacksOff(t *testing.T) {
	r := newLinkRig(t, espfake.Options{}, Options{})
	var known atomic.Bool
	r.setAnswer(func(v *wire.V2Frame, n int, key *wire.V2Key) ([]byte, bool) {
		if known.Load() {
			return key.AppendAck(nil, v.Seq, v.Tag()), false
		}
		return nil, true
	})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.d.Work(ctx, r.cfg) }()
	time.Sleep(4 * time.Second)
	r.mu.Lock()
	conns := r.conns
	r.mu.Unlock()
	// Backoffs 0.5 + 1 + 2 s fit in 4 s: about four connections, where
	// reconnecting at each reading would make dozens.
	if conns > 6 {
		t.Fatalf("%d connections in 4 s with no reply: no backoff", conns)
	}
	known.Store(true) // registered now: the next connection is answered
	deadline := time.Now().Add(30 * time.Second)
	for {
		r.mu.Lock()
		acked := len(r.seen) > 0 && r.acks > 0
		r.mu.Unlock()
		if acked {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no frame acknowledged once the device was known")
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-done
	if s := r.d.Stats; s.Unanswered < 2 || s.Dropped != 0 {
		t.Fatalf("stats %+v", s)
	}
	t.Logf("%d connections unanswered in 4 s; stats %+v", conns, r.d.Stats)
}
