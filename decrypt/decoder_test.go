package decrypt

import (
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

// TestDecoderMatchesHandler runs the same RAW messages through a worker's
// handler (JetStream stubbed, v2 marks in memory) and through a Decoder:
// every frame gives the same reading, or the same dead-letter reason.
func TestDecoderMatchesHandler(t *testing.T) {
	devs := benchDevices(20)
	js := &stubJetStream{}
	w, err := newWorker(js, Options{Keys: devs, Partitions: parts})
	if err != nil {
		t.Fatal(err)
	}
	w.marks = &memMarks{seen: map[markID]mark{}}
	d, err := NewDecoder(NewKeyIndex(devs))
	if err != nil {
		t.Fatal(err)
	}
	v2 := func(dev wire.Device, seq uint64, n int) (nats.Header, []byte) {
		h := rawHeaders("v2-"+dev.ID, n, receivedAt(n))
		h.Set(bus.HeaderProtocol, bus.ProtocolV2)
		h.Set(bus.HeaderDevice, dev.ID)
		return h, v2FrameFor(t, dev, seq, n%2 == 0)
	}
	stranger := wire.Device{ID: "stranger", Key: devs[0].IV, IV: devs[0].Key}
	type msg struct {
		h    nats.Header
		data []byte
	}
	var msgs []msg
	for i := 1; i <= 5; i++ {
		msgs = append(msgs,
			msg{rawHeaders("c1", i, receivedAt(i)), wireFrame(devs[1], wire.Pico, i)},
			msg{rawHeaders("c2", i, receivedAt(i)), wireFrame(devs[2], wire.Pseudo, i)},
		)
	}
	h, f := v2(devs[3], 1, 1)
	msgs = append(msgs, msg{h, f})
	h, f = v2(devs[3], 2, 2)
	msgs = append(msgs, msg{h, f})
	h, f = v2(devs[3], 2, 3) // a resend of an accepted frame: acknowledged, not stored
	msgs = append(msgs, msg{h, f})
	h, f = v2(stranger, 1, 4) // unknown
	msgs = append(msgs, msg{h, f})
	h, f = v2(devs[4], 1, 5)
	tampered := append([]byte(nil), f...)
	tampered[len(tampered)-1] ^= 1
	msgs = append(msgs,
		msg{h, tampered},
		msg{rawHeaders("c3", 1, receivedAt(1)), wireFrame(stranger, wire.Pico, 1)}, // unknown
		msg{rawHeaders("c4", 1, receivedAt(1)), []byte("zz+11")},                   // malformed
		msg{nats.Header{bus.HeaderConn: {"c5"}}, wireFrame(devs[5], wire.Pico, 1)}, // missing headers
	)
	outcomes := map[string]int{}
	for i, m := range msgs {
		seq := uint64(i + 1)
		pub, err := handleStub(t.Context(), w, js, &stubMsg{data: m.data, header: m.h, seq: seq})
		if err != nil {
			t.Fatal(err)
		}
		out, err := d.Decode(t.Context(), seq, m.h, m.data)
		if err != nil {
			t.Fatal(err)
		}
		if out.Duplicate {
			if pub != nil {
				t.Fatalf("message %d: a duplicate was published: %s", i+1, pub.Data)
			}
			outcomes[string(out.Reason)]++
			continue
		}
		if out.Reading == nil {
			if got := pub.Header.Get(bus.HeaderReason); got != string(out.Reason) || out.Err == nil {
				t.Fatalf("message %d: handler dead-lettered as %q, decoder as %q (%v)", i+1, got, out.Reason, out.Err)
			}
			outcomes[string(out.Reason)]++
			continue
		}
		// A message of one reading carries the body every publish reads (0xB2).
		want, err := bus.AppendReadingV2(nil, out.Reading)
		if err != nil {
			t.Fatal(err)
		}
		if string(pub.Data) != string(want) {
			t.Fatalf("message %d: handler published %s\ndecoder gave %s", i+1, pub.Data, want)
		}
		outcomes[out.Reading.Protocol]++
	}
	want := map[string]int{bus.ProtocolLegacy: 10, bus.ProtocolV2: 2, "duplicate": 1, "unknown_device": 2, "tampered": 1, "malformed": 2}
	if fmt.Sprint(outcomes) != fmt.Sprint(want) {
		t.Fatalf("outcomes %v, want %v", outcomes, want)
	}
}
