package decrypt

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

func v2FrameFor(t *testing.T, d wire.Device, seq uint64, withPulse bool) []byte {
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

// isFresh turns advance's verdict into "accepted", for the tests written
// before duplicates were told from replays.
func isFresh(v verdict, w *markWrite, err error) (bool, *markWrite, error) { return v == fresh, w, err }

// publishV2Raw stores a v2 frame in RAW as the edge would, without a
// message id so the test can store the same frame twice (a replay).
func publishV2Raw(t *testing.T, js jetstream.JetStream, device string, n int, frame []byte) {
	t.Helper()
	h := nats.Header{}
	h.Set(bus.HeaderConn, "v2conn")
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
// unknown device refused.
func TestV2Frames(t *testing.T) {
	js := setup(t)
	devs := loadKeys(t)
	d := devs[1]
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
	for i, f := range frames {
		publishV2Raw(t, js, d.ID, i+1, f)
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
		reasons[m.Headers().Get(bus.HeaderReason)]++
	}
	want := map[string]int{string(bus.ReasonReplayed): 1, string(bus.ReasonTampered): 1, string(bus.ReasonUnknownDevice): 1}
	if fmt.Sprint(reasons) != fmt.Sprint(want) {
		t.Fatalf("dead letters %v, want %v", reasons, want)
	}
}

// TestSeqMarksConcurrent: two workers racing on one device with the same
// frames stored twice in RAW (a replay) accept each sequence number exactly
// once, and a redelivered RAW message (same raw sequence) is not taken for
// a replay.
func TestSeqMarksConcurrent(t *testing.T) {
	js := setup(t)
	kv, err := bus.OpenSeqStore(t.Context(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	a, b := newSeqMarks(js, kv), newSeqMarks(js, kv)
	var mu sync.Mutex
	accepted := map[uint64]int{}
	var wg sync.WaitGroup
	for i, s := range []*seqMarks{a, b} {
		wg.Go(func() {
			for seq := uint64(1); seq <= 100; seq++ {
				ok, write, err := isFresh(s.advance(t.Context(), "dev", frameRef{seq: seq, raw: uint64(1000*(i+1)) + seq}))
				if err != nil {
					t.Error(err)
					return
				}
				if ok && write != nil {
					// Accepted only once stored: a write refused because the
					// other worker moved the mark leaves no reading.
					_, err := write.wait(t.Context())
					ok = err == nil
				}
				if ok {
					mu.Lock()
					accepted[seq]++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	for seq := uint64(1); seq <= 100; seq++ {
		if accepted[seq] > 1 {
			t.Fatalf("seq %d accepted %d times", seq, accepted[seq])
		}
	}
	if accepted[100] != 1 {
		t.Fatal("the last sequence number was accepted by neither")
	}
	m, err := a.current(t.Context(), "dev")
	if err != nil {
		t.Fatal(err)
	}
	if ok, _, _ := isFresh(a.advance(t.Context(), "dev", frameRef{seq: 100, raw: m.raw})); !ok {
		t.Fatal("a redelivery of the RAW message holding the mark was refused")
	}
	if ok, _, _ := isFresh(a.advance(t.Context(), "dev", frameRef{seq: 100, raw: 5555})); ok {
		t.Fatal("the same sequence number in another RAW message was accepted")
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

// TestWindowEncoding checks that a window survives the KV value, and that
// a mark written with the old 64-frame window reads as its first word.
func TestWindowEncoding(t *testing.T) {
	var w window
	for _, k := range []uint64{0, 1, 63, 64, 500, ReplayWindow - 1} {
		w.set(k)
	}
	if got := parseWindow(string(w.appendHex(nil))); got != w {
		t.Fatalf("round trip: %x, want %x", got, w)
	}
	if got := parseWindow("8000000000000001"); got[0] != 0x8000000000000001 || got[1] != 0 {
		t.Fatalf("old format: %x", got)
	}
	s := w.shifted(65)
	if !s.has(65) || !s.has(66) || !s.has(128) || !s.has(129) || s.has(0) || s.has(64) {
		t.Fatalf("shifted by 65: %x", s)
	}
}

// TestStaleMarkLetsNoReplayThrough: a worker whose copy of a device's mark
// is stale (another worker accepted newer frames meanwhile) decides a
// copy of one of those frames as new; its mark write is refused, and the
// reading must not reach READINGS before that answer: the frame comes back,
// is decided against the stored mark, and taken for a duplicate (acknowledged
// again, never stored twice).
func TestStaleMarkLetsNoReplayThrough(t *testing.T) {
	js := setup(t)
	devs := loadKeys(t)
	d := devs[3]
	w := runV2Worker(t, js, devs)
	kv, err := bus.OpenSeqStore(t.Context(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	publishV2Raw(t, js, d.ID, 1, v2FrameFor(t, d, 1, false))
	streamMsgs(t, js, bus.StreamReadings, 1)
	other := newSeqMarks(js, kv) // another worker, after a partition moved
	mk := markKey(d.ID, wire.NewV2Key(d).Generation())
	for seq := uint64(2); seq <= 3; seq++ {
		ok, write, err := isFresh(other.advance(t.Context(), mk, frameRef{seq: seq, raw: 9000 + seq}))
		if err != nil || !ok {
			t.Fatalf("other worker: seq %d: ok %v, err %v", seq, ok, err)
		}
		if _, err := write.wait(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	publishV2Raw(t, js, d.ID, 2, v2FrameFor(t, d, 2, false)) // a copy of what the other worker took
	waitFor(t, func() bool { return testutil.ToFloat64(w.m.duplicates) == 1 })
	s, err := js.Stream(t.Context(), bus.StreamReadings)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("READINGS holds %d readings, want 1: the replay got through", info.State.Msgs)
	}
	if got := testutil.ToFloat64(w.m.markWriteFailures); got != 1 {
		t.Fatalf("mark write failures %v, want 1", got)
	}
}

// failedFuture is a publish whose answer was lost: it fails with err
// whatever happened on the server.
type failedFuture struct{ err error }

func (f failedFuture) Ok() <-chan *jetstream.PubAck { return nil }
func (f failedFuture) Err() <-chan error {
	c := make(chan error, 1)
	c <- f.err
	return c
}
func (f failedFuture) Msg() *nats.Msg { return nil }

// TestMarkRedeliveryAndLostAnswer: a RAW message whose mark this worker
// stored is accepted again when redelivered, however far the mark moved
// since (its reading is published again and READINGS drops the copy),
// while the same sequence number in another RAW message stays a replay;
// and a mark write whose answer was lost is written again against the
// same revision: it counts as stored when the bucket holds its frame or
// takes the second copy, but not when the bucket refused it or the mark
// moved past it without it.
func TestMarkRedeliveryAndLostAnswer(t *testing.T) {
	js := setup(t)
	kv, err := bus.OpenSeqStore(t.Context(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	s := newSeqMarks(js, kv)
	accept := func(seq, raw uint64) *markWrite {
		t.Helper()
		ok, w, err := isFresh(s.advance(t.Context(), "dev", frameRef{seq: seq, raw: raw}))
		if err != nil || !ok {
			t.Fatalf("seq %d raw %d: ok %v, err %v", seq, raw, ok, err)
		}
		if w != nil {
			if _, err := w.wait(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		return w
	}
	w1 := accept(1, 101)
	accept(2, 102)
	accept(3, 103)
	if ok, _, _ := isFresh(s.advance(t.Context(), "dev", frameRef{seq: 1, raw: 101})); !ok {
		t.Fatal("a redelivery of an accepted RAW message was refused")
	}
	if ok, _, _ := isFresh(s.advance(t.Context(), "dev", frameRef{seq: 1, raw: 999})); ok {
		t.Fatal("sequence 1 in another RAW message was accepted")
	}

	// lostAnswer is the write of frame f over the mark stored at revision
	// prev, its answer err whatever happened on the server.
	lostAnswer := func(s *seqMarks, f frameRef, prev uint64, err error) *markWrite {
		t.Helper()
		m, lerr := s.load(t.Context(), "dev")
		if lerr != nil {
			t.Fatal(lerr)
		}
		next, _ := m.accepts(f)
		return &markWrite{s: s, device: "dev", f: f, value: next.encode(), prev: prev, fut: failedFuture{err}, turn: make(chan struct{}, 1)}
	}
	// Seq 3's write, had its answer been lost: the bucket holds its mark
	// (the second copy is refused), so it succeeded, with the stored revision.
	last := lostAnswer(newSeqMarks(js, kv), frameRef{seq: 3, raw: 103}, w1.rev, jetstream.ErrAsyncPublishTimeout)
	if rev, err := last.wait(t.Context()); err != nil || rev == 0 {
		t.Fatalf("a write whose answer was lost, its mark the stored one: rev %d, err %v", rev, err)
	}
	// Seq 1's write, had its answer been lost, frames after it decided
	// since: the stored window holds seq 1, so its frame counts as recorded,
	// and its RAW message is accepted when it comes back.
	other := newSeqMarks(js, kv)
	lost := lostAnswer(other, w1.f, 0, nats.ErrDisconnected)
	if _, err := lost.wait(t.Context()); err == nil || !lost.landed {
		t.Fatalf("a write whose answer was lost, with its frame in the window: err %v, landed %v", err, lost.landed)
	}
	if ok, _, _ := isFresh(other.advance(t.Context(), "dev", w1.f)); !ok {
		t.Fatal("the RAW message of a write that landed unanswered was refused when retried")
	}
	// A write for seq 11 over seq 3's mark that never reached the bucket,
	// while another worker's write for seq 10 took that revision: its
	// second copy is refused, and the stored mark does not hold it.
	stored, err := s.load(t.Context(), "dev")
	if err != nil {
		t.Fatal(err)
	}
	stale := lostAnswer(newSeqMarks(js, kv), frameRef{seq: 11, raw: 111}, stored.rev, jetstream.ErrAsyncPublishTimeout)
	accept(10, 110)
	if _, err := stale.wait(t.Context()); err == nil || stale.landed {
		t.Fatal("a write that never reached the bucket counted as stored after the mark moved")
	}
	// Seq 12's write never reached the bucket, and the mark has not moved:
	// the second copy lands.
	stored, err = s.load(t.Context(), "dev")
	if err != nil {
		t.Fatal(err)
	}
	never := lostAnswer(newSeqMarks(js, kv), frameRef{seq: 12, raw: 112}, stored.rev, nats.ErrDisconnected)
	if rev, err := never.wait(t.Context()); err != nil || rev <= stored.rev {
		t.Fatalf("a write that never reached the bucket, written again: rev %d (stored %d), err %v", rev, stored.rev, err)
	}
	if m, err := s.load(t.Context(), "dev"); err != nil || m.seq != 12 || m.lastRaw != 112 {
		t.Fatalf("mark after the second copy: %+v, err %v", m, err)
	}
	// A refusal is final even when the frame is in the bucket (another
	// worker stored a copy of it).
	refused := lostAnswer(newSeqMarks(js, kv), w1.f, 0, &jetstream.APIError{ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence})
	if _, err := refused.wait(t.Context()); err == nil || refused.landed {
		t.Fatal("a refused write counted as stored")
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
