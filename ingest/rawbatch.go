package ingest

import (
	"encoding/binary"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

// DefaultRawBatch is how many frames of a RAW partition `medpipe up`
// stores in one RAW message when they are ready together. A partition
// with one frame ready and a message slot free sends it at once unless it
// sent a message less than Options.RawLinger ago: frames gather while the
// partition's earlier message awaits RAW's ack, and for the rest of the
// linger, so only a busy partition's frames wait (at most the linger).
const DefaultRawBatch = 64

// rawBatchesInFlight bounds a partition's batches awaiting RAW's ack:
// frames gather while one is out, so batches grow with the load. One keeps
// a connection's frames in order even when RAW fails a publish: the next
// batch leaves only once the retry has stored the one before.
const rawBatchesInFlight = 1

// maxRawBatchBytes bounds a RAW batch's body, well under JetStream's
// default 1 MB message limit.
const maxRawBatchBytes = 256 << 10

// rawGather is one RAW partition's frames gathered for its next message.
// Connections add frames (gather); the partition's flusher (flushRaw)
// takes them all whenever one of its message slots is free.
type rawGather struct {
	part    int
	mu      sync.Mutex
	ready   sync.Cond // frames arrived, or the edge drains
	room    sync.Cond // the flusher took the frames
	records []byte    // the frames, as bus.AppendRawFrame writes them
	n       int       // how many
	first   time.Time // the first one's receive time
	// owed are the v2 frames gathered: each is owed an ERROR if the
	// message is lost (when it is stored, decrypt answers each).
	owed   []owedV2
	closed bool // no more frames: flush what is left and stop
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

// owedV2 is a batched v2 frame's connection and sequence number: what the
// edge needs to tell the device that its frame was not stored.
type owedV2 struct {
	cn  *conn
	seq uint64
}

// gather adds a connection's frame (the n-th it read) to its partition's
// next RAW message; a v2 frame comes with its device and sequence number.
// It waits while that message is full: a partition whose messages RAW does
// not acknowledge slows its connections' reads.
func (e *Edge) gather(cn *conn, g *rawGather, n uint64, frame []byte, v2 *wire.V2Frame) error {
	f := bus.RawFrame{Protocol: bus.ProtocolLegacy, Conn: cn.id, Seq: n, Remote: cn.remote, Local: cn.local, Data: frame}
	if v2 != nil {
		f.Protocol, f.Device = bus.ProtocolV2, v2.Device
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.full(e.o.RawBatch) {
		g.room.Wait()
	}
	f.Received = time.Now()
	records, err := bus.AppendRawFrame(g.records, &f)
	if err != nil {
		return err
	}
	if g.n == 0 {
		g.first = f.Received
	}
	g.records = records
	g.n++
	if v2 != nil {
		g.owed = append(g.owed, owedV2{cn, v2.Seq})
	}
	if g.n == 1 || g.full(e.o.RawBatch) { // what the flusher waits for
		g.ready.Signal()
	}
	return nil
}

// linger waits, with g.mu held, until the partition's gathered frames
// fill a message of batch frames, the partition closes, or until passes.
func (g *rawGather) linger(until time.Time, batch int) {
	wait := time.Until(until)
	if wait <= 0 || g.full(batch) || g.closed {
		return
	}
	// The timer only wakes the flusher; a wake-up from a timer of an
	// earlier linger finds its own until still ahead and waits on.
	t := time.AfterFunc(wait, func() {
		g.mu.Lock()
		g.ready.Signal()
		g.mu.Unlock()
	})
	defer t.Stop()
	for !g.full(batch) && !g.closed && time.Now().Before(until) {
		g.ready.Wait()
	}
}

// full reports whether the gathered frames make a whole message.
func (g *rawGather) full(batch int) bool {
	return g.n >= batch || len(g.records) >= maxRawBatchBytes
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
	var sent time.Time // when the partition's previous message left
	for batch := uint64(1); ; batch++ {
		g.slots <- struct{}{}
		g.mu.Lock()
		for g.n == 0 && !g.closed {
			g.ready.Wait()
		}
		g.linger(sent.Add(e.o.RawLinger), e.o.RawBatch)
		sent = time.Now()
		n, records, first, owed := g.n, g.records, g.first, g.owed
		g.records, g.n, g.owed = spare[:0], 0, nil
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
				bus.HeaderProtocol: {bus.ProtocolBatch},
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
		p := pendingPublish{msg: msg, batch: g, frames: n, owed: owed}
		if e.abandon.Err() != nil {
			e.unconfirmed.Add(int64(n))
			e.released(p)
			continue
		}
		f, err := e.js.PublishMsgAsync(msg, bus.Backpressure)
		if err != nil {
			if !e.retry(msg, err) {
				e.unconfirmed.Add(int64(n))
				e.owedErrors(p) // as serveV2 does for a frame of its own
			}
			e.released(p)
			continue
		}
		p.future = f
		e.pending <- p
	}
}

// owedErrors tells each v2 device of a batch RAW could not store that its
// frame was not stored (notStored). Written aside, as settleV2 does: the
// watcher must not wait on devices' sockets.
func (e *Edge) owedErrors(p pendingPublish) {
	if len(p.owed) == 0 {
		return
	}
	go func() {
		for _, o := range p.owed {
			o.cn.writeReply(notStored(o.seq))
		}
	}()
}
