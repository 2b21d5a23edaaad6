// Package decrypt holds medpipe's decrypt workers: they read RAW, identify
// each frame's device (a key search only for a connection's first frame),
// decrypt and validate the reading and publish it to READINGS; frames that
// cannot become readings go to DEADLETTER with a reason. Workers are
// stateless beyond caches: any number of them, in any number of processes,
// share RAW's partitions.
package decrypt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/bus/registry"
	"github.com/medpipe/medpipe/wire"
)

// Options configures a Worker. Zero values take the defaults given.
type Options struct {
	// Keys are the devices' keys (from the keys file).
	Keys []wire.Device
	// Index, when set, is used instead of one built from Keys (it can be
	// updated live, e.g. from the registry).
	Index *KeyIndex
	// Registry, when set, is the source of keys: the index is filled from it
	// before consuming starts and follows every change (add, rotate, revoke)
	// while the worker runs.
	Registry *registry.Registry
	// Conns, when set, shares connection → device pairs with every other
	// worker (see bus.OpenConnStore): a connection's device is searched for
	// once, whichever worker its frames reach.
	Conns jetstream.KeyValue
	// Seqs holds v2 devices' replay marks, one checkpoint per partition
	// (see bus.OpenSeqStore), and the pins and resets; without it v2 frames
	// are retried until it is given.
	Seqs jetstream.KeyValue
	// CheckpointEvery is how often the owner of a partition writes its v2
	// marks to Seqs when they changed (default DefaultCheckpointEvery).
	CheckpointEvery time.Duration
	// Partitions is the partition count in force (see bus.VerifyStreams).
	Partitions int
	// MaxInFlight bounds frames handled but not yet stored, per partition
	// (default DefaultMaxInFlight).
	MaxInFlight int
	// ConnCacheSize bounds the remembered connection → device pairs (default 100000).
	ConnCacheSize int
	// DrainTimeout bounds in-flight work after cancellation (default 10 s).
	DrainTimeout time.Duration
	// ReadingsBatch is the most readings of a partition stored in one
	// READINGS message, when they are ready together (see
	// DefaultReadingsBatch); 0 or 1 stores each reading in a message of its
	// own, which publish processes older than batches read. It is bounded
	// by MaxInFlight.
	ReadingsBatch int
	// Log receives errors; nil uses slog.Default().
	Log *slog.Logger
	// Metrics registers the worker's metrics; nil registers nowhere.
	Metrics prometheus.Registerer
}

// Worker decrypts RAW into READINGS.
type Worker struct {
	js    jetstream.JetStream
	o     Options
	ix    *KeyIndex
	cache *connCache
	// keysGen counts the registry's changes applied to ix, so that an
	// unidentified connection is searched again once keys have changed.
	keysGen atomic.Uint64
	m       *metrics
	log     *slog.Logger
	bufs    sync.Pool
	marks   highWater  // nil without Options.Seqs (live) or in-memory (Decoder)
	store   *markStore // the live marks (nil without Options.Seqs)
	stuck   *stuckDevices
	pins    pins
	// gather holds each RAW partition's readings not yet sent (see
	// gatherReading); batchMax is ReadingsBatch within MaxInFlight.
	gather   []*readingsBatch
	batchMax int
}

// New checks the options and builds the key index.
func New(js jetstream.JetStream, o Options) (*Worker, error) {
	if js == nil {
		return nil, errors.New("decrypt: no JetStream context")
	}
	return newWorker(js, o)
}

// newWorker is New without the JetStream check: tests drive the handler
// with a stand-in.
func newWorker(js jetstream.JetStream, o Options) (*Worker, error) {
	if o.Partitions <= 0 {
		return nil, errors.New("decrypt: Partitions must be set (see bus.VerifyStreams)")
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.ConnCacheSize < 2 {
		o.ConnCacheSize = 100000
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	ix := o.Index
	if ix == nil {
		ix = NewKeyIndex(o.Keys)
	}
	m, err := newMetrics(o.Metrics, ix)
	if err != nil {
		return nil, err
	}
	w := &Worker{js: js, o: o, ix: ix, cache: newConnCache(o.ConnCacheSize), m: m, log: o.Log, pins: pins{set: map[string]bool{}}}
	w.stuck = newStuckDevices(m.replayedDevices.Set)
	if o.CheckpointEvery <= 0 {
		o.CheckpointEvery = DefaultCheckpointEvery
		w.o.CheckpointEvery = o.CheckpointEvery
	}
	if o.Seqs != nil {
		w.store = newMarkStore(js, o.Seqs, o.Partitions, o.Log, m)
		w.marks = w.store
	}
	w.bufs.New = func() any { return &scratch{} }
	if o.ReadingsBatch > 1 {
		w.gather = make([]*readingsBatch, o.Partitions)
		w.batchMax = min(o.ReadingsBatch, o.MaxInFlight)
	}
	return w, nil
}

// Index is the worker's key index.
func (w *Worker) Index() *KeyIndex { return w.ix }

// Health returns nil while NATS is connected and no v2 device has had its
// frames refused as replayed for StuckAfter (it names them: such a device
// is dark until its sequence moves past its mark or an operator resets it).
func (w *Worker) Health() error {
	if s := w.js.Conn().Status(); s != nats.CONNECTED {
		return fmt.Errorf("nats %s", s)
	}
	if ids := w.stuck.stuck(); len(ids) > 0 {
		return fmt.Errorf("degraded: v2 devices refused as replayed for over %v: %s", StuckAfter, strings.Join(ids, ", "))
	}
	return nil
}

// Run consumes RAW until ctx is cancelled, then drains in-flight frames.
func (w *Worker) Run(ctx context.Context) error {
	if w.o.Registry != nil {
		ready := make(chan struct{})
		watchErr := make(chan error, 1)
		go func() { watchErr <- w.o.Registry.Watch(ctx, w.apply, sync.OnceFunc(func() { close(ready) })) }()
		select {
		case <-ready: // every known device is indexed: frames are not refused as unknown at start
		case err := <-watchErr:
			return err
		case <-ctx.Done():
			return nil
		}
		w.log.Info("key index loaded from the registry", "devices", w.ix.Len())
	}
	if w.o.Seqs != nil {
		ready := make(chan struct{})
		watchErr := make(chan error, 1)
		go func() { watchErr <- w.watchPins(ctx, sync.OnceFunc(func() { close(ready) })) }()
		select {
		case <-ready: // pinned devices are known: no recorded legacy frame slips through at start
		case err := <-watchErr:
			return fmt.Errorf("decrypt: watch v2 pins: %w", err)
		case <-ctx.Done():
			return nil
		}
		ready = make(chan struct{})
		go func() { watchErr <- w.store.watchResets(ctx, sync.OnceFunc(func() { close(ready) })) }()
		select {
		case <-ready: // resets are known before any partition's marks are loaded
		case err := <-watchErr:
			return fmt.Errorf("decrypt: watch v2 mark resets: %w", err)
		case <-ctx.Done():
			return nil
		}
		flushCtx, stopFlush := context.WithCancel(ctx)
		flushed := make(chan struct{})
		go func() { defer close(flushed); w.store.run(flushCtx, w.o.CheckpointEvery) }()
		defer func() {
			stopFlush()
			<-flushed
			// Everything taken on is finished: the last checkpoint is exact,
			// and the next owner folds nothing in.
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			w.store.checkpointAll(fctx)
		}()
	}
	err := bus.ConsumePartitions(ctx, w.js, bus.ConsumeOptions{
		Stage: "decrypt", Stream: bus.StreamRaw, Partitions: w.o.Partitions, Filter: bus.RawSubject,
		MaxInFlight: w.o.MaxInFlight, DrainTimeout: w.o.DrainTimeout, Handle: w.handle, Flush: w.flush, Log: w.log,
		Latency: w.m.latency,
	})
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil // stopped while still creating its consumers: nothing was taken on
	}
	return err
}

// apply brings one registry change into the index.
func (w *Worker) apply(r registry.Record, deleted bool) {
	w.ix.Apply(r, deleted)
	w.keysGen.Add(1)
	if !deleted {
		w.m.registryUpdates.Inc()
	}
}

// scratch is one frame's working memory. ConsumePartitions calls the
// handler from one goroutine per partition, so each call takes its own
// from a pool rather than sharing one buffer.
type scratch struct{ ct, plain []byte }

// rawFrame is a RAW message's parts that a reading or dead letter carries on.
type rawFrame struct {
	header nats.Header
	data   []byte
	seq    uint64 // RAW stream sequence
	part   int    // RAW partition (-1: not from a partition, e.g. replay)
	pin    string // the partition's pin when delivered (bus.HeaderPinID)
	// index is the frame's place, from 1, in its RAW batch (0: a message
	// of its own); its per-frame fields then come from the batch's body.
	index         int
	protocol      string // bus.ProtocolLegacy or bus.ProtocolV2 ("": legacy)
	device        string // a batched v2 frame's device, as the edge read it
	conn          string
	frameSeq      uint64
	received      time.Time
	remote, local string
}

// errBadHeaders marks RAW messages whose edge headers are missing or garbled.
var errBadHeaders = errors.New("decrypt: RAW headers")

// parseHeaders reads the headers the edge sets on every RAW message. The
// connection, frame number and receive time are required; the protocol,
// when given, must be one this worker knows.
func (f *rawFrame) parseHeaders(h nats.Header) error {
	f.conn = h.Get(bus.HeaderConn)
	if f.conn == "" {
		return fmt.Errorf("%w: missing %s", errBadHeaders, bus.HeaderConn)
	}
	if !utf8.ValidString(f.conn) { // it would not survive the READINGS JSON
		return fmt.Errorf("%w: %s %q is not UTF-8", errBadHeaders, bus.HeaderConn, clip(f.conn))
	}
	var err error
	if f.frameSeq, err = strconv.ParseUint(h.Get(bus.HeaderFrameSeq), 10, 64); err != nil || f.frameSeq == 0 {
		return fmt.Errorf("%w: %s %q is not a frame number", errBadHeaders, bus.HeaderFrameSeq, clip(h.Get(bus.HeaderFrameSeq)))
	}
	if f.received, err = time.Parse(time.RFC3339Nano, h.Get(bus.HeaderReceived)); err != nil {
		return fmt.Errorf("%w: %s %q is not an RFC 3339 time", errBadHeaders, bus.HeaderReceived, clip(h.Get(bus.HeaderReceived)))
	}
	switch f.protocol = h.Get(bus.HeaderProtocol); f.protocol {
	case "", bus.ProtocolLegacy, bus.ProtocolV2:
	default:
		return fmt.Errorf("%w: unsupported %s %q", errBadHeaders, bus.HeaderProtocol, clip(f.protocol))
	}
	f.remote, f.local = h.Get(bus.HeaderRemote), h.Get(bus.HeaderLocal)
	return nil
}

// checkBatched checks what a RAW batch's body says of one of its frames,
// as parseHeaders checks a single frame's headers.
func (f *rawFrame) checkBatched() error {
	switch {
	case f.conn == "":
		return fmt.Errorf("%w: batched frame %d: no connection", errBadHeaders, f.index)
	case !utf8.ValidString(f.conn):
		return fmt.Errorf("%w: batched frame %d: connection %q is not UTF-8", errBadHeaders, f.index, clip(f.conn))
	case f.frameSeq == 0:
		return fmt.Errorf("%w: batched frame %d: frame number 0", errBadHeaders, f.index)
	case f.received.IsZero():
		return fmt.Errorf("%w: batched frame %d: no receive time", errBadHeaders, f.index)
	}
	return nil
}

// frameHeader is the frame's RAW headers: its message's, or for a batched
// frame those a message of its own would have carried.
func (f *rawFrame) frameHeader() nats.Header {
	if f.index == 0 {
		return f.header
	}
	bf := bus.RawFrame{Protocol: f.protocol, Device: f.device, Conn: f.conn, Seq: f.frameSeq, Received: f.received, Remote: f.remote, Local: f.local}
	return bf.Header(f.header)
}

// replyTo is where the frame's v2 reply goes.
func (f *rawFrame) replyTo() replyTo {
	return replyTo{edge: f.header.Get(bus.HeaderEdge), conn: f.conn}
}

// place tells the frame from every other in RAW for the v2 replay marks
// (frameRef.raw): its RAW sequence, or for a batched frame its sequence
// and index under batchPlace, so that two frames of one batch (a device's
// frame and its resend, say) are never taken for one redelivered.
func (f *rawFrame) place() (uint64, error) {
	if f.index == 0 {
		return f.seq, nil
	}
	if f.seq >= 1<<batchSeqBits || f.index >= 1<<batchIndexBits {
		return 0, fmt.Errorf("%w: batched frame %d of RAW message %d has no place the replay marks can hold", errBadHeaders, f.index, f.seq)
	}
	return batchPlace | f.seq<<batchIndexBits | uint64(f.index), nil
}

// A batched frame's place: the top bit set (no RAW sequence reaches it),
// then the message's sequence and the frame's index (at most
// bus.MaxRawBatchFrames).
const (
	batchPlace     = 1 << 63
	batchIndexBits = 16
	batchSeqBits   = 63 - batchIndexBits
)

// ref names the frame in the message ids of its outputs: its RAW sequence,
// and its place in a batch.
func (f *rawFrame) ref() string {
	s := strconv.FormatUint(f.seq, 10)
	if f.index > 0 {
		s += "." + strconv.Itoa(f.index)
	}
	return s
}

// clip shortens a header value quoted in an error: the dead letter keeps
// the headers whole anyway.
func clip(s string) string {
	const maxQuoted = 40
	if len(s) > maxQuoted {
		return s[:maxQuoted] + "..."
	}
	return s
}

func (w *Worker) handle(ctx context.Context, msg jetstream.Msg) (bus.Completion, error) {
	meta, err := msg.Metadata()
	if err != nil {
		return nil, fmt.Errorf("decrypt: RAW message metadata: %w", err)
	}
	f := rawFrame{header: msg.Headers(), data: msg.Data(), seq: meta.Sequence.Stream, part: -1}
	f.pin = f.header.Get(bus.HeaderPinID)
	if p, ok := strings.CutPrefix(msg.Subject(), bus.SubjectRawPrefix); ok {
		if n, err := strconv.Atoi(p); err == nil {
			f.part = n
		}
	}
	if bus.IsRawBatch(f.header) {
		return w.handleBatch(ctx, f)
	}
	w.m.frames.Inc()
	return w.handleFrame(ctx, &f)
}

// handleBatch handles each frame of a RAW batch as a frame of its own, in
// order; the message is acknowledged once every frame's output is stored.
// A body that cannot be read goes to DEADLETTER whole.
func (w *Worker) handleBatch(ctx context.Context, batch rawFrame) (bus.Completion, error) {
	frames, err := bus.DecodeRawBatch(batch.data)
	if err != nil {
		w.m.frames.Inc()
		return w.deadLetter(batch, Outcome{Reason: bus.ReasonMalformed, Err: err})
	}
	w.m.frames.Add(float64(len(frames)))
	all := make(allStored, 0, len(frames))
	for i := range frames {
		f := batch
		f.index, f.data = i+1, frames[i].Data
		f.protocol, f.device = frames[i].Protocol, frames[i].Device
		f.conn, f.frameSeq, f.received = frames[i].Conn, frames[i].Seq, frames[i].Received
		f.remote, f.local = frames[i].Remote, frames[i].Local
		c, err := w.handleFrame(ctx, &f)
		if err != nil {
			// Redelivered whole: the outputs already made are stored again
			// under the same ids, which JetStream drops as duplicates.
			return nil, err
		}
		if c != nil {
			all = append(all, c)
		}
	}
	return all, nil
}

// allStored waits for every output of a RAW batch's frames.
type allStored []bus.Completion

// Wait waits for each output in turn.
func (a allStored) Wait(ctx context.Context) error {
	for _, c := range a {
		if err := c.Wait(ctx); err != nil {
			return err
		}
	}
	return nil
}

// handleFrame turns one frame into its output: a reading stored (or
// gathered for a batch), a dead letter, or a v2 reply.
func (w *Worker) handleFrame(ctx context.Context, f *rawFrame) (bus.Completion, error) {
	out, err := w.decode(ctx, f)
	if err != nil {
		return nil, err
	}
	if out.Duplicate {
		w.m.duplicates.Inc()
		w.sendReply(f.replyTo(), out.reply)
		return nil, nil
	}
	if out.Reading == nil {
		w.sendReply(f.replyTo(), out.reply)
		return w.deadLetter(*f, out)
	}
	if w.gathers(f.part) {
		w.m.readings.WithLabelValues(out.Reading.Protocol, out.Reading.Variant).Inc()
		b := w.gatherReading(ctx, f, out.Reading, out.keyGen)
		if out.accepted != nil {
			return &v2Output{w: w, stored: b.stored, accepted: out.accepted, to: f.replyTo(), ack: out.reply}, nil
		}
		if out.reply != nil {
			return replyAfter{batchMember{b}, w, f.replyTo(), out.reply}, nil
		}
		return batchMember{b}, nil
	}
	if out.accepted != nil {
		fut, err := w.publish(out.Reading, f.ref(), out.keyGen)
		if err != nil {
			w.marks.stored(out.accepted, 0, err)
			return nil, err
		}
		return &v2Output{w: w, stored: func(ctx context.Context) (uint64, error) { return storedAt(ctx, w.js, fut) }, accepted: out.accepted, to: f.replyTo(), ack: out.reply}, nil
	}
	c, err := w.publishReading(out.Reading, f.ref())
	if err != nil || out.reply == nil {
		return c, err
	}
	return replyAfter{c, w, f.replyTo(), out.reply}, nil
}

// replyAfter sends a v2 ACK once the reading's publish is acknowledged.
type replyAfter struct {
	bus.Completion
	w     *Worker
	to    replyTo
	reply []byte
}

// Wait waits for the reading, then acknowledges the frame to the device.
func (r replyAfter) Wait(ctx context.Context) error {
	if err := r.Completion.Wait(ctx); err != nil {
		return err
	}
	r.w.sendReply(r.to, r.reply)
	return nil
}

// v2Output waits until READINGS holds a v2 reading, reports it to the
// replay marks (the frame's mark joins what the next checkpoint writes),
// then sends the device's verified ACK to the edge that received the
// frame: an ACK always follows acceptance and storage.
type v2Output struct {
	w *Worker
	// stored waits until READINGS has the reading (alone, or in a batch)
	// and returns its READINGS sequence.
	stored   func(ctx context.Context) (uint64, error)
	accepted *acceptance
	to       replyTo
	ack      []byte
}

// Wait waits until READINGS has the reading.
func (o *v2Output) Wait(ctx context.Context) error {
	seq, err := o.stored(ctx)
	o.w.marks.stored(o.accepted, seq, err)
	if err != nil {
		return err
	}
	o.w.sendReply(o.to, o.ack)
	return nil
}

// storedAt waits for a publish's answer and returns the stream sequence
// it was stored at. A publish that fails is published again, with the same
// message id, until stored or ctx ends, as bus.PubAck does.
func storedAt(ctx context.Context, js jetstream.JetStream, f jetstream.PubAckFuture) (uint64, error) {
	var err error
	select {
	case ack := <-f.Ok():
		return ack.Sequence, nil
	case err = <-f.Err():
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return republish(ctx, js, f.Msg(), err)
}

// republish publishes msg again, after a failure err, until it is stored
// or ctx ends, and returns the stream sequence it was stored at.
func republish(ctx context.Context, js jetstream.JetStream, msg *nats.Msg, err error) (uint64, error) {
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("publish to %s not confirmed: %w", msg.Subject, err)
		case <-time.After(wait):
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var ack *jetstream.PubAck
		ack, err = js.PublishMsg(pctx, msg)
		cancel()
		if err == nil {
			return ack.Sequence, nil
		}
	}
}

// Outcome is what decrypt makes of one RAW frame: a reading for READINGS,
// or the reason the frame goes to DEADLETTER.
type Outcome struct {
	Reading *bus.Reading // nil when the frame is dead-lettered
	Reason  bus.Reason   // dead letters: why
	Device  string       // dead letters: the device, where known
	Err     error        // dead letters: what failed (never key material)
	// Duplicate is a v2 frame accepted before (Reason ReasonDuplicate): it
	// is acknowledged again, neither stored nor dead-lettered.
	Duplicate bool

	accepted *acceptance // a v2 reading: its frame as the replay marks accepted it
	keyGen   string      // a v2 reading: the generation of the key that opened it
	reply    []byte      // v2: the reply for the device (ACK, REFUSED), made with its ACK key
}

// dead is the Outcome of a frame that goes to DEADLETTER.
func dead(reason bus.Reason, device string, err error) (Outcome, error) {
	return Outcome{Reason: reason, Device: device, Err: err}, nil
}

// decode turns one RAW frame into a reading or a dead-letter reason; an
// error means the frame could not be decided now and is to be retried.
func (w *Worker) decode(ctx context.Context, f *rawFrame) (Outcome, error) {
	var err error
	if f.index > 0 {
		err = f.checkBatched()
	} else {
		err = f.parseHeaders(f.header)
	}
	if err != nil {
		return dead(bus.ReasonMalformed, "", err)
	}
	sc := w.bufs.Get().(*scratch)
	defer w.bufs.Put(sc)
	if f.protocol == bus.ProtocolV2 {
		if w.marks == nil {
			return Outcome{}, errors.New("decrypt: a v2 frame, but no high-water mark store (Options.Seqs)")
		}
		return w.decodeV2(ctx, f, sc)
	}
	sc.ct, err = wire.DecodeFrame(sc.ct[:0], f.data)
	if err != nil {
		return dead(bus.ReasonMalformed, "", err)
	}
	if need := 2 * len(sc.ct); cap(sc.plain) < need { // what Open needs, so that it does not allocate
		sc.plain = make([]byte, need)
	}
	id, known, err := w.identify(ctx, sc, f.conn, f.frameSeq)
	switch {
	case errors.Is(err, ErrUnknownDevice):
		return dead(bus.ReasonUnknownDevice, "", err)
	case errors.Is(err, ErrAmbiguous):
		w.m.ambiguous.Inc()
		return dead(bus.ReasonAmbiguous, "", err)
	case err != nil:
		return dead(bus.ReasonInvalid, id.Device, err)
	case id.Revoked:
		return dead(bus.ReasonRevoked, id.Device, errors.New("device key revoked"))
	}
	if !known {
		w.remember(f.conn, connDevice{device: id.Device, variant: id.Variant})
	}
	if w.pins.has(id.Device) {
		// The device has spoken v2 (or an operator pinned it): a legacy
		// frame in its name is a recording replayed, or a downgrade.
		return dead(bus.ReasonDowngrade, id.Device, errDowngrade)
	}
	return Outcome{Reading: w.reading(f, &id)}, nil
}

// identify opens the frame with the connection's known key, or searches.
// known reports that the connection's cached device opened it. A
// connection's first frame is searched for at once: no worker can have
// seen the connection yet, and a round trip to the shared store, which
// slows with the server's load, would hold the partition for nothing.
func (w *Worker) identify(ctx context.Context, sc *scratch, conn string, frameSeq uint64) (Identified, bool, error) {
	c, ok := w.cache.get(conn)
	if !ok && frameSeq > 1 {
		if c, ok = w.shared(ctx, conn); ok {
			w.cache.put(conn, c)
		}
	}
	unidentified := ok && c.device == ""
	if unidentified {
		// The connection's first frame fitted no key: its later frames are
		// not searched again (one search per unidentified connection; the
		// edge cuts the connection at that first dead letter), unless the
		// keys changed since (a device imported while it was sending).
		if c.keys == w.keysGen.Load() {
			return Identified{}, false, fmt.Errorf("%w: the connection's earlier frame fitted no key (not searched again)", ErrUnknownDevice)
		}
		ok = false
	}
	if ok {
		if key, revoked, ok := w.ix.Lookup(c.device); ok {
			r, v, err := key.Open(sc.plain, sc.ct, c.variant)
			if err == nil {
				w.m.cacheHits.Inc()
				return Identified{Device: c.device, Key: key, Revoked: revoked, Variant: v, Reading: r}, v == c.variant, nil
			}
		}
		// Another device on the same connection (the old desktop simulator
		// sends several on one), or a rotated key: search.
		w.m.cacheMisses.Inc()
	}
	w.m.searches.Inc()
	id, err := w.ix.Identify(sc.plain, sc.ct)
	w.m.candidates.Add(float64(id.Candidates))
	if !ok && (frameSeq == 1 || unidentified) && errors.Is(err, ErrUnknownDevice) {
		// Unidentified: see above. Only the first frame decides it: a later
		// one that fits no key may share its connection with a known
		// device's (the old desktop simulator), whose frames must go on.
		w.cache.put(conn, connDevice{keys: w.keysGen.Load()})
	}
	return id, false, err
}

// shared looks a connection up in the bucket shared by all workers.
func (w *Worker) shared(ctx context.Context, conn string) (connDevice, bool) {
	if w.o.Conns == nil {
		return connDevice{}, false
	}
	e, err := w.o.Conns.Get(ctx, conn)
	if err != nil {
		return connDevice{}, false
	}
	id, variant, ok := strings.Cut(string(e.Value()), " ")
	v, err := wire.ParseVariant(variant)
	if !ok || err != nil {
		return connDevice{}, false
	}
	w.m.sharedHits.Inc()
	return connDevice{device: id, variant: v}, true
}

// remember caches a connection's device here and for the other workers.
// The shared entry is a hint that spares another worker a search after a
// partition moves, so it is published without waiting for JetStream's
// answer: a synchronous put per new connection held the partition for a
// round trip, which under load (10,000 devices connecting) cost more than
// everything else decrypt does. A lost hint costs one search.
func (w *Worker) remember(conn string, d connDevice) {
	w.cache.put(conn, d)
	if w.o.Conns == nil {
		return
	}
	if err := w.js.Conn().Publish(kvSubject(w.o.Conns, conn), []byte(d.device+" "+d.variant.String())); err != nil {
		w.log.Warn("could not share a connection's device", "conn", conn, "err", err)
	}
}

// reading is the READINGS message of frame f, opened as id.
func (w *Worker) reading(f *rawFrame, id *Identified) *bus.Reading {
	r := &bus.Reading{
		Device: id.Device, Protocol: bus.ProtocolLegacy, Variant: id.Variant.String(),
		Received: f.received, Conn: f.conn, FrameSeq: f.frameSeq, RawSeq: f.seq,
		Remote: f.remote, Local: f.local,
	}
	r.SetWire(&id.Reading)
	return r
}

// publishReading stores a reading in READINGS; ref names its frame
// (rawFrame.ref).
func (w *Worker) publishReading(r *bus.Reading, ref string) (bus.Completion, error) {
	fut, err := w.publish(r, ref, "")
	if err != nil {
		return nil, err
	}
	return bus.PubAck(w.js, fut), nil
}

// publish sends a reading to READINGS; ref names its frame
// (rawFrame.ref), and keyGen, for a v2 reading, is the generation of the
// key that opened it (bus.HeaderKeyGen).
func (w *Worker) publish(r *bus.Reading, ref, keyGen string) (jetstream.PubAckFuture, error) {
	// One reading alone: the body a publish from before batches reads too
	// (READINGS messages may outlive an upgrade of publish).
	data, err := bus.AppendReadingV2(make([]byte, 0, readingSize(r, floatBytes)), r)
	if err != nil {
		return nil, fmt.Errorf("decrypt: encode reading: %w", err)
	}
	out := &nats.Msg{
		Subject: bus.ReadingsSubject(bus.Partition(r.Device, w.o.Partitions), r.Device),
		Data:    data,
		// The id makes the reading of a redelivered frame a duplicate that JetStream drops.
		Header: nats.Header{bus.HeaderDevice: {r.Device}, jetstream.MsgIDHeader: {"r:" + ref}},
	}
	if keyGen != "" {
		out.Header[bus.HeaderKeyGen] = []string{keyGen}
	}
	fut, err := w.js.PublishMsgAsync(out, bus.Backpressure)
	if err != nil {
		w.m.publishErrors.Inc()
		return nil, fmt.Errorf("decrypt: publish reading: %w", err)
	}
	w.m.readings.WithLabelValues(r.Protocol, r.Variant).Inc()
	return fut, nil
}

// deadLetter stores the frame in DEADLETTER with why it failed; RAW is acked
// once it is stored, so a bad frame is not retried for ever.
func (w *Worker) deadLetter(f rawFrame, out Outcome) (bus.Completion, error) {
	reason, device, cause := out.Reason, out.Device, out.Err
	h := nats.Header{}
	for k, v := range f.frameHeader() {
		// The edge's message id, or any other JetStream control header
		// (expected stream, TTL...), would act on the DEADLETTER publish.
		if !bus.IsControlHeader(k) {
			h[k] = v
		}
	}
	h.Set(bus.HeaderReason, string(reason))
	h.Set(bus.HeaderError, cause.Error()) // no error built here or in wire quotes key material
	h.Set(bus.HeaderRawSeq, strconv.FormatUint(f.seq, 10))
	h.Set(jetstream.MsgIDHeader, "dl:"+f.ref())
	if device != "" {
		h.Set(bus.HeaderDevice, device)
	}
	fut, err := w.js.PublishMsgAsync(&nats.Msg{Subject: bus.DeadLetterSubject(reason), Data: f.data, Header: h}, bus.Backpressure)
	if err != nil {
		w.m.publishErrors.Inc()
		return nil, fmt.Errorf("decrypt: publish dead letter: %w", err)
	}
	w.m.deadLetters.WithLabelValues(string(reason)).Inc()
	w.log.Debug("frame dead-lettered", "reason", reason, "conn", f.conn, "frame", f.frameSeq, "err", cause)
	return bus.PubAck(w.js, fut), nil
}
