package simulator

import (
	"bytes"
	"sync/atomic"
	"testing"

	"github.com/medpipe/medpipe/wire"
)

// TestV2Refusals: the simulated device acts on the pipeline's verified
// refusals as the firmware does (PROTOCOL.md's table), with replies made
// as decrypt makes them: tampered resent once then dropped, revoked halts
// until an ACK verifies, replayed starts a new boot epoch.
func TestV2Refusals(t *testing.T) {
	devs, err := GenerateDevices(1, "v2", "pico")
	if err != nil {
		t.Fatal(err)
	}
	var forged atomic.Uint64
	v := newV2Device(devs[0].Device, 5, &forged)
	sig := NewSignal(1, 20)
	var frames [][]byte
	var tags [][]byte
	for n := uint64(1); n <= 4; n++ {
		f, _, err := v.seal(n, sig.Next(n), sig)
		if err != nil {
			t.Fatal(err)
		}
		pf, _ := wire.ParseV2(f)
		frames, tags = append(frames, f), append(tags, pf.Tag())
	}
	key := wire.NewV2Key(devs[0].Device)
	reply := func(b []byte) *wire.V2Frame {
		f, err := wire.ParseV2(b)
		if err != nil {
			t.Fatal(err)
		}
		return &f
	}
	seq := func(i int) uint64 { return wire.V2Seq(5, uint32(i+1)) }
	refused := func(i int, code byte) *wire.V2Frame { return reply(key.AppendRefused(nil, seq(i), code, tags[i])) }

	if s, resend := v.settle(refused(0, wire.V2RefTampered)); s != wire.Resend || !bytes.Equal(resend, frames[0]) {
		t.Fatalf("first tampered: %v, resend %x", s, resend)
	}
	if s, _ := v.settle(refused(0, wire.V2RefTampered)); s != wire.Dropped || v.outstanding() != 3 {
		t.Fatalf("second tampered: %v with %d kept", s, v.outstanding())
	}
	if s, _ := v.settle(refused(1, wire.V2RefRevoked)); s != wire.Halt || !v.isHalted() || v.outstanding() != 3 {
		t.Fatalf("revoked: %v, halted %v, %d kept", s, v.isHalted(), v.outstanding())
	}
	if s, _ := v.settle(reply(key.AppendAck(nil, seq(2), tags[2]))); s != wire.Acked || v.isHalted() {
		t.Fatalf("an ACK after the refusal: %v, halted %v", s, v.isHalted())
	}
	if s, _ := v.settle(refused(3, wire.V2RefReplayed)); s != wire.Dropped || v.epoch <= 5 {
		t.Fatalf("replayed: %v, epoch %d", s, v.epoch)
	}
	if forged.Load() != 0 {
		t.Fatalf("%d genuine replies did not verify", forged.Load())
	}
}
