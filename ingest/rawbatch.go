package ingest

import (
	"encoding/binary"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
)

// DefaultRawBatch is how many legacy frames of a RAW partition `medpipe
// up` stores in one RAW message when they are ready together. A partition
// with one frame ready and a message slot free sends it at once: frames
// gather only while the partition's earlier messages await RAW's ack, so
// batching adds no delay of its own.
const DefaultRawBatch = 64

// rawBatchesInFlight bounds a partition's batches awaiting RAW's ack:
// frames gather while one is out, so batches grow with the load. One keeps
// a connection's frames in order even when RAW fails a publish: the next
// batch leaves only once the retry has stored the one before.
const rawBatchesInFlight = 1

// maxRawBatchBytes bounds a RAW batch's body, well under JetStream's
// default 1 MB message limit.
const maxRawBatchBytes = 256 << 10

// rawGather is one RAW partition's legacy frames gathered for its next
// message. Connections add frames (gatherLegacy); the partition's flusher
// (flushRaw) takes them all whenever one of its message slots is free.
type rawGather struct {
	part    int
	mu      sync.Mutex
	ready   sync.Cond // frames arrived, or the edge drains
	room    sync.Cond // the flusher took the frames
	records []byte    // the frames, as bus.AppendRawFrame writes them
	n       int       // how many
	first   time.Time // the first one's receive time
	closed  bool      // no more frames: flush what is left and stop
	// slots holds one token per message of the partition awaiting RAW's
	// ack; watchAcks takes it back.
	slots chan struct{}
}

func newRawGathers(parts int) []*rawGather {
	gs := make([]*rawGather, parts)
	for p := range gs {
		g := &rawGather{part: p, slots: make(chan struct{}, rawBatchesInFlight)}
		g.ready.L, g.room.L = &g.mu, &g.mu
		gs[p] = g
	}
	return gs
}

// gatherLegacy adds a connection's frame to its partition's next RAW
// message. It waits while that message is full: a partition whose
// messages RAW does not acknowledge slows its connections' reads.
func (e *Edge) gatherLegacy(cn *conn, g *rawGather, seq uint64, frame []byte) {
	now := time.Now()
	g.mu.Lock()
	for g.n >= e.o.RawBatch || len(g.records) >= maxRawBatchBytes {
		g.room.Wait()
	}
	if g.n == 0 {
		g.first = now
	}
	g.records = bus.AppendRawFrame(g.records, &bus.RawFrame{Conn: cn.id, Seq: seq, Received: now, Remote: cn.remote, Local: cn.local, Data: frame})
	g.n++
	g.ready.Signal()
	g.mu.Unlock()
}

// closeGather ends a partition's gathering: its flusher sends what is left
// and returns.
func (g *rawGather) close() {
	g.mu.Lock()
	g.closed = true
	g.ready.Broadcast()
	g.mu.Unlock()
}

// flushRaw sends a partition's gathered frames, one RAW message whenever a
// slot is free, until the partition is closed and empty. Its messages are
// followed up by watchAcks like single frames, retried under their id.
func (e *Edge) flushRaw(g *rawGather) {
	var spare []byte
	for batch := uint64(1); ; batch++ {
		g.slots <- struct{}{}
		g.mu.Lock()
		for g.n == 0 && !g.closed {
			g.ready.Wait()
		}
		n, records, first := g.n, g.records, g.first
		g.records, g.n = spare[:0], 0
		g.room.Broadcast()
		g.mu.Unlock()
		if n == 0 { // closed
			<-g.slots
			return
		}
		msg := &nats.Msg{
			Subject: bus.RawSubject(g.part),
			Data:    bus.AppendRawBatch(make([]byte, 0, 1+binary.MaxVarintLen64+len(records)), n, records),
			Header: nats.Header{
				bus.HeaderEdge:     {e.o.EdgeID},
				bus.HeaderProtocol: {bus.ProtocolLegacyBatch},
				bus.HeaderReceived: {first.UTC().Format(time.RFC3339Nano)},
				// A retried publish of the batch is stored once; the
				// process's own prefix keeps ids apart across restarts of
				// an edge that keeps its EdgeID.
				jetstream.MsgIDHeader: {e.batchIDPrefix + strconv.Itoa(g.part) + ":" + strconv.FormatUint(batch, 10)},
			},
		}
		spare = records
		e.m.framesPerMessage.Observe(float64(n))
		e.batchedFrames.Add(int64(n))
		p := pendingPublish{msg: msg, batch: g, frames: n}
		if e.abandon.Err() != nil {
			e.unconfirmed.Add(int64(n))
			e.released(p)
			continue
		}
		f, err := e.js.PublishMsgAsync(msg, bus.Backpressure)
		if err != nil {
			if !e.retry(msg, err) {
				e.unconfirmed.Add(int64(n))
			}
			e.released(p)
			continue
		}
		p.future = f
		e.pending <- p
	}
}
