package decrypt

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

// publishRawBatch stores frames in one RAW batch message of partition
// part, as the edge does with --raw-batch.
func publishRawBatch(t *testing.T, js jetstream.JetStream, part int, id string, fs []bus.RawFrame) uint64 {
	t.Helper()
	var records []byte
	for i := range fs {
		var err error
		if records, err = bus.AppendRawFrame(records, &fs[i]); err != nil {
			t.Fatal(err)
		}
	}
	return publishRawMsg(t, js, &nats.Msg{Subject: bus.RawSubject(part), Data: bus.AppendRawBatch(nil, len(fs), records), Header: nats.Header{
		bus.HeaderEdge: {"edge1"}, bus.HeaderProtocol: {bus.ProtocolBatch}, bus.HeaderReceived: {baseTime.Format(time.RFC3339Nano)},
		jetstream.MsgIDHeader: {id},
	}})
}

// TestWorkerReadsRawBatches: RAW batches of frames of several connections
// give every reading once, in its connection's order, whether READINGS
// takes them one a message or in batches smaller than a RAW batch (their
// ids name each frame, so two never collide); a batched frame that fits
// no key goes to DEADLETTER alone, with the headers it would have had as a
// message of its own, as does one whose record says what no edge writes
// (frame number 0); a batch whose body cannot be read goes whole.
func TestWorkerReadsRawBatches(t *testing.T) {
	for _, readingsBatch := range []int{1, 5, DefaultReadingsBatch} {
		t.Run("readings-batch="+strconv.Itoa(readingsBatch), func(t *testing.T) {
			js := setup(t)
			devs := loadKeys(t)
			stranger := wire.Device{ID: "stranger", Key: [16]byte([]byte("0000000000000000")), IV: [16]byte([]byte("0000000000000000"))}
			const n, conns = 30, 8
			// Per partition, frames of its connections in rounds, 40 a batch.
			byPart := map[int][]bus.RawFrame{}
			for i := 1; i <= n; i++ {
				for c := range conns {
					conn := fmt.Sprintf("edge1-%d", c)
					data := wireFrame(devs[c%len(devs)], wire.Pico+wire.Variant(c%2), i)
					if c == 3 && i == 7 {
						data = wireFrame(stranger, wire.Pico, i) // fits no key of this connection's
					}
					p := bus.Partition(conn, parts)
					byPart[p] = append(byPart[p], bus.RawFrame{Protocol: bus.ProtocolLegacy, Conn: conn, Seq: uint64(i), Received: receivedAt(i), Remote: "127.0.0.1:4000" + strconv.Itoa(c), Local: "127.0.0.1:9998", Data: data})
				}
			}
			batches := 0
			for p, fs := range byPart {
				for len(fs) > 0 {
					k := min(40, len(fs))
					batches++
					publishRawBatch(t, js, p, "b"+strconv.Itoa(batches), fs[:k])
					fs = fs[k:]
				}
			}
			// A frame whose record the edge could not have written (frame 0).
			unnumbered := publishRawBatch(t, js, 1, "unnumbered", []bus.RawFrame{{Protocol: bus.ProtocolLegacy, Conn: "edge1-x", Seq: 0, Received: baseTime, Data: wireFrame(devs[0], wire.Pico, 1)}})
			garbled := publishRawMsg(t, js, &nats.Msg{Subject: bus.RawSubject(0), Data: []byte{0xBB, 3, 1, 2}, Header: nats.Header{bus.HeaderEdge: {"edge1"}, bus.HeaderProtocol: {bus.ProtocolBatch}}})

			w := runBatchingWorker(t, js, devs, readingsBatch)
			rs := readReadings(t, js, n*conns-1, nil)
			waitRawDone(t, js)
			checkOnceInOrder(t, rs)
			for _, r := range rs {
				if !strings.HasPrefix(r.Remote, "127.0.0.1:4000") || r.Local != "127.0.0.1:9998" || r.Received.IsZero() {
					t.Fatalf("reading %+v lost its frame's addresses or time", r.Reading)
				}
			}
			dls := streamMsgs(t, js, bus.StreamDeadLetter, 3)
			for _, m := range dls {
				h := m.Headers()
				switch h.Get(bus.HeaderReason) {
				case string(bus.ReasonUnknownDevice), string(bus.ReasonInvalid):
					if h.Get(bus.HeaderConn) != "edge1-3" || h.Get(bus.HeaderFrameSeq) != "7" || h.Get(bus.HeaderProtocol) != bus.ProtocolLegacy ||
						h.Get(bus.HeaderEdge) != "edge1" || !strings.HasPrefix(h.Get(jetstream.MsgIDHeader), "dl:") || !strings.Contains(h.Get(jetstream.MsgIDHeader), ".") {
						t.Fatalf("dead letter of a batched frame has headers %v", h)
					}
					if string(m.Data()) != string(wireFrame(stranger, wire.Pico, 7)) {
						t.Fatal("dead letter of a batched frame does not hold the frame alone")
					}
				case string(bus.ReasonMalformed):
					switch h.Get(bus.HeaderRawSeq) {
					case strconv.FormatUint(garbled, 10):
					case strconv.FormatUint(unnumbered, 10):
						if h.Get(jetstream.MsgIDHeader) != "dl:"+strconv.FormatUint(unnumbered, 10)+".1" || !strings.Contains(h.Get(bus.HeaderError), "frame number 0") {
							t.Fatalf("dead letter of an unnumbered batched frame: %v", h)
						}
					default:
						t.Fatalf("malformed dead letter %v, want RAW %d or %d", h, garbled, unnumbered)
					}
				default:
					t.Fatalf("dead letter %v", h)
				}
			}
			if got := int(testutil.ToFloat64(w.m.frames)); got != n*conns+2 {
				t.Errorf("medpipe_decrypt_frames_total %d, want %d (each batched frame, and the garbled batch)", got, n*conns+2)
			}
		})
	}
}
