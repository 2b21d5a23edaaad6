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
	"time"

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
	// Partitions is the partition count in force (see bus.EnsureStreams).
	Partitions int
	// MaxInFlight bounds frames handled but not yet stored, per partition (default 512).
	MaxInFlight int
	// ConnCacheSize bounds the remembered connection → device pairs (default 100000).
	ConnCacheSize int
	// DrainTimeout bounds in-flight work after cancellation (default 10 s).
	DrainTimeout time.Duration
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
	m     *metrics
	log   *slog.Logger
	bufs  sync.Pool
}

// New checks the options and builds the key index.
func New(js jetstream.JetStream, o Options) (*Worker, error) {
	if js == nil {
		return nil, errors.New("decrypt: no JetStream context")
	}
	return newWorker(js, o)
}

// newWorker is New without the JetStream check, so that tests can drive
// the examine path alone.
func newWorker(js jetstream.JetStream, o Options) (*Worker, error) {
	if o.Partitions <= 0 {
		return nil, errors.New("decrypt: Partitions must be set (see bus.EnsureStreams)")
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 512
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
	w := &Worker{js: js, o: o, ix: ix, cache: newConnCache(o.ConnCacheSize), m: m, log: o.Log}
	w.bufs.New = func() any { return &scratch{} }
	return w, nil
}

// Index is the worker's key index.
func (w *Worker) Index() *KeyIndex { return w.ix }

// Health returns nil while NATS is connected.
func (w *Worker) Health() error {
	if s := w.js.Conn().Status(); s != nats.CONNECTED {
		return fmt.Errorf("nats %s", s)
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
	return bus.ConsumePartitions(ctx, w.js, bus.ConsumeOptions{
		Stage: "decrypt", Stream: bus.StreamRaw, Partitions: w.o.Partitions, Filter: bus.RawSubject,
		MaxInFlight: w.o.MaxInFlight, DrainTimeout: w.o.DrainTimeout, Handle: w.handle, Log: w.log,
	})
}

// apply brings one registry change into the index.
func (w *Worker) apply(r registry.Record, deleted bool) {
	if deleted {
		w.ix.Delete(r.ID)
		return
	}
	w.ix.Put(r.Device(), r.IsRevoked())
	w.m.registryUpdates.Inc()
}

// scratch is one frame's working memory. Handlers run concurrently, one
// goroutine per partition, so each takes its own from a pool rather than
// sharing a buffer.
type scratch struct{ ct, plain []byte }

// rawFrame is what a RAW message's headers say about its frame: what a
// reading or a dead letter carries on.
type rawFrame struct {
	conn     string
	frameSeq uint64
	received time.Time
	remote   string
	local    string
}

// errMalformedHeaders marks RAW messages whose edge headers are missing or garbled.
var errMalformedHeaders = errors.New("decrypt: RAW headers")

// parseRawHeaders reads the headers the edge sets on every RAW message.
// The connection, frame number and receive time are required; the
// protocol, when given, must be legacy.
func parseRawHeaders(h nats.Header) (rawFrame, error) {
	f := rawFrame{conn: h.Get(bus.HeaderConn), remote: h.Get(bus.HeaderRemote), local: h.Get(bus.HeaderLocal)}
	if f.conn == "" {
		return f, fmt.Errorf("%w: missing %s", errMalformedHeaders, bus.HeaderConn)
	}
	var err error
	if f.frameSeq, err = strconv.ParseUint(h.Get(bus.HeaderFrameSeq), 10, 64); err != nil || f.frameSeq == 0 {
		return f, fmt.Errorf("%w: %s %q is not a frame number", errMalformedHeaders, bus.HeaderFrameSeq, h.Get(bus.HeaderFrameSeq))
	}
	if f.received, err = time.Parse(time.RFC3339Nano, h.Get(bus.HeaderReceived)); err != nil {
		return f, fmt.Errorf("%w: %s %q is not an RFC 3339 time", errMalformedHeaders, bus.HeaderReceived, h.Get(bus.HeaderReceived))
	}
	if p := h.Get(bus.HeaderProtocol); p != "" && p != bus.ProtocolLegacy {
		return f, fmt.Errorf("%w: unsupported %s %q", errMalformedHeaders, bus.HeaderProtocol, p)
	}
	return f, nil
}

// verdict is what becomes of one frame: a reading (reason empty) or a dead
// letter with its reason, the device when known, and the error.
type verdict struct {
	reason bus.Reason
	id     Identified
	err    error
}

// examine parses a RAW message's headers and frame and identifies the
// device. It touches no network, so that it can be fuzzed alone.
func (w *Worker) examine(sc *scratch, h nats.Header, data []byte) (rawFrame, verdict) {
	f, err := parseRawHeaders(h)
	if err != nil {
		return f, verdict{reason: bus.ReasonMalformed, err: err}
	}
	sc.ct, err = wire.DecodeFrame(sc.ct[:0], data)
	if err != nil {
		return f, verdict{reason: bus.ReasonMalformed, err: err}
	}
	if need := 2 * len(sc.ct); cap(sc.plain) < need { // what Open needs, so it does not allocate
		sc.plain = make([]byte, need)
	}
	id, known, err := w.identify(sc, f.conn)
	switch {
	case errors.Is(err, ErrUnknownDevice):
		return f, verdict{reason: bus.ReasonUnknownDevice, err: err}
	case errors.Is(err, ErrAmbiguous):
		w.m.ambiguous.Inc()
		return f, verdict{reason: bus.ReasonAmbiguous, err: err}
	case err != nil:
		return f, verdict{reason: bus.ReasonInvalid, id: id, err: err}
	case id.Revoked:
		return f, verdict{reason: bus.ReasonRevoked, id: id, err: errors.New("decrypt: device key revoked")}
	}
	if !known {
		w.cache.put(f.conn, connDevice{id.Device, id.Variant})
	}
	return f, verdict{id: id}
}

func (w *Worker) handle(_ context.Context, msg jetstream.Msg) (bus.Completion, error) {
	w.m.frames.Inc()
	meta, err := msg.Metadata()
	if err != nil {
		return nil, fmt.Errorf("decrypt: RAW message metadata: %w", err)
	}
	rawSeq := meta.Sequence.Stream
	sc := w.bufs.Get().(*scratch)
	f, v := w.examine(sc, msg.Headers(), msg.Data())
	w.bufs.Put(sc) // nothing below refers to it: readings hold copies
	if v.reason != "" {
		return w.deadLetter(msg, rawSeq, f, v)
	}
	return w.publishReading(rawSeq, f, &v.id)
}

// identify opens the frame with the connection's known key, or searches.
// known reports that the connection's cached device and variant opened it.
func (w *Worker) identify(sc *scratch, conn string) (Identified, bool, error) {
	if c, ok := w.cache.get(conn); ok {
		if key, revoked, ok := w.ix.Lookup(c.device); ok {
			r, v, err := key.Open(sc.plain, sc.ct, c.variant)
			if err == nil {
				w.m.cacheHits.Inc()
				return Identified{Device: c.device, Key: key, Revoked: revoked, Variant: v, Reading: r}, v == c.variant, nil
			}
		}
		// Another device on the same connection (the old desktop
		// simulator multiplexes several), or a rotated key: search.
		w.m.cacheMisses.Inc()
	}
	w.m.searches.Inc()
	id, err := w.ix.Identify(sc.plain, sc.ct)
	w.m.candidates.Add(float64(id.Candidates))
	return id, false, err
}

func (w *Worker) publishReading(rawSeq uint64, f rawFrame, id *Identified) (bus.Completion, error) {
	r := bus.Reading{
		Device: id.Device, Protocol: bus.ProtocolLegacy, Variant: id.Variant.String(),
		Received: f.received, Conn: f.conn, FrameSeq: f.frameSeq, RawSeq: rawSeq,
		Remote: f.remote, Local: f.local,
	}
	r.SetWire(&id.Reading)
	data, err := bus.MarshalReading(&r)
	if err != nil {
		return nil, fmt.Errorf("decrypt: encode reading: %w", err)
	}
	out := &nats.Msg{
		Subject: bus.ReadingsSubject(bus.Partition(id.Device, w.o.Partitions), id.Device),
		Data:    data,
		// The id makes a redelivered frame's reading a duplicate JetStream drops.
		Header: nats.Header{bus.HeaderDevice: {id.Device}, jetstream.MsgIDHeader: {"r:" + strconv.FormatUint(rawSeq, 10)}},
	}
	fut, err := w.js.PublishMsgAsync(out)
	if err != nil {
		w.m.publishErrors.Inc()
		return nil, fmt.Errorf("decrypt: publish reading: %w", err)
	}
	w.m.readings.WithLabelValues(id.Variant.String()).Inc()
	return bus.PubAck(fut), nil
}

// deadLetter stores the frame as received in DEADLETTER with why it failed;
// RAW is acked once it is stored, so a bad frame is not retried for ever.
func (w *Worker) deadLetter(msg jetstream.Msg, rawSeq uint64, f rawFrame, v verdict) (bus.Completion, error) {
	h := nats.Header{}
	for k, vals := range msg.Headers() {
		// The edge's message id and any other JetStream control header
		// (expected stream, TTL...) would act on the DEADLETTER publish.
		if len(k) < 5 || !strings.EqualFold(k[:5], "Nats-") {
			h[k] = vals
		}
	}
	h.Set(bus.HeaderReason, string(v.reason))
	h.Set(bus.HeaderError, v.err.Error()) // texts built here and in wire never hold key material
	h.Set(bus.HeaderRawSeq, strconv.FormatUint(rawSeq, 10))
	h.Set(jetstream.MsgIDHeader, "dl:"+strconv.FormatUint(rawSeq, 10))
	if v.id.Device != "" {
		h.Set(bus.HeaderDevice, v.id.Device)
	} else {
		h.Del(bus.HeaderDevice)
	}
	fut, err := w.js.PublishMsgAsync(&nats.Msg{Subject: bus.DeadLetterSubject(v.reason), Data: msg.Data(), Header: h})
	if err != nil {
		w.m.publishErrors.Inc()
		return nil, fmt.Errorf("decrypt: publish dead letter: %w", err)
	}
	w.m.deadLetters.WithLabelValues(string(v.reason)).Inc()
	w.log.Debug("frame dead-lettered", "reason", v.reason, "conn", f.conn, "frame", f.frameSeq, "err", v.err)
	return bus.PubAck(fut), nil
}
