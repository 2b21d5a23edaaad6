package wire

// Outbox keeps a v2 device's frames until the edge acknowledges them, so
// that they can be resent, in order and byte-identical, after a reconnect
// (see PROTOCOL.md, ACK). It is bounded by frame count and by bytes; when
// full, the oldest frame is dropped and counted. The simulator and the
// firmware share it. It is not safe for concurrent use.
type Outbox struct {
	maxFrames, maxBytes int
	frames              []outboxFrame // oldest first; a ring would save a copy, a slice is simpler to read
	bytes               int
	dropped             uint64
}

type outboxFrame struct {
	seq   uint64
	frame []byte
}

// NewOutbox returns an outbox holding at most maxFrames frames and
// maxBytes bytes of frames (0: no byte bound).
func NewOutbox(maxFrames, maxBytes int) *Outbox {
	return &Outbox{maxFrames: max(maxFrames, 1), maxBytes: maxBytes}
}

// Add keeps frame (sequence number seq, which must exceed every kept one)
// until it is acknowledged; the outbox owns frame from now on. It returns
// how many old frames were dropped to make room.
func (o *Outbox) Add(seq uint64, frame []byte) int {
	n := 0
	for len(o.frames) > 0 && (len(o.frames) >= o.maxFrames || o.maxBytes > 0 && o.bytes+len(frame) > o.maxBytes) {
		o.bytes -= len(o.frames[0].frame)
		o.frames[0] = outboxFrame{}
		o.frames = o.frames[1:]
		n++
	}
	o.frames = append(o.frames, outboxFrame{seq, frame})
	o.bytes += len(frame)
	o.dropped += uint64(n)
	return n
}

// Ack drops every frame up to and including seq (the edge acknowledges in
// order) and returns how many it dropped.
func (o *Outbox) Ack(seq uint64) int {
	n := 0
	for n < len(o.frames) && o.frames[n].seq <= seq {
		o.bytes -= len(o.frames[n].frame)
		o.frames[n] = outboxFrame{}
		n++
	}
	o.frames = o.frames[n:]
	return n
}

// Len returns the number of unacknowledged frames.
func (o *Outbox) Len() int { return len(o.frames) }

// Bytes returns the size of the unacknowledged frames.
func (o *Outbox) Bytes() int { return o.bytes }

// Dropped returns how many frames were dropped unacknowledged since the
// outbox was made.
func (o *Outbox) Dropped() uint64 { return o.dropped }

// Frames returns the unacknowledged frames, oldest first, to resend. The
// slices are the outbox's own: do not modify them.
func (o *Outbox) Frames() [][]byte {
	out := make([][]byte, len(o.frames))
	for i, f := range o.frames {
		out[i] = f.frame
	}
	return out
}
