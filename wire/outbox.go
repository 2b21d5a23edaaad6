package wire

// Outbox keeps a v2 device's frames until the pipeline acknowledges them, so
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
	seq      uint64
	frame    []byte
	tampered bool // refused once as tampered in transit, and resent
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
	o.frames = append(o.frames, outboxFrame{seq: seq, frame: frame})
	o.bytes += len(frame)
	o.dropped += uint64(n)
	return n
}

// Settlement is what a reply did to the outbox.
type Settlement int

// Settlements: what the device does next (PROTOCOL.md, the table of codes).
const (
	// Unverified: the reply's MAC does not match a buffered frame (forged,
	// or about a frame already settled); nothing changed.
	Unverified Settlement = iota
	// Acked: the pipeline accepted the frame; it was dropped.
	Acked
	// Dropped: the pipeline refused the frame for good; it was dropped.
	// replayed: the device must start a new boot epoch before it sends
	// again (the frame's reading may be sealed again under it); invalid, or
	// tampered a second time: count it.
	Dropped
	// Resend: the frame arrived altered (tampered) for the first time; it
	// stays, and the device sends it once more now.
	Resend
	// Halt: the device's key is revoked, the device is pinned to another
	// protocol (downgrade), or the code is one this device does not know;
	// the frame stays, and the device stops sending until reprovisioned.
	Halt
)

// Settle applies a reply from the pipeline (an ACK or REFUSED frame) to the
// buffered frame it names, verified under k: a frame is dropped only on a
// reply whose MAC covers exactly that frame's sequence number and tag.
func (o *Outbox) Settle(k *V2Key, f *V2Frame) Settlement {
	i := o.find(f.Seq)
	if i < 0 || !k.VerifyReply(f, o.frames[i].frame) {
		return Unverified
	}
	if f.Type == V2Ack {
		o.remove(i)
		return Acked
	}
	switch f.Code {
	case V2RefReplayed, V2RefInvalid:
	case V2RefTampered:
		// Once: a bit flipped on the way. Twice: something on the path
		// alters this frame; resending it for ever would stall the link.
		if !o.frames[i].tampered {
			o.frames[i].tampered = true
			return Resend
		}
	default: // revoked, downgrade, or newer than this device
		return Halt
	}
	o.remove(i)
	return Dropped
}

// Frame returns the buffered frame seq, or nil.
func (o *Outbox) Frame(seq uint64) []byte {
	if i := o.find(seq); i >= 0 {
		return o.frames[i].frame
	}
	return nil
}

// find returns the index of frame seq, or -1.
func (o *Outbox) find(seq uint64) int {
	for i, f := range o.frames {
		if f.seq == seq {
			return i
		}
	}
	return -1
}

// remove drops the frame at index i.
func (o *Outbox) remove(i int) {
	o.bytes -= len(o.frames[i].frame)
	copy(o.frames[i:], o.frames[i+1:])
	o.frames[len(o.frames)-1] = outboxFrame{}
	o.frames = o.frames[:len(o.frames)-1]
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
