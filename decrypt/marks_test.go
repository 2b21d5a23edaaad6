package decrypt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// markRig drives mark stores against a real JetStream: each store stands
// for one worker; a frame a store accepts has its reading stored in
// READINGS as a worker would (with the key generation header).
type markRig struct {
	t  *testing.T
	js jetstream.JetStream
	kv jetstream.KeyValue
}

func newMarkRig(t *testing.T) *markRig {
	t.Helper()
	js := setup(t)
	kv, err := bus.OpenSeqStore(t.Context(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	return &markRig{t: t, js: js, kv: kv}
}

// store is a new worker's mark store (nothing loaded yet).
func (r *markRig) store() *markStore {
	m, err := newMetrics(nil, NewKeyIndex(nil))
	if err != nil {
		r.t.Fatal(err)
	}
	return newMarkStore(r.js, r.kv, parts, slog.Default(), m)
}

const rigGen = "g1"

func ref(device, pin string, seq, raw uint64) v2Ref {
	return v2Ref{id: markID{device, rigGen}, part: bus.Partition(device, parts), pin: pin,
		frameRef: frameRef{seq: seq, raw: raw, recv: time.Now().UnixNano()}}
}

// offer has s decide a frame and, when accepted, stores its reading and
// reports it; it returns the verdict.
func (r *markRig) offer(s *markStore, f v2Ref) verdict {
	r.t.Helper()
	v, acc, err := s.accept(r.t.Context(), f)
	if err != nil {
		r.t.Fatal(err)
	}
	if v == fresh && acc != nil {
		rd := &bus.Reading{Device: f.id.device, Protocol: bus.ProtocolV2, Seq: f.seq, RawSeq: f.raw, Received: time.Unix(0, f.recv).UTC(), Conn: "c", FrameSeq: 1}
		rd.SetWire(&wire.Reading{"36.600", "23.700", "1.700", "0.000", "0.000", "1.000", "23.400"})
		data, err := bus.AppendReading(nil, rd)
		if err != nil {
			r.t.Fatal(err)
		}
		msg := &nats.Msg{Subject: bus.ReadingsSubject(f.part, f.id.device), Data: data, Header: nats.Header{
			bus.HeaderKeyGen: {f.id.gen}, jetstream.MsgIDHeader: {"r:" + strconv.FormatUint(f.raw, 10)}}}
		ack, err := r.js.PublishMsg(r.t.Context(), msg)
		if err != nil {
			r.t.Fatal(err)
		}
		s.stored(acc, ack.Sequence, nil)
	}
	return v
}

// TestMarkStoreTakeover: a worker's marks survive its crash: frames it
// accepted before its last checkpoint come back from the checkpoint, and
// those accepted after it from READINGS, so that none of them is accepted
// again by the worker that takes the partition over.
func TestMarkStoreTakeover(t *testing.T) {
	r := newMarkRig(t)
	a := r.store()
	for seq := uint64(1); seq <= 3; seq++ {
		if v := r.offer(a, ref("dev-a", "pin-a", seq, 100+seq)); v != fresh {
			t.Fatalf("seq %d: %v", seq, v)
		}
	}
	a.checkpointAll(t.Context())
	for seq := uint64(4); seq <= 6; seq++ { // after the last checkpoint
		r.offer(a, ref("dev-a", "pin-a", seq, 100+seq))
	}
	// a crashes (nothing more written); b takes the partition over.
	b := r.store()
	for seq := uint64(1); seq <= 6; seq++ {
		if v := r.offer(b, ref("dev-a", "pin-b", seq, 900+seq)); v == fresh {
			t.Fatalf("seq %d, accepted by the crashed worker, accepted again after the takeover", seq)
		}
	}
	if got := testutil.ToFloat64(b.m.markFolded); got != 3 {
		t.Fatalf("folded %v readings, want the 3 stored after the checkpoint", got)
	}
	if v := r.offer(b, ref("dev-a", "pin-b", 7, 907)); v != fresh {
		t.Fatalf("the next frame after the takeover: %v", v)
	}
	// b stops cleanly (its last checkpoint exact); much later c takes over
	// and folds nothing.
	b.checkpointAll(t.Context())
	c := r.store()
	if v := r.offer(c, ref("dev-a", "pin-c", 5, 999)); v == fresh {
		t.Fatal("a replay accepted after a second takeover")
	}
	if got := testutil.ToFloat64(c.m.markFolded); got != 0 {
		t.Fatalf("folded %v readings after a clean stop, want 0", got)
	}
}

// TestMarkStoreStaleOwner: a worker whose partition was taken over has
// its next checkpoint refused and reloads before deciding anything more;
// a message delivered under another pin reloads at once.
func TestMarkStoreStaleOwner(t *testing.T) {
	r := newMarkRig(t)
	a, b := r.store(), r.store()
	r.offer(a, ref("dev-s", "pin-1", 1, 11))
	r.offer(b, ref("dev-s", "pin-2", 2, 12)) // b took the partition over
	// a does not know yet: its checkpoint is refused and it reloads.
	r.offer(a, ref("dev-s", "pin-1", 5, 15))
	a.checkpointAll(t.Context())
	if got := testutil.ToFloat64(a.m.markWriteFailures); got != 1 {
		t.Fatalf("refused checkpoint writes %v, want 1", got)
	}
	if v := r.offer(a, ref("dev-s", "pin-1", 2, 99)); v == fresh {
		t.Fatal("the stale owner accepted a copy of what the new owner accepted")
	}
	// A message under a new pin: the partition moved away and back.
	r.offer(b, ref("dev-s", "pin-2", 3, 13))
	if v := r.offer(a, ref("dev-s", "pin-3", 3, 98)); v == fresh {
		t.Fatal("a worker that got its partition back decided on its old marks")
	}
	if got := testutil.ToFloat64(a.m.markLoads); got != 3 {
		t.Fatalf("loads %v, want 3 (start, refused, new pin)", got)
	}
}

// TestMarkStoreRedelivery: a RAW message redelivered while its reading is
// on the way is the same frame (published again), while the same sequence
// number in another RAW message is not new.
func TestMarkStoreRedelivery(t *testing.T) {
	r := newMarkRig(t)
	s := r.store()
	v, acc, err := s.accept(t.Context(), ref("dev-r", "", 1, 10))
	if err != nil || v != fresh {
		t.Fatal(v, err)
	}
	if v, again, _ := s.accept(t.Context(), ref("dev-r", "", 1, 10)); v != fresh || again == nil {
		t.Fatalf("a redelivery of a frame on its way: %v", v)
	}
	if v, _, _ := s.accept(t.Context(), ref("dev-r", "", 1, 11)); v != duplicate {
		t.Fatalf("a resend in another RAW message: %v, want duplicate", v)
	}
	s.stored(acc, 0, errors.New("publish failed"))
	// A failed reading: the partition reloads from what READINGS holds
	// (nothing), and the frame is new again.
	if v := r.offer(s, ref("dev-r", "", 1, 10)); v != fresh {
		t.Fatalf("after a failed reading: %v", v)
	}
}

// TestMarkStoreReset: an operator's reset makes the owner forget the
// device's marks at once, and a worker taking over later ignores the
// checkpoint's and READINGS' marks from before the reset.
func TestMarkStoreReset(t *testing.T) {
	r := newMarkRig(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	watch := func(s *markStore) {
		ready := make(chan struct{})
		go func() { _ = s.watchResets(ctx, func() { close(ready) }) }()
		<-ready
	}
	a := r.store()
	watch(a)
	for seq := uint64(1); seq <= 4; seq++ {
		r.offer(a, ref("dev-x", "p", seq, seq))
		r.offer(a, ref("dev-y", "p", seq, 100+seq))
	}
	a.checkpointAll(t.Context())
	r.offer(a, ref("dev-x", "p", 5, 5)) // folded in at the takeover below
	time.Sleep(10 * time.Millisecond)   // the reset comes after every reading above
	if err := ResetMarks(t.Context(), r.kv, "dev-x"); err != nil {
		t.Fatal(err)
	}
	testkit.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		a.mu.Lock()
		defer a.mu.Unlock()
		if _, ok := a.resets["dev-x"]; !ok {
			return errors.New("the worker has not seen the reset of dev-x")
		}
		return nil
	})
	b := r.store() // before a writes again: its checkpoint predates the reset
	watch(b)
	if v := r.offer(b, ref("dev-x", "q", 2, 1002)); v != fresh {
		t.Fatalf("after the reset, on the worker taking over: %v", v)
	}
	if v := r.offer(b, ref("dev-y", "q", 2, 1003)); v == fresh {
		t.Fatal("another device's mark was reset too")
	}
	if v := r.offer(a, ref("dev-x", "p", 1, 2001)); v != fresh {
		t.Fatalf("after the reset, on the owner: %v", v)
	}
	if err := ResetMarks(t.Context(), r.kv, "bad id"); err == nil {
		t.Fatal("an invalid device id was reset")
	}
}

// TestMarkStoreDeletedCheckpoint: a checkpoint deleted by hand while its
// partition's owner runs is absent, not a livelock: the owner writes it
// again from its marks, which it keeps.
func TestMarkStoreDeletedCheckpoint(t *testing.T) {
	r := newMarkRig(t)
	s := r.store()
	for seq := uint64(1); seq <= 3; seq++ {
		r.offer(s, ref("dev-d", "", seq, seq))
	}
	s.checkpointAll(t.Context())
	key := checkpointKey(parts, bus.Partition("dev-d", parts))
	if err := r.kv.Delete(t.Context(), key); err != nil {
		t.Fatal(err)
	}
	r.offer(s, ref("dev-d", "", 4, 4))
	s.checkpointAll(t.Context())
	if v := r.offer(s, ref("dev-d", "", 2, 99)); v == fresh {
		t.Fatal("the owner forgot its marks when the checkpoint was deleted")
	}
	e, err := r.kv.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("the checkpoint was not written again: %v", err)
	}
	cp, err := decodeCheckpoint(e.Value())
	if err != nil || cp.marks[markID{"dev-d", rigGen}].seq != 4 {
		t.Fatalf("checkpoint written again: %+v, %v", cp, err)
	}
	// A purge (no marker history) and a takeover: absent, loaded without error.
	if err := r.kv.Purge(t.Context(), key); err != nil {
		t.Fatal(err)
	}
	if v := r.offer(r.store(), ref("dev-d", "new", 10, 10)); v != fresh {
		t.Fatalf("after a purge and a takeover: %v", v)
	}
}

// TestMarkStorePartitionCountChange: a partition without a checkpoint
// for the count in force adopts the marks of checkpoints written under
// another count for the devices it now holds.
func TestMarkStorePartitionCountChange(t *testing.T) {
	r := newMarkRig(t)
	old := &checkpoint{writer: 1, partitions: 7, partition: 3, covered: 1, marks: map[markID]mark{
		{"dev-m", rigGen}: {seq: 50, rev: 1, lastSeq: 50, seen: window{^uint64(0)}},
	}}
	if _, err := r.kv.Put(t.Context(), checkpointKey(7, 3), encodeCheckpoint(nil, old)); err != nil {
		t.Fatal(err)
	}
	s := r.store()
	if v := r.offer(s, ref("dev-m", "", 49, 1)); v == fresh {
		t.Fatal("a mark written under the old partition count was lost")
	}
	if v := r.offer(s, ref("dev-m", "", 51, 2)); v != fresh {
		t.Fatalf("the next frame: %v", v)
	}
}

// TestCheckpointCodec: checkpoints survive encoding, each mark deciding
// every reachable sequence number as before; damaged ones are refused.
func TestCheckpointCodec(t *testing.T) {
	marks := map[markID]mark{}
	var m mark
	for _, seq := range []uint64{1, 2, 3, 70, 5, 1500, 1499, 400} {
		next, v := m.accepts(frameRef{seq: seq, raw: seq + 10, recv: int64(seq)})
		if v == fresh {
			next.rev = 1
			m = next
		}
	}
	marks[markID{"dev-1", "g"}] = m
	young, _ := mark{}.accepts(frameRef{seq: 3, raw: 1, recv: 5})
	young.rev = 1
	marks[markID{"dev-2", "g"}] = young
	cp := &checkpoint{writer: 42, partitions: 16, partition: 5, covered: 1234, marks: marks}
	b := encodeCheckpoint(nil, cp)
	got, err := decodeCheckpoint(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.writer != 42 || got.partitions != 16 || got.partition != 5 || got.covered != 1234 || len(got.marks) != 2 {
		t.Fatalf("decoded %+v", got)
	}
	for id, want := range marks {
		have := got.marks[id]
		for seq := uint64(0); seq <= want.seq+2; seq++ {
			f := frameRef{seq: seq, raw: 7777, recv: 3}
			if _, v1 := want.accepts(f); true {
				if _, v2 := have.accepts(f); v1 != v2 {
					t.Fatalf("%v seq %d: %v before encoding, %v after", id, seq, v1, v2)
				}
			}
		}
	}
	t.Logf("2 marks: %d bytes", len(b))
	for _, bad := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"other magic", append([]byte("XCK\x01"), b[4:]...)},
		{"truncated", b[:len(b)-1]},
		{"trailing", append(append([]byte(nil), b...), 0)},
	} {
		if _, err := decodeCheckpoint(bad.b); !errors.Is(err, errCheckpoint) {
			t.Errorf("%s: %v", bad.name, err)
		}
	}
}

// FuzzCheckpoint: any input decodes or is refused without a panic, and
// what decodes encodes to what decodes the same.
func FuzzCheckpoint(f *testing.F) {
	f.Add(encodeCheckpoint(nil, &checkpoint{writer: 1, partitions: 16, partition: 3, covered: 9, marks: map[markID]mark{
		{"dev-1", "abcd"}: {seq: 9, raw: 9, lastSeq: 9, lastRaw: 9, recv: 5, rev: 1, seen: window{0b1011}},
	}}))
	f.Add(encodeCheckpoint(nil, &checkpoint{writer: 1, partitions: 1, partition: 0}))
	f.Fuzz(func(t *testing.T, b []byte) {
		cp, err := decodeCheckpoint(b)
		if err != nil {
			return
		}
		again, err := decodeCheckpoint(encodeCheckpoint(nil, &cp))
		if err != nil {
			t.Fatalf("re-encoded checkpoint refused: %v", err)
		}
		if fmt.Sprint(again.writer, again.partitions, again.partition, again.covered, len(again.marks)) !=
			fmt.Sprint(cp.writer, cp.partitions, cp.partition, cp.covered, len(cp.marks)) {
			t.Fatalf("round trip: %+v, want %+v", again, cp)
		}
		for id, m := range cp.marks {
			n := again.marks[id]
			if n.seq != m.seq || n.raw != m.raw || n.lastSeq != m.lastSeq || n.lastRaw != m.lastRaw || n.recv != m.recv || n.missing() != m.missing() {
				t.Fatalf("%v: %+v, want %+v", id, n, m)
			}
		}
	})
}
