package simulator

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// TestV2ForgedAckDropsNothing: an edge that answers every frame with ACKs
// it cannot make (a MAC under another key: what an edge, or anyone on the
// path, without the device's key can send) and with unauthenticated
// ERRORs makes the device drop nothing; once the pipeline's genuine ACKs
// come, every frame is settled.
func TestV2ForgedAckDropsNothing(t *testing.T) {
	devs, err := GenerateDevices(1, "v2", "pico")
	if err != nil {
		t.Fatal(err)
	}
	devs[0].V2 = true
	genuine := wire.NewV2Key(devs[0].Device)
	wrong := devs[0].Device
	wrong.Key[0] ^= 1
	forger := wire.NewV2Key(wrong)
	var honest atomic.Bool
	var conns sync.Map
	addr := testkit.ServeTCP(t, func(c net.Conn) {
		conns.Store(c, true)
		var buf []byte
		for {
			raw, err := wire.ReadV2Frame(c, buf, 1<<16)
			if err != nil {
				return
			}
			buf = raw
			f, err := wire.ParseV2(raw)
			if err != nil {
				return
			}
			var out []byte
			if honest.Load() {
				out = genuine.AppendAck(nil, f.Seq, f.Tag())
			} else {
				out = forger.AppendAck(nil, f.Seq, f.Tag())
				out = forger.AppendRefused(out, f.Seq, wire.V2RefReplayed, f.Tag())
				out = genuine.AppendAck(out, f.Seq, make([]byte, wire.V2TagLen)) // right key, wrong frame
				out = wire.AppendV2Error(out, f.Seq, wire.V2ErrStore, "not stored")
			}
			if _, err := c.Write(out); err != nil {
				return
			}
		}
	})
	const n = 30
	f, err := NewFleet(Options{Server: addr.String(), Devices: devs, Rate: 200, Count: n})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for st := f.Stats(); st.Sent < n || st.Unverified < 3*n; st = f.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := f.Stats(); st.Acked != 0 || st.Dropped != 0 {
		t.Fatalf("forged replies settled frames: %+v", st)
	}
	honest.Store(true)
	// The edge restarts: connections close, the device reconnects and
	// resends, and this time the ACKs are genuine.
	conns.Range(func(c, _ any) bool { c.(net.Conn).Close(); return true })
	if err := <-done; err != nil {
		t.Fatalf("fleet: %v (%+v)", err, f.Stats())
	}
	if st := f.Stats(); st.Acked != n || st.Dropped != 0 {
		t.Fatalf("after genuine ACKs: %+v", st)
	}
}
