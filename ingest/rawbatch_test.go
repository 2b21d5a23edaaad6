package ingest

import (
	"bufio"
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

// rawFrame is a frame as RAW holds it, alone or in a batch, with the
// message that carried it.
type rawFrame struct {
	bus.RawFrame
	subject   string
	msgFrames int // frames in its message
}

// rawFrames reads RAW until it has want frames, unbatching batches; more
// is a failure.
func rawFrames(t testing.TB, js jetstream.JetStream, want int) []rawFrame {
	t.Helper()
	var out []rawFrame
	readRaw(t, js, want, func(m jetstream.Msg) int {
		fs := unbatched(t, m.Subject(), m.Headers(), m.Data())
		out = append(out, fs...)
		return len(fs)
	})
	return out
}

func unbatched(t testing.TB, subject string, h nats.Header, data []byte) []rawFrame {
	t.Helper()
	if !bus.IsRawBatch(h) {
		seq, err := strconv.ParseUint(h.Get(bus.HeaderFrameSeq), 10, 64)
		if err != nil {
			t.Fatalf("frame header: %v", err)
		}
		recv, err := time.Parse(time.RFC3339Nano, h.Get(bus.HeaderReceived))
		if err != nil {
			t.Fatalf("received header: %v", err)
		}
		return []rawFrame{{RawFrame: bus.RawFrame{Protocol: h.Get(bus.HeaderProtocol), Device: h.Get(bus.HeaderDevice), Conn: h.Get(bus.HeaderConn), Seq: seq, Received: recv, Remote: h.Get(bus.HeaderRemote), Local: h.Get(bus.HeaderLocal), Data: data}, subject: subject, msgFrames: 1}}
	}
	fs, err := bus.DecodeRawBatch(data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := time.Parse(time.RFC3339Nano, h.Get(bus.HeaderReceived)); err != nil || h.Get(bus.HeaderEdge) == "" || h.Get(jetstream.MsgIDHeader) == "" {
		t.Fatalf("batch headers %v", h)
	}
	out := make([]rawFrame, len(fs))
	for i := range fs {
		out[i] = rawFrame{RawFrame: fs[i], subject: subject, msgFrames: len(fs)}
	}
	return out
}

// TestBatchedFramesLandInRaw: with RawBatch, connections sending in bursts
// have their frames stored in batches of at most RawBatch, each frame
// once, byte for byte, in its connection's order, in its connection's
// partition, with what its headers would have said.
func TestBatchedFramesLandInRaw(t *testing.T) {
	for _, batch := range []int{2, DefaultRawBatch} {
		t.Run("raw-batch="+strconv.Itoa(batch), func(t *testing.T) {
			h := start(t, Options{RawBatch: batch})
			const conns, perConn = 20, 50
			var wg sync.WaitGroup
			for range conns {
				c := dial(t, h)
				wg.Go(func() {
					var burst []byte
					for i := 1; i <= perConn; i++ {
						burst = append(burst, frame(i)...)
					}
					if _, err := c.Write(burst); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			fs := rawFrames(t, h.js, conns*perConn)
			next := map[string]int{}
			largest := 0
			for _, f := range fs {
				next[f.Conn]++
				if int(f.Seq) != next[f.Conn] {
					t.Fatalf("conn %s: frame %d, want %d", f.Conn, f.Seq, next[f.Conn])
				}
				if string(f.Data) != string(frame(next[f.Conn])) {
					t.Fatalf("conn %s frame %d differs from what was sent", f.Conn, f.Seq)
				}
				if want := bus.RawSubject(bus.Partition(f.Conn, parts)); f.subject != want {
					t.Fatalf("subject %s, want %s", f.subject, want)
				}
				if !strings.HasPrefix(f.Remote, "127.0.0.1:") || f.Local != h.edge.Addr().String() || time.Since(f.Received) > time.Minute {
					t.Fatalf("frame %+v", f.RawFrame)
				}
				if f.msgFrames > batch {
					t.Fatalf("a RAW message of %d frames, above --raw-batch %d", f.msgFrames, batch)
				}
				largest = max(largest, f.msgFrames)
			}
			if len(next) != conns {
				t.Fatalf("%d connection ids, want %d", len(next), conns)
			}
			if largest < 2 {
				t.Fatalf("%d frames sent in bursts were all stored one a message", len(fs))
			}
			t.Logf("%d frames, largest RAW message %d frames", len(fs), largest)
		})
	}
}

// TestBatchedFramesWaitForRaw: while RAW does not acknowledge, a
// partition's frames gather up to RawBatch and then its connections are
// not read; once RAW is back, every frame is stored.
func TestBatchedFramesWaitForRaw(t *testing.T) {
	h := start(t, Options{RawBatch: 4})
	c := dial(t, h)
	if _, err := c.Write(frame(1)); err != nil {
		t.Fatal(err)
	}
	rawFrames(t, h.js, 1)
	// RAW refuses new messages: the publishes fail and are retried.
	ctx := context.Background()
	s, err := h.js.Stream(ctx, bus.StreamRaw)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.Config
	cfg.MaxMsgs, cfg.Discard = 1, jetstream.DiscardNew
	if _, err := h.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	var burst []byte
	for i := 2; i <= 40; i++ {
		burst = append(burst, frame(i)...)
	}
	go func() { _, _ = c.Write(burst) }()
	// Two messages retried, one of up to 4 frames gathered: at most 12
	// frames read, the rest wait in the socket.
	time.Sleep(500 * time.Millisecond)
	if n := h.edge.batchedFrames.Load(); n > rawBatchesInFlight*4 {
		t.Fatalf("%d frames in batches awaiting RAW, above the bound", n)
	}
	cfg.MaxMsgs, cfg.Discard = -1, jetstream.DiscardOld
	if _, err := h.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	fs := rawFrames(t, h.js, 40)
	for i, f := range fs {
		if int(f.Seq) != i+1 {
			t.Fatalf("frame %d at %d: order lost", f.Seq, i+1)
		}
	}
}

// TestBatchedV2Frames: with RawBatch, v2 frames join their device's
// partition's batches beside legacy frames, each with its protocol and
// device, in the device's order; decrypt's replies reach each frame's
// connection, and a resend is stored again (no duplicate window for a
// batched frame) and answered again.
func TestBatchedV2Frames(t *testing.T) {
	h := start(t, Options{RawBatch: DefaultRawBatch})
	ackAsDecrypt(t, h.js.Conn(), map[string]*wire.V2Key{testDev.ID: v2Key})
	v2 := dial(t, h)
	legacy := dial(t, h)
	r := bufio.NewReader(v2)
	const frames = 40
	var v2Burst, legacyBurst []byte
	for seq := uint64(1); seq <= frames; seq++ {
		v2Burst = append(v2Burst, v2Frame(t, seq)...)
		legacyBurst = append(legacyBurst, frame(int(seq))...)
	}
	go func() { _, _ = legacy.Write(legacyBurst) }()
	if _, err := v2.Write(v2Burst); err != nil {
		t.Fatal(err)
	}
	acked := map[uint64]bool{}
	for range frames {
		f := readReply(t, r)
		if f.Type != wire.V2Ack || !v2Key.VerifyReply(&f, v2Frame(t, f.Seq)) {
			t.Fatalf("reply %+v does not verify", f)
		}
		acked[f.Seq] = true
	}
	if len(acked) != frames {
		t.Fatalf("ACKs for %d frames, want %d", len(acked), frames)
	}
	if _, err := v2.Write(v2Frame(t, 7)); err != nil { // a resend after a lost ACK
		t.Fatal(err)
	}
	if f := readReply(t, r); f.Type != wire.V2Ack || f.Seq != 7 {
		t.Fatalf("resend: reply %+v", f)
	}
	fs := rawFrames(t, h.js, 2*frames+1)
	var seqs []uint64
	batched := 0
	for _, f := range fs {
		if f.Protocol != bus.ProtocolV2 {
			continue
		}
		if f.Device != testDev.ID || f.subject != bus.RawSubject(bus.Partition(testDev.ID, parts)) {
			t.Fatalf("v2 frame %+v in %s: wrong device or partition", f.RawFrame, f.subject)
		}
		p, err := wire.ParseV2(f.Data)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, p.Seq)
		if f.msgFrames > 1 {
			batched++
		}
	}
	if len(seqs) != frames+1 || seqs[frames] != 7 {
		t.Fatalf("v2 frames in RAW: %v, want 1..%d then the resend of 7", seqs, frames)
	}
	for i, seq := range seqs[:frames] {
		if seq != uint64(i+1) {
			t.Fatalf("v2 frames in RAW: %v: order lost", seqs)
		}
	}
	if batched == 0 {
		t.Fatal("no v2 frame sent in a burst shared a RAW message")
	}
	if n := testutil.ToFloat64(h.edge.m.frames.WithLabelValues(bus.ProtocolV2)); n != frames+1 {
		t.Fatalf("medpipe_ingest_frames_total{protocol=v2} %v, want %d", n, frames+1)
	}
}

// TestRawBatchBound: an edge asked for larger RAW batches than a batch may
// hold (bus.MaxRawBatchFrames) refuses to start, naming the bound.
func TestRawBatchBound(t *testing.T) {
	for _, tc := range []struct {
		batch int
		ok    bool
	}{{bus.MaxRawBatchFrames, true}, {bus.MaxRawBatchFrames + 1, false}} {
		o := Options{EdgeID: "edge1", Partitions: 4, RawBatch: tc.batch}
		err := o.setDefaults()
		if (err == nil) != tc.ok || (err != nil && !strings.Contains(err.Error(), strconv.Itoa(bus.MaxRawBatchFrames))) {
			t.Fatalf("RawBatch %d: %v", tc.batch, err)
		}
	}
}

// TestRawLinger: a partition quiet for RawLinger stores its frame at once;
// one that stored a message less than RawLinger ago gathers frames until a
// batch is full or the linger ends, and shutting down sends what lingers.
func TestRawLinger(t *testing.T) {
	// An hour: only a full batch or the edge's end can send a lingering one.
	h := start(t, Options{RawBatch: 3, RawLinger: time.Hour})
	c := dial(t, h)
	send := func(i int) {
		t.Helper()
		if _, err := c.Write(frame(i)); err != nil {
			t.Fatal(err)
		}
	}
	send(1)
	if fs := rawFrames(t, h.js, 1); fs[0].msgFrames != 1 {
		t.Fatalf("a quiet partition's frame was stored in a message of %d", fs[0].msgFrames)
	}
	for i := 2; i <= 4; i++ {
		send(i)
		time.Sleep(10 * time.Millisecond) // each frame ends on its own (idle gap)
	}
	fs := rawFrames(t, h.js, 4)
	for _, f := range fs[1:] {
		if f.msgFrames != 3 {
			t.Fatalf("frame %d in a message of %d, want the 3 sent within the linger together", f.Seq, f.msgFrames)
		}
	}
	send(5)
	metricIs(t, "frames gathered", func() float64 {
		n := 0
		for _, g := range h.edge.gathers {
			g.mu.Lock()
			n += g.n
			g.mu.Unlock()
		}
		return float64(n)
	}, 1)
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if fs := rawFrames(t, h.js, 5); fs[4].Seq != 5 || fs[4].msgFrames != 1 {
		t.Fatalf("last frame %+v in a message of %d", fs[4].RawFrame, fs[4].msgFrames)
	}
}
