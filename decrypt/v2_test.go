package decrypt

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

func v2FrameFor(t testing.TB, d wire.Device, seq uint64, withPulse bool) []byte {
	t.Helper()
	p := wire.V2Payload{Time: int64(1764000000000 + seq), Values: wire.ValuesOf([wire.NumFields]float64{36.6, 23.7, float64(seq), 0, -0.02, 0.98, 23.4})}
	if withPulse {
		p.Pulse = &wire.PulseCodes{Rate: 250, Start: 1764000000000, Codes: []uint16{2110, 2234}}
	}
	payload, err := wire.AppendV2Payload(nil, &p)
	if err != nil {
		t.Fatal(err)
	}
	f, err := wire.NewV2Key(d).SealData(nil, seq, payload)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// publishV2Raw stores a v2 frame in RAW as the edge would, without a
// message id so the test can store the same frame twice (a replay).
func publishV2Raw(t *testing.T, js jetstream.JetStream, device string, n int, frame []byte) {
	t.Helper()
	publishV2RawOn(t, js, device, "v2conn", n, frame)
}

// publishV2RawOn is publishV2Raw for a frame of connection conn, from
// edge1.
func publishV2RawOn(t *testing.T, js jetstream.JetStream, device, conn string, n int, frame []byte) {
	t.Helper()
	h := nats.Header{}
	h.Set(bus.HeaderEdge, "edge1")
	h.Set(bus.HeaderConn, conn)
	h.Set(bus.HeaderFrameSeq, strconv.Itoa(n))
	h.Set(bus.HeaderRemote, "127.0.0.1:40000")
	h.Set(bus.HeaderLocal, "127.0.0.1:9998")
	h.Set(bus.HeaderReceived, time.Now().UTC().Format(time.RFC3339Nano))
	h.Set(bus.HeaderProtocol, bus.ProtocolV2)
	h.Set(bus.HeaderDevice, device)
	if _, err := js.PublishMsg(t.Context(), &nats.Msg{Subject: bus.RawSubject(bus.Partition(device, parts)), Data: frame, Header: h}); err != nil {
		t.Fatal(err)
	}
}

func runV2Worker(t *testing.T, js jetstream.JetStream, devs []wire.Device) *Worker {
	t.Helper()
	seqs, err := bus.OpenSeqStore(t.Context(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(js, Options{Keys: devs, Partitions: parts, Seqs: seqs})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

// TestV2Frames: readings; copies of accepted frames within the window
// taken for resends (acknowledged again, not stored) by either of two
// workers; a frame stored out of order accepted once within the replay
// window and refused as replayed beyond it; a tampered frame and an
// unknown device refused. The same whether the edge stored each frame
// alone or in RAW batches (a frame and its resend in one batch are two
// frames, not one redelivered), and each reply goes to the connection
// that carried its frame.
func TestV2Frames(t *testing.T) {
	for _, batch := range []int{0, 3, 64} {
		t.Run("raw-batch="+strconv.Itoa(batch), func(t *testing.T) { testV2Frames(t, batch) })
	}
}

func testV2Frames(t *testing.T, batch int) {
	js := setup(t)
	devs := loadKeys(t)
	d := devs[1]
	replies, err := js.Conn().SubscribeSync(bus.AckSubject("edge1"))
	if err != nil {
		t.Fatal(err)
	}
	runV2Worker(t, js, devs)
	runV2Worker(t, js, devs)
	tampered := v2FrameFor(t, d, 9, false)
	tampered[len(tampered)-20] ^= 0x01
	frames := [][]byte{
		v2FrameFor(t, d, 1, true),
		v2FrameFor(t, d, 2, false),
		v2FrameFor(t, d, 2, false), // a resend: duplicate
		v2FrameFor(t, d, 5, false),
		v2FrameFor(t, d, 3, false), // stored out of order, not seen before: accepted
		v2FrameFor(t, d, 3, false), // a resend: duplicate
		tampered,
		v2FrameFor(t, wire.Device{ID: "nobody", Key: d.Key, IV: d.IV}, 1, false),
		v2FrameFor(t, d, 6, false),
		v2FrameFor(t, d, 7+ReplayWindow, false),
		v2FrameFor(t, d, 7, false), // not seen, but the window moved past it
	}
	conn := func(i int) string { return "v2conn-" + strconv.Itoa(i) }
	if batch == 0 {
		for i, f := range frames {
			publishV2RawOn(t, js, d.ID, conn(i), i+1, f)
		}
	} else {
		var fs []bus.RawFrame
		for i, f := range frames {
			fs = append(fs, bus.RawFrame{Protocol: bus.ProtocolV2, Device: d.ID, Conn: conn(i), Seq: uint64(i + 1), Received: time.Now(), Remote: "127.0.0.1:40000", Local: "127.0.0.1:9998", Data: f})
		}
		for n := 0; len(fs) > 0; n++ {
			k := min(batch, len(fs))
			publishRawBatch(t, js, bus.Partition(d.ID, parts), "b"+strconv.Itoa(n), fs[:k])
			fs = fs[k:]
		}
	}
	readings := streamMsgs(t, js, bus.StreamReadings, 6)
	var seqs []uint64
	for _, m := range readings {
		r, err := bus.UnmarshalReading(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, r.Seq)
		if r.Protocol != bus.ProtocolV2 || r.Values.Temp != "36.600" || r.Values.AcelY != "-0.02" || r.DeviceTime.IsZero() {
			t.Fatalf("reading %+v", r)
		}
		if r.Seq == 1 && (r.Pulse == nil || r.Pulse.Rate != 250 || len(r.Pulse.Samples) != 2 || r.Pulse.Samples[0] != wire.PulseVolts(2110)) {
			t.Fatalf("pulse batch lost: %+v", r.Pulse)
		}
	}
	if want := fmt.Sprint([]uint64{1, 2, 5, 3, 6, 7 + ReplayWindow}); fmt.Sprint(seqs) != want {
		t.Fatalf("readings with seq %v, want %s", seqs, want)
	}
	reasons := map[string]int{}
	for _, m := range streamMsgs(t, js, bus.StreamDeadLetter, 3) {
		h := m.Headers()
		reasons[h.Get(bus.HeaderReason)]++
		if h.Get(bus.HeaderProtocol) != bus.ProtocolV2 || !strings.HasPrefix(h.Get(bus.HeaderConn), "v2conn-") {
			t.Fatalf("dead letter headers %v", h)
		}
	}
	want := map[string]int{string(bus.ReasonReplayed): 1, string(bus.ReasonTampered): 1, string(bus.ReasonUnknownDevice): 1}
	if fmt.Sprint(reasons) != fmt.Sprint(want) {
		t.Fatalf("dead letters %v, want %v", reasons, want)
	}
	// Six ACKs of readings, two of resends, two REFUSED (replayed,
	// tampered); none for the unknown device, whose key is not known.
	wantReply := map[int]byte{0: wire.V2Ack, 1: wire.V2Ack, 2: wire.V2Ack, 3: wire.V2Ack, 4: wire.V2Ack, 5: wire.V2Ack, 6: wire.V2Refused, 8: wire.V2Ack, 9: wire.V2Ack, 10: wire.V2Refused}
	for range len(wantReply) {
		m, err := replies.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("replies: %v", err)
		}
		i, err := strconv.Atoi(strings.TrimPrefix(m.Header.Get(bus.HeaderConn), "v2conn-"))
		if err != nil {
			t.Fatalf("a reply for connection %q", m.Header.Get(bus.HeaderConn))
		}
		f, err := wire.ParseV2(m.Data)
		sent, _ := wire.ParseV2(frames[i])
		if err != nil || f.Type != wantReply[i] || f.Seq != sent.Seq {
			t.Fatalf("reply on the connection of frame %d: %+v, %v; want type %d for seq %d", i, f, err, wantReply[i], sent.Seq)
		}
		delete(wantReply, i)
	}
	if len(wantReply) != 0 {
		t.Fatalf("no reply for frames %v", wantReply)
	}
}

// TestReplayWindow checks the window's arithmetic on a sequence of frames.
func TestReplayWindow(t *testing.T) {
	tests := []struct {
		name string
		seqs []uint64
		want []bool
	}{
		{"in order", []uint64{1, 2, 3}, []bool{true, true, true}},
		{"replay", []uint64{1, 2, 2, 1}, []bool{true, true, false, false}},
		{"out of order once", []uint64{1, 3, 2, 2}, []bool{true, true, true, false}},
		{"gap then fill", []uint64{10, 5, 9, 5, 9}, []bool{true, true, true, false, false}},
		{"edge of the window", []uint64{5000, 5000 - ReplayWindow + 1, 5000 - ReplayWindow}, []bool{true, true, false}},
		{"jump clears the window", []uint64{1, 1 + ReplayWindow, 1, 2}, []bool{true, true, false, true}},
		{"big jump", []uint64{5, 5000, 6, 4999}, []bool{true, true, false, true}},
		{"across words", []uint64{1, 70, 130, 2, 69, 2, 69, 66}, []bool{true, true, true, true, true, false, false, true}},
		{"deep resend", []uint64{1, 2, 3, 900, 901, 4, 4}, []bool{true, true, true, true, true, true, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m mark
			for i, seq := range tt.seqs {
				next, v := m.accepts(frameRef{seq: seq, raw: uint64(100 + i), recv: int64(1000 + i)})
				ok := v == fresh
				if ok != tt.want[i] {
					t.Fatalf("frame %d (seq %d): accepted %v, want %v", i, seq, ok, tt.want[i])
				}
				next.rev = 1 // stored
				m = next
			}
		})
	}
}

// TestReplayWindowRetry checks that the RAW message accepted last is
// accepted again when it is handled again (a retry after a mark update whose
// answer was lost), also when it was below the mark, and that the same
// sequence number in any other RAW message is still refused.
func TestReplayWindowRetry(t *testing.T) {
	tests := []struct {
		name  string
		frame []struct{ seq, raw uint64 }
		want  []bool
	}{
		{"retry of the highest", []struct{ seq, raw uint64 }{{1, 10}, {2, 11}, {2, 11}}, []bool{true, true, true}},
		{"retry of one below the mark", []struct{ seq, raw uint64 }{{1, 10}, {3, 11}, {2, 12}, {2, 12}}, []bool{true, true, true, true}},
		{"copy in another RAW message", []struct{ seq, raw uint64 }{{1, 10}, {3, 11}, {2, 12}, {2, 13}}, []bool{true, true, true, false}},
		{"retry after a later frame", []struct{ seq, raw uint64 }{{1, 10}, {3, 11}, {2, 12}, {4, 13}, {2, 12}}, []bool{true, true, true, true, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m mark
			for i, f := range tt.frame {
				next, v := m.accepts(frameRef{seq: f.seq, raw: f.raw, recv: int64(1000 + i)})
				ok := v == fresh
				if ok != tt.want[i] {
					t.Fatalf("frame %d (seq %d, raw %d): accepted %v, want %v", i, f.seq, f.raw, ok, tt.want[i])
				}
				next.rev = 1
				m = next
			}
		})
	}
}

// TestReplayBelowTheWindow checks the rule below the window: a frame the
// edge received before the frame holding the mark was delayed inside the
// pipeline and is accepted; one received after it is a replay.
func TestReplayBelowTheWindow(t *testing.T) {
	var m mark
	for i, f := range []struct {
		ref  frameRef
		want bool
	}{
		{frameRef{seq: 1, raw: 10, recv: 100}, true},
		{frameRef{seq: 2 + ReplayWindow*3, raw: 11, recv: 300}, true},
		{frameRef{seq: 2, raw: 12, recv: 150}, true},  // stored late by a retried publish
		{frameRef{seq: 2, raw: 12, recv: 150}, true},  // the same RAW message handled again
		{frameRef{seq: 3, raw: 13, recv: 400}, false}, // recorded and sent again later
		{frameRef{seq: 1, raw: 14, recv: 0}, false},   // no receive time: refused
		{frameRef{seq: 4, raw: 15, recv: 300}, false}, // not before the mark's frame
	} {
		next, v := m.accepts(f.ref)
		ok := v == fresh
		if ok != f.want {
			t.Fatalf("frame %d %+v: accepted %v, want %v", i, f.ref, ok, f.want)
		}
		next.rev = 1
		m = next
	}
}

// BenchmarkV2Handler is the worker's whole handler for a v2 frame of a
// known device (headers, key by id, AES-GCM, payload, the replay check on
// the partition's marks in memory, the READINGS message) and the reading's
// completion (its mark recorded, the ACK sent), short of the network: what
// BenchmarkCachedOpen's "handler" is for legacy.
func BenchmarkV2Handler(b *testing.B) {
	devs := benchDevices(1000)
	d := devs[len(devs)-1]
	js := &stubJetStream{}
	// parts partitions, as stubMsg's subjects: with any other count the
	// frame is in another partition than its device's and dead-lettered.
	w, err := newWorker(js, Options{Keys: devs, Partitions: parts})
	if err != nil {
		b.Fatal(err)
	}
	m, err := newMetrics(nil, w.ix)
	if err != nil {
		b.Fatal(err)
	}
	store := newMarkStore(js, nil, parts, w.log, m)
	p := bus.Partition(d.ID, parts)
	// The partition is owned and loaded: no round trip, as in steady state.
	store.parts[p] = &partState{p: p, live: map[markID]mark{}, durable: map[markID]mark{}, pending: map[uint64]uint64{}}
	w.marks, w.store = store, store
	const frames = 1 << 17
	msgs := make([]*stubMsg, frames)
	for i := range msgs {
		h := rawHeaders("v2-bench", i+1, time.Now())
		h.Set(bus.HeaderProtocol, bus.ProtocolV2)
		h.Set(bus.HeaderDevice, d.ID)
		msgs[i] = &stubMsg{data: v2FrameFor(b, d, uint64(i+1), i%2 == 0), header: h, seq: uint64(i + 1)}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		js.published = js.published[:0]
		done, err := w.handle(b.Context(), msgs[i%frames])
		if err != nil {
			b.Fatal(err)
		}
		if i < frames && (len(js.published) != 1 || js.published[0].Subject != bus.ReadingsSubject(p, d.ID)) {
			b.Fatalf("frame %d: not published as a reading", i+1)
		}
		if done != nil {
			if err := done.Wait(b.Context()); err != nil {
				b.Fatal(err)
			}
		}
		i++
	}
}
