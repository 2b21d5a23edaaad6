package decrypt

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
)

// DefaultCheckpointEvery is how often a partition's owner writes the
// partition's marks to the mark bucket (only when they changed).
const DefaultCheckpointEvery = time.Second

// Key prefixes in the mark bucket.
const (
	checkpointPrefix = "ckpt."  // ckpt.<partition count>.<partition>: a partition's marks
	resetPrefix      = "reset." // reset.<device>: an operator's reset (medpipe keys reset-mark)
	pinPrefix        = "pin."   // pin.<device>: the device is pinned to v2
)

// checkpointKey is the bucket key of partition p's checkpoint under a
// partition count: a checkpoint is read only by the count it was written
// for (see markStore.load for a change of count).
func checkpointKey(partitions, p int) string {
	return checkpointPrefix + strconv.Itoa(partitions) + "." + strconv.Itoa(p)
}

// markID names a device's mark for one key generation: rotating the key
// starts a new mark.
type markID struct{ device, gen string }

// v2Ref is what the replay check needs of a v2 frame: its device, key
// generation and partition, the pin under which the partition's message
// was delivered, and the frame itself.
type v2Ref struct {
	id   markID
	part int
	pin  string
	frameRef
}

// acceptance is a frame the replay check accepted; its reading is on the
// way to READINGS, and stored reports how that ended.
type acceptance struct {
	st *partState
	id markID
	f  frameRef
}

// highWater decides whether a v2 frame is new for its device.
type highWater interface {
	// accept decides frame f; a fresh frame comes with its acceptance
	// (nil when nothing needs to be told back), which the caller hands to
	// stored once its reading's publish is answered.
	accept(ctx context.Context, f v2Ref) (verdict, *acceptance, error)
	// stored reports the outcome of an accepted frame's reading: stored
	// at READINGS sequence seq, or failed with err.
	stored(a *acceptance, seq uint64, err error)
}

// markStore keeps v2 replay marks in memory, per partition, on the worker
// that owns the partition (ConsumePartitions pins each RAW partition to
// one worker, and ingest partitions v2 frames by device id, so a device's
// frames are all decided by its partition's owner): deciding a frame costs
// no round trip. Persistence is a per-partition checkpoint written every
// DefaultCheckpointEvery with compare-and-set, plus READINGS itself, the
// log of what was accepted: a worker taking a partition over loads the
// checkpoint and folds in the partition's readings stored after the
// READINGS sequence the checkpoint covers, then writes a checkpoint at
// once, which fences the previous owner (its next write is refused and it
// reloads before deciding anything more).
type markStore struct {
	js         jetstream.JetStream
	kv         jetstream.KeyValue
	partitions int
	log        *slog.Logger
	m          *metrics

	mu    sync.Mutex
	parts map[int]*partState
	// resets are operators' resets, by device: readings and checkpoints
	// older than a device's reset do not count for it.
	resets map[string]time.Time

	// maxStored is the highest READINGS sequence any publish of this
	// worker was answered with: a reading published after that answer is
	// stored above it.
	maxStored atomic.Uint64

	readings, bucket jetstream.Stream // looked up once
}

// partState is the marks of one partition while this worker owns it.
type partState struct {
	mu     sync.Mutex
	p      int
	pin    string // the pin the partition was loaded under
	writer uint64 // this load's id, in every checkpoint it writes
	rev    uint64 // the checkpoint's revision: the next write expects it
	// live decides frames; durable holds only frames whose readings are
	// stored, and is what checkpoints write.
	live, durable map[markID]mark
	// pending are frames accepted whose readings are not confirmed stored,
	// by RAW sequence, each with maxStored when it was accepted: its
	// reading lands above that, so a checkpoint covers READINGS up to the
	// lowest of them (or maxStored when none is pending).
	pending          map[uint64]uint64
	changes, written uint64 // durable changes, and those the last checkpoint holds
	stale            bool   // refused or failed: reload before deciding more
}

func newMarkStore(js jetstream.JetStream, kv jetstream.KeyValue, partitions int, log *slog.Logger, m *metrics) *markStore {
	return &markStore{js: js, kv: kv, partitions: partitions, log: log, m: m, parts: map[int]*partState{}, resets: map[string]time.Time{}}
}

// accept decides frame f on the partition's marks in memory, loading them
// first if this worker has not got them (a takeover) or got them under
// another pin (the partition moved away and back).
func (s *markStore) accept(ctx context.Context, f v2Ref) (verdict, *acceptance, error) {
	st, err := s.owned(ctx, f.part, f.pin)
	if err != nil {
		return refused, nil, err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.stale {
		// Gone stale meanwhile (another worker took over, or a reading
		// failed): the frame is handled again, on reloaded marks.
		return refused, nil, fmt.Errorf("decrypt: v2 marks of partition %d went stale: reloading", f.part)
	}
	if _, again := st.pending[f.raw]; again {
		// A redelivery of a RAW message whose reading is still on the way:
		// its reading is published again (READINGS drops the copy by its
		// message id) and the message acknowledged once that is stored.
		return fresh, &acceptance{st: st, id: f.id, f: f.frameRef}, nil
	}
	m := st.live[f.id]
	next, v := m.accepts(f.frameRef)
	if v != fresh {
		return v, nil, nil
	}
	next.rev = 1 // "a mark exists"
	st.live[f.id] = next
	st.pending[f.raw] = s.maxStored.Load()
	return fresh, &acceptance{st: st, id: f.id, f: f.frameRef}, nil
}

// stored records an accepted frame's reading as stored (its mark joins the
// checkpointed marks), or, when it failed, has the partition reloaded:
// the reading may or may not have landed, and READINGS knows.
func (s *markStore) stored(a *acceptance, seq uint64, err error) {
	if err == nil {
		bumpMax(&s.maxStored, seq)
	}
	st := a.st
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.pending, a.f.raw)
	if err != nil {
		st.stale = true
		return
	}
	if m, ok := st.durable[a.id].record(a.f); ok {
		st.durable[a.id] = m
		st.changes++
	}
}

func bumpMax(v *atomic.Uint64, seq uint64) {
	for {
		old := v.Load()
		if seq <= old || v.CompareAndSwap(old, seq) {
			return
		}
	}
}

// record is the mark after frame f, accepted, was recorded: unlike
// accepts it never refuses (f was accepted, by this worker or the one
// whose readings are folded in). It reports whether the mark changed.
func (m mark) record(f frameRef) (mark, bool) {
	if m.rev != 0 && m.seq != 0 && f.seq <= m.seq {
		d := m.seq - f.seq
		if d >= ReplayWindow || m.seen.has(d) {
			if m.lastSeq == f.seq && m.lastRaw == f.raw {
				return m, false
			}
			m.lastSeq, m.lastRaw = f.seq, f.raw
			return m, true
		}
		m.seen.set(d)
		m.lastSeq, m.lastRaw = f.seq, f.raw
		return m, true
	}
	next := mark{seq: f.seq, raw: f.raw, rev: 1, lastSeq: f.seq, lastRaw: f.raw, recv: f.recv}
	if m.rev != 0 {
		next.seen = m.seen.shifted(f.seq - m.seq)
	}
	next.seen.set(0)
	return next, true
}

// owned returns the partition's marks, loading them when this worker does
// not hold them, holds them under another pin, or had them refused.
func (s *markStore) owned(ctx context.Context, p int, pin string) (*partState, error) {
	s.mu.Lock()
	st := s.parts[p]
	s.mu.Unlock()
	if st != nil {
		st.mu.Lock()
		ok := !st.stale && (pin == "" || st.pin == "" || pin == st.pin)
		st.mu.Unlock()
		if ok {
			return st, nil
		}
		s.settle(ctx, st)
	}
	st, err := s.load(ctx, p, pin)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.parts[p] = st
	s.mu.Unlock()
	return st, nil
}

// settle waits (briefly) for the readings this worker still has on the way
// for a partition it is about to reload, so that the fold finds them.
func (s *markStore) settle(ctx context.Context, st *partState) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		st.mu.Lock()
		n := len(st.pending)
		st.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// load takes partition p over: its checkpoint, the readings stored after
// it, the operators' resets; then a checkpoint is written at once, against
// the revision read, so that a previous owner still running is refused.
func (s *markStore) load(ctx context.Context, p int, pin string) (*partState, error) {
	start := time.Now()
	var id [8]byte
	_, _ = rand.Read(id[:])
	st := &partState{p: p, pin: pin, writer: binary.LittleEndian.Uint64(id[:]) | 1, pending: map[uint64]uint64{}}
	key := checkpointKey(s.partitions, p)
	var (
		cp      checkpoint
		written time.Time // when the checkpoint was written: later resets apply
		absent  bool
	)
	e, err := s.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		// Never written, or deleted by hand: absent. A deleted key's
		// marker is what the next write must expect (treating it as
		// revision 0 livelocked the partition).
		absent = true
		if st.rev, err = s.deletedAt(ctx, key); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, fmt.Errorf("decrypt: read checkpoint of partition %d: %w", p, err)
	default:
		st.rev, written = e.Revision(), e.Created()
		cp, err = decodeCheckpoint(e.Value())
		if err == nil && (cp.partitions != s.partitions || cp.partition != p) {
			err = fmt.Errorf("written for partition %d of %d", cp.partition, cp.partitions)
		}
		if err != nil {
			s.log.Warn("v2 mark checkpoint unreadable: taken as absent", "partition", p, "err", err)
			absent, cp = true, checkpoint{}
		}
	}
	if cp.marks == nil {
		cp.marks = map[markID]mark{}
	}
	if absent {
		s.adoptOtherCounts(ctx, p, cp.marks)
	}
	s.mu.Lock()
	for mid := range cp.marks {
		if t, ok := s.resets[mid.device]; ok && t.After(written) {
			delete(cp.marks, mid)
		}
	}
	s.mu.Unlock()
	last, err := s.lastReading(ctx, p)
	if err != nil {
		return nil, err
	}
	folded := 0
	if !absent && last > cp.covered {
		if folded, err = s.fold(ctx, p, cp.covered+1, last, cp.marks); err != nil {
			return nil, err
		}
	}
	bumpMax(&s.maxStored, last)
	st.durable, st.live = cp.marks, maps.Clone(cp.marks)
	st.changes = 1 // written below
	if err := s.checkpoint(ctx, st); err != nil {
		return nil, err
	}
	s.m.markLoads.Inc()
	s.m.markFolded.Add(float64(folded))
	s.log.Debug("v2 marks loaded", "partition", p, "marks", len(st.live), "checkpoint", !absent,
		"covered", cp.covered, "folded", folded, "took", time.Since(start).Round(time.Millisecond))
	return st, nil
}

// adoptOtherCounts fills marks, for a partition without a checkpoint,
// from checkpoints written under another partition count (the streams
// were recreated with a new count): their marks of devices that now fall
// in partition p. Their READINGS positions belong to the old streams and
// are not folded. Best effort: no checkpoint of another count is the
// usual case.
func (s *markStore) adoptOtherCounts(ctx context.Context, p int, marks map[markID]mark) {
	kl, err := s.kv.ListKeysFiltered(ctx, checkpointPrefix+">")
	if err != nil {
		return
	}
	defer func() { _ = kl.Stop() }()
	var keys []string
	for k := range kl.Keys() {
		if n, _, ok := strings.Cut(strings.TrimPrefix(k, checkpointPrefix), "."); ok && n != strconv.Itoa(s.partitions) {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		e, err := s.kv.Get(ctx, k)
		if err != nil {
			continue
		}
		cp, err := decodeCheckpoint(e.Value())
		if err != nil {
			continue
		}
		for mid, m := range cp.marks {
			if bus.Partition(mid.device, s.partitions) == p {
				marks[mid] = m
			}
		}
	}
}

// lastReading is the READINGS sequence of partition p's last reading (0
// when there is none).
func (s *markStore) lastReading(ctx context.Context, p int) (uint64, error) {
	if err := s.streams(ctx); err != nil {
		return 0, err
	}
	m, err := s.readings.GetLastMsgForSubject(ctx, bus.ReadingsPartitionFilter(p))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("decrypt: last reading of partition %d: %w", p, err)
	}
	return m.Sequence, nil
}

// fold records in marks the v2 readings of partition p stored in READINGS
// from sequence from to to: frames accepted after the checkpoint was
// written. A reading of a device whose mark an operator reset after the
// reading was stored does not count.
func (s *markStore) fold(ctx context.Context, p int, from, to uint64, marks map[markID]mark) (int, error) {
	n := 0
	filter := bus.ReadingsPartitionFilter(p)
	for seq := from; seq <= to; {
		msg, err := s.readings.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return n, fmt.Errorf("decrypt: fold READINGS of partition %d: %w", p, err)
		}
		if msg.Sequence > to {
			break
		}
		seq = msg.Sequence + 1
		if msg.Header.Get(bus.HeaderKeyGen) == "" && !bus.IsReadingBatch(msg.Data) {
			continue // a legacy reading
		}
		rs, err := bus.DecodeReadings(msg.Data, msg.Header)
		if err != nil {
			// Not one decrypt wrote (it never publishes a reading that
			// fails this): nothing to record of what does not decode.
			s.log.Warn("a READINGS message is unreadable, in part or whole: what does not decode is not folded into the marks", "seq", msg.Sequence, "err", err)
		}
		for _, r := range rs {
			if r.KeyGen == "" || r.Protocol != bus.ProtocolV2 || r.Seq == 0 {
				continue
			}
			s.mu.Lock()
			t, reset := s.resets[r.Device]
			s.mu.Unlock()
			if reset && !msg.Time.After(t) {
				continue
			}
			mid := markID{r.Device, r.KeyGen}
			if m, ok := marks[mid].record(frameRef{seq: r.Seq, raw: r.RawSeq, recv: r.Received.UnixNano()}); ok {
				marks[mid] = m
			}
			n++
		}
	}
	return n, nil
}

// streams looks up READINGS and the bucket's stream once.
func (s *markStore) streams(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	if s.readings == nil {
		if s.readings, err = s.js.Stream(ctx, bus.StreamReadings); err != nil {
			return fmt.Errorf("decrypt: look up %s: %w", bus.StreamReadings, err)
		}
	}
	if s.bucket == nil {
		if s.bucket, err = s.js.Stream(ctx, "KV_"+s.kv.Bucket()); err != nil {
			return fmt.Errorf("decrypt: look up the mark bucket's stream: %w", err)
		}
	}
	return nil
}

// deletedAt returns the revision of a deleted key's marker (0 when the key
// never existed): the bucket's stream keeps the marker as the subject's
// last message, and a compare-and-set must name it.
func (s *markStore) deletedAt(ctx context.Context, key string) (uint64, error) {
	if err := s.streams(ctx); err != nil {
		return 0, err
	}
	msg, err := s.bucket.GetLastMsgForSubject(ctx, kvSubject(s.kv, key))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("decrypt: read checkpoint marker %s: %w", key, err)
	}
	return msg.Sequence, nil
}

// errTakenOver marks a checkpoint write refused because another worker
// wrote the partition's checkpoint: it owns the partition now.
var errTakenOver = errors.New("decrypt: another worker wrote the partition's checkpoint")

// checkpoint writes st's durable marks if they changed since the last
// write, against the revision st last read or wrote. A refusal is looked
// into: a checkpoint deleted by hand is absent (written again against its
// delete marker, the marks in memory kept: no livelock), one this load
// wrote itself (an answer lost) is adopted, and one another worker wrote
// makes st stale: it is reloaded before any more frames are decided.
func (s *markStore) checkpoint(ctx context.Context, st *partState) error {
	st.mu.Lock()
	if st.stale || st.changes == st.written {
		st.mu.Unlock()
		return nil
	}
	covered := s.maxStored.Load()
	for _, low := range st.pending {
		covered = min(covered, low)
	}
	value := encodeCheckpoint(nil, &checkpoint{writer: st.writer, partitions: s.partitions, partition: st.p, covered: covered, marks: st.durable})
	changes, rev := st.changes, st.rev
	st.mu.Unlock()

	key := checkpointKey(s.partitions, st.p)
	for range 3 {
		newRev, err := s.kv.Update(ctx, key, value, rev)
		if err == nil {
			s.m.checkpoints.Inc()
			st.mu.Lock()
			st.rev, st.written = newRev, changes
			st.mu.Unlock()
			return nil
		}
		if !markRefused(err) {
			return fmt.Errorf("decrypt: write checkpoint of partition %d: %w", st.p, err)
		}
		s.m.markWriteFailures.Inc()
		e, gerr := s.kv.Get(ctx, key)
		switch {
		case errors.Is(gerr, jetstream.ErrKeyNotFound):
			if rev, gerr = s.deletedAt(ctx, key); gerr != nil {
				return gerr
			}
			s.log.Warn("v2 mark checkpoint deleted: written again from the marks in memory", "partition", st.p)
		case gerr != nil:
			return fmt.Errorf("decrypt: read checkpoint of partition %d: %w", st.p, gerr)
		default:
			cp, derr := decodeCheckpoint(e.Value())
			if derr == nil && cp.writer == st.writer {
				rev = e.Revision() // this load's own write, its answer lost
				continue
			}
			st.mu.Lock()
			st.stale = true
			st.mu.Unlock()
			s.mu.Lock()
			if s.parts[st.p] == st {
				delete(s.parts, st.p)
			}
			s.mu.Unlock()
			s.log.Info("v2 marks of a partition written by another worker: reloading before deciding more", "partition", st.p)
			return fmt.Errorf("%w (partition %d)", errTakenOver, st.p)
		}
	}
	st.mu.Lock()
	st.rev = rev
	st.mu.Unlock()
	return fmt.Errorf("decrypt: write checkpoint of partition %d: refused repeatedly", st.p)
}

// checkpointAll writes every loaded partition's changed marks.
func (s *markStore) checkpointAll(ctx context.Context) {
	s.mu.Lock()
	parts := make([]*partState, 0, len(s.parts))
	for _, st := range s.parts {
		parts = append(parts, st)
	}
	s.mu.Unlock()
	for _, st := range parts {
		if err := s.checkpoint(ctx, st); err != nil && !errors.Is(err, errTakenOver) && ctx.Err() == nil {
			s.log.Warn("v2 mark checkpoint not written; retrying", "partition", st.p, "err", err)
		}
	}
}

// run writes checkpoints every interval until ctx ends.
func (s *markStore) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			s.checkpointAll(wctx)
			cancel()
		}
	}
}

// reset applies an operator's reset of device at time at: its marks (all
// key generations) are forgotten here, and readings or checkpoints older
// than the reset no longer count for it when a partition is loaded.
func (s *markStore) reset(device string, at time.Time) {
	s.mu.Lock()
	if old, ok := s.resets[device]; ok && !at.After(old) {
		s.mu.Unlock()
		return
	}
	s.resets[device] = at
	st := s.parts[bus.Partition(device, s.partitions)]
	s.mu.Unlock()
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for mid := range st.live {
		if mid.device == device {
			delete(st.live, mid)
		}
	}
	for mid := range st.durable {
		if mid.device == device {
			delete(st.durable, mid)
			st.changes++
		}
	}
}

// watchResets follows operators' resets in the bucket until ctx ends;
// ready is called once the existing ones are loaded.
func (s *markStore) watchResets(ctx context.Context, ready func()) error {
	return watchKeys(ctx, s.kv, resetPrefix, ready, func(device string, e jetstream.KeyValueEntry) {
		if e.Operation() == jetstream.KeyValuePut {
			s.reset(device, e.Created())
		}
	})
}

// watchKeys calls apply with every entry of kv under prefix (the key with
// the prefix cut off), the existing ones first, then ready once, then each
// change, until ctx ends or the watch closes.
func watchKeys(ctx context.Context, kv jetstream.KeyValue, prefix string, ready func(), apply func(key string, e jetstream.KeyValueEntry)) error {
	kw, err := kv.Watch(ctx, prefix+">")
	if err != nil {
		return err
	}
	defer func() { _ = kw.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-kw.Updates():
			if !ok {
				return nil
			}
			if e == nil {
				ready()
				continue
			}
			apply(strings.TrimPrefix(e.Key(), prefix), e)
		}
	}
}
