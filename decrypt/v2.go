package decrypt

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

// errReplayed marks a v2 frame at or below its device's high-water mark.
var errReplayed = errors.New("decrypt: sequence number at or below the device's high-water mark")

// errDowngrade marks a legacy frame of a device pinned to v2.
var errDowngrade = errors.New("decrypt: legacy frame from a device pinned to protocol v2")

// decodeV2 checks and decrypts a v2 frame: key by device id (no search),
// tag, payload, then the replay check against the device's mark for this
// key generation. Every outcome about an authentic frame carries a reply
// for the device, made with its ACK key (an ACK once the reading is
// stored, or a REFUSED); a frame whose tag does not check gets a REFUSED
// bound to the tag received, which a device acts on only if it matches a
// frame it sent.
func (w *Worker) decodeV2(ctx context.Context, f *rawFrame, sc *scratch) (Outcome, error) {
	fr, err := wire.ParseV2(f.data)
	if err != nil {
		return dead(bus.ReasonMalformed, "", err)
	}
	key, revoked, ok := w.ix.LookupV2(fr.Device)
	if !ok {
		return dead(bus.ReasonUnknownDevice, fr.Device, ErrUnknownDevice)
	}
	refuse := func(reason bus.Reason, code byte, err error) (Outcome, error) {
		out, _ := dead(reason, fr.Device, err)
		out.reply = key.AppendRefused(nil, fr.Seq, code, fr.Tag())
		return out, nil
	}
	if revoked {
		return refuse(bus.ReasonRevoked, wire.V2RefRevoked, errors.New("device key revoked"))
	}
	sc.plain, err = key.Open(sc.plain[:0], &fr)
	if err != nil {
		return refuse(bus.ReasonTampered, wire.V2RefTampered, err)
	}
	p, err := wire.ParseV2Payload(sc.plain)
	if err != nil {
		return refuse(bus.ReasonInvalid, wire.V2RefInvalid, err)
	}
	part := bus.Partition(fr.Device, w.o.Partitions)
	if f.part >= 0 && f.part != part {
		// The device's marks are kept by the owner of its partition: a
		// frame in another partition would be decided on marks that are
		// not authoritative (ingest partitions v2 frames by device id).
		return dead(bus.ReasonMalformed, fr.Device, fmt.Errorf("decrypt: v2 frame in RAW partition %d, its device's is %d", f.part, part))
	}
	place, err := f.place()
	if err != nil {
		return dead(bus.ReasonMalformed, fr.Device, err)
	}
	gen := key.Generation()
	v, acc, err := w.marks.accept(ctx, v2Ref{id: markID{fr.Device, gen}, part: part, pin: f.pin, frameRef: frameRef{fr.Seq, place, f.received.UnixNano()}})
	if err != nil {
		return Outcome{}, err // the partition's marks could not be loaded: retry the frame later
	}
	switch v {
	case duplicate:
		// A resend of a frame already accepted (its first copy's ACK was
		// lost): acknowledged again, its reading is not stored twice.
		w.stuck.accepted(fr.Device)
		return Outcome{Reason: bus.ReasonDuplicate, Device: fr.Device, Duplicate: true, reply: key.AppendAck(nil, fr.Seq, fr.Tag())}, nil
	case refused:
		w.stuck.refused(fr.Device, w.log)
		return refuse(bus.ReasonReplayed, wire.V2RefReplayed, fmt.Errorf("%w (seq %d = epoch %d, counter %d)", errReplayed, fr.Seq, wire.V2SeqEpoch(fr.Seq), wire.V2SeqCounter(fr.Seq)))
	}
	w.stuck.accepted(fr.Device)
	w.pin(fr.Device)
	// An absent value (its sensor not ok) is "": never the device's placeholder 0.
	id := Identified{Device: fr.Device, Reading: p.Reading()}
	r := w.reading(f, &id)
	r.Protocol, r.Variant, r.Seq = bus.ProtocolV2, "", fr.Seq
	r.Sensors = p.Sensors
	r.DeviceTime = time.UnixMilli(p.Time).UTC()
	if p.Pulse != nil {
		r.Pulse = p.Pulse.Batch()
	}
	return Outcome{Reading: r, accepted: acc, keyGen: gen, reply: key.AppendAck(nil, fr.Seq, fr.Tag())}, nil
}

// verdict is what the replay check makes of a v2 frame.
type verdict int

const (
	refused   verdict = iota // below the window, or not new: a replay
	fresh                    // new: accept it
	duplicate                // accepted before (within the window): acknowledge again
)

// frameRef is what the replay check knows of a v2 frame: its sequence
// number, its place in RAW (rawFrame.place: the message holding it, and
// its index in a batch), and when the edge received it (Unix ns). A mark
// folded in from READINGS knows a batched frame's message only (the
// reading's RawSeq): the frame, if redelivered, is then found accepted
// before, which it was, and its reading is not stored again.
type frameRef struct {
	seq, raw uint64
	recv     int64
}

// mark is a device's high-water mark: the highest sequence number
// accepted, the RAW message that carried it, which of the ReplayWindow
// numbers below it were accepted too (bit k: seq-k), when the edge received
// the highest, and the sequence number and RAW message accepted last (not
// always the highest).
type mark struct {
	seq, raw, rev    uint64
	seen             window
	lastSeq, lastRaw uint64
	recv             int64
}

// ReplayWindow is how far below the highest sequence number a v2 frame not
// seen before is still accepted. Devices send in order, but RAW can hold a
// device's frames out of order: when a publish fails (a JetStream leader
// lost, say), ingest stores the frame again after frames that followed it.
// The window is as deep as a device's resend buffer (firmware 200 frames,
// simulator 1,000): after a reconnect a device resends, in order, every frame
// from its oldest unacknowledged one — the one whose store was lost — while
// the frames after it were stored meanwhile. As in IPsec and DTLS, a
// window of seen numbers accepts those and still refuses every number seen
// before. Below the window, a frame is accepted
// only if the edge received it before the frame holding the mark: it was
// delayed inside the pipeline (a publish retried after a leader change can
// land seconds and hundreds of frames late), not replayed from outside,
// because a replay reaches an edge after the original did.
const ReplayWindow = 64 * windowWords

const windowWords = 16

// window is the replay bitmap: bit k is seq-k.
type window [windowWords]uint64

func (w *window) has(k uint64) bool { return w[k/64]>>(k%64)&1 == 1 }
func (w *window) set(k uint64)      { w[k/64] |= 1 << (k % 64) }

// shifted returns the window after the mark moved up by d.
func (w window) shifted(d uint64) window {
	var out window
	if d >= ReplayWindow {
		return out
	}
	words, bits := int(d/64), d%64
	for i := windowWords - 1; i >= words; i-- {
		out[i] = w[i-words] << bits
		if bits > 0 && i-words > 0 {
			out[i] |= w[i-words-1] >> (64 - bits)
		}
	}
	return out
}

// accepts applies the replay window: whether frame f may be accepted given
// the mark, and the mark that accepting it makes.
func (m mark) accepts(f frameRef) (mark, verdict) {
	seq, raw := f.seq, f.raw
	switch {
	case m.rev != 0 && seq == m.lastSeq && raw == m.lastRaw:
		// The RAW message accepted last, handled again: redelivered after a
		// crash, or retried after a mark update whose answer was lost (the
		// store's leader changed) though the update itself landed.
		return m, fresh
	case m.rev == 0 || m.seq == 0 || seq > m.seq:
		next := mark{seq: seq, raw: raw, rev: m.rev, lastSeq: seq, lastRaw: raw, recv: f.recv}
		if m.rev != 0 {
			next.seen = m.seen.shifted(seq - m.seq)
		}
		next.seen.set(0)
		return next, fresh
	}
	d := m.seq - seq
	if d >= ReplayWindow {
		if f.recv == 0 || m.recv == 0 || f.recv >= m.recv {
			return m, refused
		}
		m.lastSeq, m.lastRaw = seq, raw
		return m, fresh
	}
	if m.seen.has(d) {
		return m, duplicate
	}
	m.seen.set(d)
	m.lastSeq, m.lastRaw = seq, raw
	return m, fresh
}

// markRefused reports whether err is the bucket refusing a mark write
// because the mark is no longer at the revision the write expected.
func markRefused(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// kvSubject is the subject JetStream stores a key of bucket kv under (a
// bucket of this cluster, neither mirrored nor in another domain).
func kvSubject(kv jetstream.KeyValue, key string) string {
	return "$KV." + kv.Bucket() + "." + key
}
