package decrypt

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
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
	mk := markKey(fr.Device, key.Generation())
	v, write, err := w.marks.advance(ctx, mk, frameRef{fr.Seq, f.seq, f.received.UnixNano()})
	if err != nil {
		return Outcome{}, err // the mark store is unreachable: retry the frame later
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
	return Outcome{Reading: r, mark: write, reply: key.AppendAck(nil, fr.Seq, fr.Tag())}, nil
}

// markKey is the bucket key of a device's mark for one key generation:
// rotating the key starts a new mark, and an operator's reset deletes
// mark.<device>.> (see ResetMarks).
func markKey(device, generation string) string {
	return markPrefix + device + "." + generation
}

// Key prefixes in the mark bucket.
const (
	markPrefix = "mark."
	pinPrefix  = "pin."
)

// verdict is what the replay check makes of a v2 frame.
type verdict int

const (
	refused   verdict = iota // below the window, or not new: a replay
	fresh                    // new: accept it
	duplicate                // accepted before (within the window): acknowledge again
)

// highWater decides whether a v2 sequence number is new for its device,
// and returns the write that records it, if any.
type highWater interface {
	advance(ctx context.Context, device string, f frameRef) (verdict, *markWrite, error)
}

// frameRef is what the replay check knows of a v2 frame: its sequence
// number, the RAW message holding it, and when the edge received it (Unix ns).
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

// appendHex writes the window as 16-digit hex words, lowest first.
func (w *window) appendHex(dst []byte) []byte {
	for _, x := range w {
		dst = fmt.Appendf(dst, "%016x", x)
	}
	return dst
}

// parseWindow reads what appendHex wrote, or a single hex word (a mark
// written when the window was 64 frames).
func parseWindow(s string) window {
	var w window
	if len(s) <= 16 {
		w[0], _ = strconv.ParseUint(s, 16, 64)
		return w
	}
	for i := 0; i < windowWords && 16*(i+1) <= len(s); i++ {
		w[i], _ = strconv.ParseUint(s[16*i:16*(i+1)], 16, 64)
	}
	return w
}

// encode is the mark as the bucket stores it (see load).
func (m mark) encode() []byte {
	value := fmt.Appendf(nil, "%d %d ", m.seq, m.raw)
	value = m.seen.appendHex(value)
	return fmt.Appendf(value, " %d %d %d", m.lastSeq, m.lastRaw, m.recv)
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

// seqMarks keeps v2 high-water marks in a KV bucket with compare-and-set,
// so that every worker refuses a replay, with a local copy of the marks
// this worker wrote (v2 partitions are pinned per device, so it is
// usually current; a failed write drops it, and the next frame reloads it).
//
// Writes are asynchronous, so that a partition does not wait a round trip
// per frame: the reading of a frame is published only once the mark that
// accepted it is stored (see v2Output), and a device's next frame is
// decided only once its previous mark write has an answer, so each write
// is a compare-and-set against a known revision.
type seqMarks struct {
	js    jetstream.JetStream
	kv    jetstream.KeyValue
	mu    sync.Mutex
	local map[string]*markEntry
	// accepted holds RAW messages whose marks this worker stored lately: a
	// redelivery of one (its ack lost, or it waited in the client past
	// AckWait) is the same frame, not a replay, however far the mark moved.
	accepted bus.RecentSeqs
	stream   jetstream.Stream // the bucket's stream, for delete markers
}

// recentAccepted bounds seqMarks.accepted: a minute of 1,000 v2 readings/s.
const recentAccepted = 1 << 16

// markEntry is this worker's view of a device's mark: m, stored once write
// (when not nil) succeeds.
type markEntry struct {
	m     mark
	write *markWrite
}

func newSeqMarks(js jetstream.JetStream, kv jetstream.KeyValue) *seqMarks {
	return &seqMarks{js: js, kv: kv, local: map[string]*markEntry{}, accepted: bus.NewRecentSeqs(recentAccepted)}
}

// advance reports whether frame f is new for device and, if so, returns the
// write that records it (nil when nothing changed: the RAW message accepted
// last, handled again). The reading must wait for the write.
func (s *seqMarks) advance(ctx context.Context, device string, f frameRef) (verdict, *markWrite, error) {
	m, err := s.current(ctx, device)
	if err != nil {
		return refused, nil, err
	}
	s.mu.Lock()
	again := s.accepted.Has(f.raw)
	s.mu.Unlock()
	if again {
		return fresh, nil, nil // its reading is published again, and READINGS drops the copy
	}
	next, v := m.accepts(f)
	if v == refused {
		// Decided on this worker's copy: the operator may have reset the
		// mark since (medpipe keys reset-mark). A refusal is rare, so the
		// bucket is asked before it stands.
		if m, err = s.load(ctx, device); err != nil {
			return refused, nil, err
		}
		s.mu.Lock()
		if e := s.local[device]; e != nil && e.write == nil {
			e.m = m
		}
		s.mu.Unlock()
		if next, v = m.accepts(f); v == refused {
			return refused, nil, nil
		}
	}
	if v != fresh {
		return v, nil, nil
	}
	if next == m {
		return fresh, nil, nil
	}
	w := &markWrite{s: s, device: device, f: f, value: next.encode(), prev: m.rev, turn: make(chan struct{}, 1)}
	msg := &nats.Msg{Subject: kvSubject(s.kv, device), Data: w.value}
	if w.fut, err = s.js.PublishMsgAsync(msg, jetstream.WithExpectLastSequencePerSubject(w.prev), bus.Backpressure); err != nil {
		return refused, nil, fmt.Errorf("decrypt: store high-water mark: %w", err)
	}
	s.mu.Lock()
	s.local[device] = &markEntry{m: next, write: w}
	s.mu.Unlock()
	return fresh, w, nil
}

// current is the device's stored mark: the local copy once its write is
// answered, or the bucket's.
func (s *seqMarks) current(ctx context.Context, device string) (mark, error) {
	s.mu.Lock()
	e := s.local[device]
	s.mu.Unlock()
	if e != nil && e.write != nil {
		rev, err := e.write.wait(ctx)
		s.mu.Lock()
		if s.local[device] == e {
			if err != nil {
				delete(s.local, device) // another worker moved it, or the write was lost: reload
			} else {
				e.m.rev, e.write = rev, nil
			}
		}
		s.mu.Unlock()
		if err != nil {
			if ctx.Err() != nil {
				return mark{}, ctx.Err()
			}
			e = nil
		}
	}
	if e != nil {
		return e.m, nil
	}
	return s.load(ctx, device)
}

// markWrite is one asynchronous mark write; both the device's next frame
// and the frame's own output wait for it, so its answer is read once and
// kept.
type markWrite struct {
	s      *seqMarks
	device string
	f      frameRef
	value  []byte // the mark written
	prev   uint64 // the revision it replaces
	fut    jetstream.PubAckFuture
	turn   chan struct{} // held by the one reading the future
	done   bool
	rev    uint64
	err    error
	landed bool // failed, yet the bucket's window holds the frame (see settle)
}

// wait returns the revision the write made, or why it failed (a revision
// mismatch: another worker moved the mark).
func (w *markWrite) wait(ctx context.Context) (uint64, error) {
	select {
	case w.turn <- struct{}{}:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	defer func() { <-w.turn }()
	if !w.done {
		select {
		case ack := <-w.fut.Ok():
			w.rev = ack.Sequence
			w.s.remember(w.f.raw)
		case err := <-w.fut.Err():
			w.err = fmt.Errorf("decrypt: store high-water mark: %w", err)
			w.settle(ctx)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		w.done = true
	}
	return w.rev, w.err
}

// settle decides, after the write failed without a refusal, whether it
// reached the bucket all the same. Such a write may still land: it waits
// in the client's reconnect buffer (nats.go fails pending acks with
// ErrDisconnected on reconnect), or reached a stream leader that went down
// before answering. So the same mark is written again against the same
// revision, until an answer: at most one of the two copies can land, and
// either stores this mark. A refusal then means the mark moved: if the
// stored mark is the one written, the write succeeded; if a later write
// has moved it since, the frame counts as recorded when the stored window
// holds it. The frame is then remembered as accepted: retried later, behind
// frames decided meanwhile, it must not be taken for a replay of itself.
func (w *markWrite) settle(ctx context.Context) {
	if markRefused(w.err) {
		return // another worker moved the mark: this write did not land
	}
	subject := kvSubject(w.s.kv, w.device)
	var m mark
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		ack, err := w.s.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: w.value}, jetstream.WithExpectLastSequencePerSubject(w.prev))
		if err == nil {
			w.rev, w.err = ack.Sequence, nil
			w.s.remember(w.f.raw)
			return
		}
		if markRefused(err) {
			if m, err = w.s.load(ctx, w.device); err == nil {
				break
			}
		}
		// The bucket may be electing a leader: ask again for a while.
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	switch {
	case m.rev != 0 && m.lastSeq == w.f.seq && m.lastRaw == w.f.raw:
		w.rev, w.err = m.rev, nil
	case m.rev != 0 && w.f.seq <= m.seq && m.seq-w.f.seq < ReplayWindow && m.seen.has(m.seq-w.f.seq):
		w.landed = true
	default:
		return
	}
	w.s.remember(w.f.raw)
}

// markRefused reports whether err is the bucket refusing a mark write
// because the mark is no longer at the revision the write expected.
func markRefused(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// remember records a RAW message whose mark is stored.
func (s *seqMarks) remember(raw uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accepted.Add(raw)
}

// kvSubject is the subject JetStream stores a key of bucket kv under (a
// bucket of this cluster, neither mirrored nor in another domain).
func kvSubject(kv jetstream.KeyValue, key string) string {
	return "$KV." + kv.Bucket() + "." + key
}

// load reads the device's mark from the bucket. A deleted or purged mark
// is absent, but its delete marker's revision is what the next write must
// expect: treating it as revision 0 made every write fail for ever (an
// operator's delete livelocked the partition).
func (s *seqMarks) load(ctx context.Context, device string) (mark, error) {
	var m mark
	e, err := s.kv.Get(ctx, device)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return mark{rev: s.deletedAt(ctx, device)}, nil
	}
	if err != nil {
		return mark{}, fmt.Errorf("decrypt: read high-water mark: %w", err)
	}
	if e.Operation() != jetstream.KeyValuePut {
		return mark{rev: e.Revision()}, nil
	}
	f := strings.Fields(string(e.Value()))
	if len(f) < 2 {
		return mark{}, fmt.Errorf("decrypt: high-water mark of %s: unreadable value %q", device, e.Value())
	}
	m.seq, _ = strconv.ParseUint(f[0], 10, 64)
	m.raw, _ = strconv.ParseUint(f[1], 10, 64)
	// A mark written before the window existed: everything below it counts as seen.
	for i := range m.seen {
		m.seen[i] = ^uint64(0)
	}
	if len(f) > 2 {
		m.seen = parseWindow(f[2])
	}
	m.lastSeq, m.lastRaw = m.seq, m.raw // a mark written before "last" was kept
	if len(f) > 4 {
		m.lastSeq, _ = strconv.ParseUint(f[3], 10, 64)
		m.lastRaw, _ = strconv.ParseUint(f[4], 10, 64)
	}
	if len(f) > 5 {
		m.recv, _ = strconv.ParseInt(f[5], 10, 64)
	}
	m.rev = e.Revision()
	return m, nil
}

// deletedAt returns the revision of a deleted key's marker (0 when the key
// never existed): the bucket's stream keeps the marker as the subject's
// last message, and a compare-and-set must name it.
func (s *seqMarks) deletedAt(ctx context.Context, device string) uint64 {
	if s.stream == nil {
		st, err := s.js.Stream(ctx, "KV_"+s.kv.Bucket())
		if err != nil {
			return 0
		}
		s.stream = st
	}
	msg, err := s.stream.GetLastMsgForSubject(ctx, kvSubject(s.kv, device))
	if err != nil {
		return 0
	}
	return msg.Sequence
}
