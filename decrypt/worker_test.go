package decrypt

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

const parts = 4

func setup(t *testing.T) jetstream.JetStream {
	t.Helper()
	return testkit.StartBus(t, parts).JS
}

// baseTime is when test frames are received: frame i of a connection at
// baseTime + i ms, so that a reading's Received can be checked exactly.
var baseTime = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func receivedAt(seq int) time.Time { return baseTime.Add(time.Duration(seq) * time.Millisecond) }

// rawHeaders are the headers the edge sets on frame seq of conn.
func rawHeaders(conn string, seq int, received time.Time) nats.Header {
	h := nats.Header{}
	h.Set(bus.HeaderConn, conn)
	h.Set(bus.HeaderFrameSeq, strconv.Itoa(seq))
	h.Set(bus.HeaderRemote, "127.0.0.1:"+strconv.Itoa(40000+len(conn)))
	h.Set(bus.HeaderLocal, "127.0.0.1:9998")
	h.Set(bus.HeaderReceived, received.Format(time.RFC3339Nano))
	h.Set(bus.HeaderProtocol, bus.ProtocolLegacy)
	h.Set(jetstream.MsgIDHeader, conn+":"+strconv.Itoa(seq))
	return h
}

// publishRaw stores a frame in RAW as the edge would and returns its RAW sequence.
func publishRaw(t *testing.T, js jetstream.JetStream, conn string, seq int, frame []byte) uint64 {
	t.Helper()
	return publishRawMsg(t, js, &nats.Msg{Subject: bus.RawSubject(bus.Partition(conn, parts)), Data: frame, Header: rawHeaders(conn, seq, receivedAt(seq))})
}

func publishRawMsg(t *testing.T, js jetstream.JetStream, m *nats.Msg) uint64 {
	t.Helper()
	ack, err := js.PublishMsg(t.Context(), m)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

func wireFrame(d wire.Device, v wire.Variant, i int) []byte {
	return []byte(hexFrame(sealReading(d, v, i)))
}

func hexFrame(ct []byte) string {
	var blocks []string
	for i := 0; i < len(ct); i += 16 {
		blocks = append(blocks, hex.EncodeToString(ct[i:min(i+16, len(ct))]))
	}
	return strings.Join(blocks, "+")
}

// runWorker starts a worker with its own metrics registry; the returned
// function stops it (also at cleanup) and fails the test on a Run error.
func runWorker(t *testing.T, js jetstream.JetStream, devs []wire.Device) (*Worker, func()) {
	t.Helper()
	w, err := New(js, Options{Keys: devs, Partitions: parts, Metrics: prometheus.NewRegistry(), DrainTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	stop := sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})
	t.Cleanup(stop)
	return w, stop
}

// streamMsgs reads n messages of a stream (and fails on one more).
func streamMsgs(t *testing.T, js jetstream.JetStream, stream string, n int) []jetstream.Msg {
	t.Helper()
	c, err := js.OrderedConsumer(t.Context(), stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for len(out) < n {
		m, err := c.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("%s: %d of %d messages: %v", stream, len(out), n, err)
		}
		out = append(out, m)
	}
	if m, err := c.Next(jetstream.FetchMaxWait(300 * time.Millisecond)); err == nil {
		t.Fatalf("%s: extra message %s", stream, m.Subject())
	}
	return out
}

// waitRawDone waits until every decrypt consumer of RAW has nothing left
// to deliver and nothing unacknowledged.
func waitRawDone(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	for {
		busy := ""
		for p := range parts {
			c, err := js.Consumer(ctx, bus.StreamRaw, "decrypt-"+strconv.Itoa(p))
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				busy = fmt.Sprintf("partition %d: no consumer yet", p)
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			info, err := c.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.NumPending != 0 || info.NumAckPending != 0 {
				busy = fmt.Sprintf("partition %d: %d pending, %d unacknowledged", p, info.NumPending, info.NumAckPending)
			}
		}
		if busy == "" {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("RAW not consumed: %s", busy)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// sentFrame is what the test published to RAW, by RAW sequence.
type sentFrame struct {
	conn    string
	seq     int
	device  string // "" when the frame must be dead-lettered
	variant wire.Variant
	reading int
	reason  bus.Reason
	frame   []byte
}

func TestWorkerReadingsAndDeadLetters(t *testing.T) {
	js := setup(t)
	devs := loadKeys(t)
	stranger := wire.Device{ID: "stranger", Key: [16]byte([]byte("ZZZZZZZZZZZZZZZZ")), IV: devs[0].IV}
	// Two devices sharing one key and IV: their frames are ambiguous.
	shadowA := wire.Device{ID: "shadow_a", Key: [16]byte([]byte("SSSSSSSSSSSSSSSS")), IV: [16]byte([]byte("ssssssssssssssss"))}
	shadowB := shadowA
	shadowB.ID = "shadow_b"
	keys := append(slices.Clone(devs), shadowA, shadowB)

	sent := map[uint64]sentFrame{}
	frameSeq := map[string]int{}
	send := func(conn string, f sentFrame) {
		frameSeq[conn]++
		f.conn, f.seq = conn, frameSeq[conn]
		sent[publishRaw(t, js, conn, f.seq, f.frame)] = f
	}
	const n = 50
	// A connection per device, both variants; e-0 also carries a frame no
	// key opens, a corrupted frame of its device and one that is not hex,
	// which must not disturb its readings.
	for i := 1; i <= n; i++ {
		for c, d := range devs {
			v := wire.Pico + wire.Variant(c%2)
			send(fmt.Sprintf("e-%d", c), sentFrame{device: d.ID, variant: v, reading: i, frame: wireFrame(d, v, i)})
		}
		if i%10 == 0 {
			corrupt := sealReading(devs[0], wire.Pico, i)
			corrupt[len(corrupt)-5] ^= 0x80
			send("e-0", sentFrame{reason: bus.ReasonUnknownDevice, frame: wireFrame(stranger, wire.Pico, i)})
			send("e-0", sentFrame{reason: bus.ReasonInvalid, device: devs[0].ID, frame: []byte(hexFrame(corrupt))})
			send("e-0", sentFrame{reason: bus.ReasonMalformed, frame: []byte("not+hex")})
			send("e-amb", sentFrame{reason: bus.ReasonAmbiguous, frame: wireFrame(shadowA, wire.Pseudo, i)})
		}
	}
	// Frames whose edge headers are missing or garbled.
	badHeaders := []func(h nats.Header){
		func(h nats.Header) { h.Del(bus.HeaderConn) },
		func(h nats.Header) { h.Set(bus.HeaderFrameSeq, "x") },
		func(h nats.Header) { h.Set(bus.HeaderFrameSeq, "0") },
		func(h nats.Header) { h.Del(bus.HeaderReceived) },
		func(h nats.Header) { h.Set(bus.HeaderReceived, "yesterday") },
		func(h nats.Header) { h.Set(bus.HeaderProtocol, "v9") },
	}
	for i, spoil := range badHeaders {
		h := rawHeaders("e-bad", i+1, receivedAt(i+1))
		// Valid on RAW, but it must not be copied to DEADLETTER, where it would fail.
		h.Set(jetstream.ExpectedStreamHeader, bus.StreamRaw)
		spoil(h)
		frame := wireFrame(devs[1], wire.Pico, i)
		seq := publishRawMsg(t, js, &nats.Msg{Subject: bus.RawSubject(bus.Partition("e-bad", parts)), Data: frame, Header: h})
		sent[seq] = sentFrame{conn: h.Get(bus.HeaderConn), reason: bus.ReasonMalformed, frame: frame}
	}

	w, _ := runWorker(t, js, keys)
	readings := streamMsgs(t, js, bus.StreamReadings, n*len(devs))
	nextReading := map[string]int{}
	lastFrame := map[string]uint64{}
	for _, m := range readings {
		r, err := bus.UnmarshalReading(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		want, ok := sent[r.RawSeq]
		if !ok || want.device == "" || want.reason != "" {
			t.Fatalf("reading %+v for RAW message %d, which was %+v", r, r.RawSeq, want)
		}
		// Readings of one connection keep its order.
		nextReading[r.Conn]++
		if r.FrameSeq <= lastFrame[r.Conn] || r.Values.PulseSig != fmt.Sprintf("%d.000", nextReading[r.Conn]) {
			t.Fatalf("%s: frame %d reading %s after frame %d", r.Conn, r.FrameSeq, r.Values.PulseSig, lastFrame[r.Conn])
		}
		lastFrame[r.Conn] = r.FrameSeq
		if r.Device != want.device || r.Variant != want.variant.String() || r.Protocol != bus.ProtocolLegacy ||
			r.Conn != want.conn || r.FrameSeq != uint64(want.seq) || !r.Received.Equal(receivedAt(want.seq)) ||
			r.Remote != "127.0.0.1:"+strconv.Itoa(40000+len(want.conn)) || r.Local != "127.0.0.1:9998" ||
			r.Values.Wire() != testReading(want.reading) || r.Numbers.PulseSig != float64(want.reading) {
			t.Fatalf("reading %+v, want %s %v reading %d of %s frame %d", r, want.device, want.variant, want.reading, want.conn, want.seq)
		}
		if m.Subject() != bus.ReadingsSubject(bus.Partition(r.Device, parts), r.Device) {
			t.Fatalf("reading of %s on %s", r.Device, m.Subject())
		}
		if m.Headers().Get(jetstream.MsgIDHeader) != "r:"+strconv.FormatUint(r.RawSeq, 10) || m.Headers().Get(bus.HeaderDevice) != r.Device {
			t.Fatalf("reading headers %v", m.Headers())
		}
	}

	deadLetters := 4*n/10 + len(badHeaders)
	reasons := map[string]int{}
	secrets := secretTexts(append(slices.Clone(keys), stranger))
	for _, m := range streamMsgs(t, js, bus.StreamDeadLetter, deadLetters) {
		h := m.Headers()
		rawSeq, err := strconv.ParseUint(h.Get(bus.HeaderRawSeq), 10, 64)
		if err != nil {
			t.Fatalf("dead letter raw seq: %v", err)
		}
		want := sent[rawSeq]
		reason := h.Get(bus.HeaderReason)
		reasons[reason]++
		if reason != string(want.reason) || m.Subject() != bus.DeadLetterSubject(want.reason) {
			t.Fatalf("RAW %d dead-lettered on %s as %q, want %q", rawSeq, m.Subject(), reason, want.reason)
		}
		if string(m.Data()) != string(want.frame) || h.Get(bus.HeaderConn) != want.conn {
			t.Fatalf("RAW %d: dead letter %q conn %q, want the frame as received", rawSeq, m.Data(), h.Get(bus.HeaderConn))
		}
		if h.Get(jetstream.MsgIDHeader) != "dl:"+strconv.FormatUint(rawSeq, 10) || len(h.Values(jetstream.MsgIDHeader)) != 1 {
			t.Fatalf("RAW %d: dead letter message id %v", rawSeq, h.Values(jetstream.MsgIDHeader))
		}
		if h.Get(bus.HeaderDevice) != want.device {
			t.Fatalf("RAW %d (%s): device header %q, want %q", rawSeq, reason, h.Get(bus.HeaderDevice), want.device)
		}
		errText := h.Get(bus.HeaderError)
		if errText == "" {
			t.Fatalf("RAW %d: dead letter without an error", rawSeq)
		}
		for _, s := range secrets {
			if strings.Contains(errText, s) {
				t.Fatalf("dead letter error %q holds key material", errText)
			}
		}
	}
	if reasons[string(bus.ReasonUnknownDevice)] != n/10 || reasons[string(bus.ReasonInvalid)] != n/10 ||
		reasons[string(bus.ReasonAmbiguous)] != n/10 || reasons[string(bus.ReasonMalformed)] != n/10+len(badHeaders) {
		t.Fatalf("dead letters by reason %v", reasons)
	}
	waitRawDone(t, js)

	// Each connection searched once for its first frame; e-0's unknown and
	// corrupted frames missed the cache and searched; ambiguous frames are
	// never cached, so each searched.
	metrics := []struct {
		name      string
		got, want float64
	}{
		{"frames", testutil.ToFloat64(w.m.frames), float64(len(sent))},
		{"readings pico", testutil.ToFloat64(w.m.readings.WithLabelValues(bus.ProtocolLegacy, "pico")), 2 * n},
		{"readings pseudo", testutil.ToFloat64(w.m.readings.WithLabelValues(bus.ProtocolLegacy, "pseudo")), 2 * n},
		{"dead letters malformed", testutil.ToFloat64(w.m.deadLetters.WithLabelValues(string(bus.ReasonMalformed))), n/10 + float64(len(badHeaders))},
		{"dead letters unknown", testutil.ToFloat64(w.m.deadLetters.WithLabelValues(string(bus.ReasonUnknownDevice))), n / 10},
		{"searches", testutil.ToFloat64(w.m.searches), float64(len(devs)) + 3*n/10},
		{"cache hits", testutil.ToFloat64(w.m.cacheHits), float64(len(devs) * (n - 1))},
		{"cache misses", testutil.ToFloat64(w.m.cacheMisses), 2 * n / 10},
		{"ambiguous", testutil.ToFloat64(w.m.ambiguous), n / 10},
		{"publish errors", testutil.ToFloat64(w.m.publishErrors), 0},
	}
	for _, m := range metrics {
		if m.got != m.want {
			t.Errorf("metric %s = %v, want %v", m.name, m.got, m.want)
		}
	}
	if got := testutil.ToFloat64(w.m.candidates); got < testutil.ToFloat64(w.m.searches)-n/10 {
		t.Errorf("search candidates %v: fewer than the searches that found a key", got)
	}
}

// TestUnidentifiedConnectionSearchedOnce: a connection whose first frame no
// key opens costs one key search, however many frames it sends; another
// connection's device is still found.
func TestUnidentifiedConnectionSearchedOnce(t *testing.T) {
	js := setup(t)
	devs := loadKeys(t)
	stranger := wire.Device{ID: "stranger", Key: [16]byte([]byte("ZZZZZZZZZZZZZZZZ")), IV: devs[0].IV}
	const n = 20
	for i := 1; i <= n; i++ {
		publishRaw(t, js, "intruder", i, wireFrame(stranger, wire.Pico, i))
	}
	publishRaw(t, js, "honest", 1, wireFrame(devs[0], wire.Pico, 1))
	w, _ := runWorker(t, js, devs)
	streamMsgs(t, js, bus.StreamReadings, 1)
	for _, m := range streamMsgs(t, js, bus.StreamDeadLetter, n) {
		if r := m.Headers().Get(bus.HeaderReason); r != string(bus.ReasonUnknownDevice) {
			t.Fatalf("dead letter reason %q", r)
		}
	}
	waitRawDone(t, js)
	if got := testutil.ToFloat64(w.m.searches); got != 2 {
		t.Fatalf("key searches = %v, want 2 (one per connection)", got)
	}
}

// TestWorkerConnectionOfSeveralDevices: a connection that carries frames of
// several devices (the old desktop simulator) gets each one right, in
// order, by falling back to the search when its cached key does not fit.
func TestWorkerConnectionOfSeveralDevices(t *testing.T) {
	js := setup(t)
	devs := loadKeys(t)
	const n = 30
	for i := 1; i <= n; i++ {
		publishRaw(t, js, "desktop", i, wireFrame(devs[i%len(devs)], wire.Pseudo, i))
	}
	w, _ := runWorker(t, js, devs)
	for i, m := range streamMsgs(t, js, bus.StreamReadings, n) {
		r, err := bus.UnmarshalReading(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		// One connection, published in its order: READINGS stores them so.
		if r.FrameSeq != uint64(i+1) {
			t.Fatalf("reading %d is frame %d", i+1, r.FrameSeq)
		}
		if want := devs[int(r.FrameSeq)%len(devs)].ID; r.Device != want || r.Values.PulseSig != fmt.Sprintf("%d.000", r.FrameSeq) {
			t.Fatalf("frame %d: %s reading %s, want %s", r.FrameSeq, r.Device, r.Values.PulseSig, want)
		}
	}
	waitRawDone(t, js)
	if got := testutil.ToFloat64(w.m.cacheMisses); got != n-1 {
		t.Fatalf("%v cache misses, want %d (every frame after the first changes device)", got, n-1)
	}
}

// TestWorkerRedeliveryIsStoredOnce: the same RAW message handled twice (a
// worker that died before acking) gives one reading.
func TestWorkerRedeliveryIsStoredOnce(t *testing.T) {
	js := setup(t)
	devs := loadKeys(t)
	publishRaw(t, js, "c", 1, wireFrame(devs[0], wire.Pico, 1))
	_, stop := runWorker(t, js, devs)
	streamMsgs(t, js, bus.StreamReadings, 1)
	waitRawDone(t, js)
	stop()
	// Rewind the consumer as if the ack had been lost.
	p := bus.Partition("c", parts)
	if err := js.DeleteConsumer(t.Context(), bus.StreamRaw, "decrypt-"+strconv.Itoa(p)); err != nil {
		t.Fatal(err)
	}
	second, _ := runWorker(t, js, devs)
	waitRawDone(t, js)
	if got := testutil.ToFloat64(second.m.readings.WithLabelValues(bus.ProtocolLegacy, "pico")); got != 1 {
		t.Fatalf("second worker published %v readings, want the redelivered one", got)
	}
	s, err := js.Stream(t.Context(), bus.StreamReadings)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 1 {
		t.Fatalf("READINGS holds %d messages, want 1", n)
	}
	streamMsgs(t, js, bus.StreamReadings, 1)
}

// TestTwoWorkersShareTheStream: two workers on the same durable consumers
// (each partition pinned to one of them) give every reading exactly once,
// in order per connection, and leave RAW consumed.
func TestTwoWorkersShareTheStream(t *testing.T) {
	js := setup(t)
	devs := loadKeys(t)
	a, _ := runWorker(t, js, devs)
	b, _ := runWorker(t, js, devs)
	const n = 100
	conns := 8
	for i := 1; i <= n; i++ {
		for c := range conns {
			d := devs[c%len(devs)]
			publishRaw(t, js, fmt.Sprintf("conn-%d", c), i, wireFrame(d, wire.Pico+wire.Variant(c%2), i))
		}
	}
	var rs []bus.KeyedReading
	for _, m := range streamMsgs(t, js, bus.StreamReadings, n*conns) {
		r, err := bus.UnmarshalReading(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, bus.KeyedReading{Reading: r})
	}
	checkOnceInOrder(t, rs)
	waitRawDone(t, js)
	total := testutil.ToFloat64(a.m.frames) + testutil.ToFloat64(b.m.frames)
	if total < n*float64(conns) {
		t.Fatalf("the workers handled %v frames, want at least %d", total, n*conns)
	}
}

// TestNewChecksOptions: a worker needs JetStream and the partition count,
// and two workers can share one metrics registry.
func TestNewChecksOptions(t *testing.T) {
	js := setup(t)
	if _, err := New(nil, Options{Partitions: 1}); err == nil {
		t.Fatal("New without JetStream")
	}
	if _, err := New(js, Options{}); err == nil {
		t.Fatal("New without Partitions")
	}
	reg := prometheus.NewRegistry()
	devs := loadKeys(t)
	for range 2 {
		w, err := New(js, Options{Keys: devs, Partitions: parts, Metrics: reg})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Health(); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "medpipe_decrypt_devices" {
			if got := mf.GetMetric()[0].GetGauge().GetValue(); got != float64(len(devs)) {
				t.Fatalf("devices gauge %v, want %d", got, len(devs))
			}
			return
		}
	}
	t.Fatal("no medpipe_decrypt_devices gauge")
}

// FuzzHandle feeds arbitrary frames and edge headers through the worker's
// handler (JetStream stubbed): it must not panic, and each message becomes
// exactly one valid reading or one dead letter with a known reason, the
// frame as received and the right message id.
func FuzzHandle(f *testing.F) {
	devs := benchDevices(20)
	js := &stubJetStream{}
	w, err := newWorker(js, Options{Keys: devs, Partitions: parts, ConnCacheSize: 64})
	if err != nil {
		f.Fatal(err)
	}
	now := baseTime.Format(time.RFC3339Nano)
	f.Add(wireFrame(devs[3], wire.Pico, 1), "conn", "1", now, "legacy")
	f.Add(wireFrame(devs[4], wire.Pseudo, 2), "conn", "2", now, "")
	f.Add([]byte(strings.ToUpper(string(wireFrame(devs[5], wire.Pico, 3)))), "other", "7", now, "legacy")
	f.Add([]byte("00+11"), "", "", "", "")
	f.Add([]byte("0011223344556677889900aabbccddee+"), "c", "-1", "2026-13-01T00:00:00Z", "v3")
	reasons := map[string]bool{}
	for _, r := range []bus.Reason{bus.ReasonUnknownDevice, bus.ReasonAmbiguous, bus.ReasonMalformed, bus.ReasonInvalid, bus.ReasonRevoked} {
		reasons[string(r)] = true
	}
	var rawSeq uint64
	f.Fuzz(func(t *testing.T, frame []byte, conn, frameSeq, received, protocol string) {
		if protocol == bus.ProtocolV2 {
			return // v2 frames need the high-water mark store: see v2_test.go
		}
		h := nats.Header{}
		for k, v := range map[string]string{bus.HeaderConn: conn, bus.HeaderFrameSeq: frameSeq, bus.HeaderReceived: received, bus.HeaderProtocol: protocol} {
			if v != "" {
				h.Set(k, v)
			}
		}
		rawSeq++
		out, err := handleStub(t.Context(), w, js, &stubMsg{data: frame, header: h, seq: rawSeq})
		if err != nil || len(js.published) != 1 {
			t.Fatalf("handled with error %v, %d messages published", err, len(js.published))
		}
		seq := strconv.FormatUint(rawSeq, 10)
		if strings.HasPrefix(out.Subject, bus.SubjectReadingsPrefix) {
			r, err := bus.UnmarshalReading(out.Data)
			if err != nil {
				t.Fatalf("published an invalid reading: %v", err)
			}
			if _, _, ok := w.ix.Lookup(r.Device); !ok || r.Conn != conn || r.RawSeq != rawSeq || out.Header.Get(jetstream.MsgIDHeader) != "r:"+seq {
				t.Fatalf("reading %+v, headers %v", r, out.Header)
			}
			return
		}
		reason := out.Header.Get(bus.HeaderReason)
		if !reasons[reason] || out.Subject != bus.DeadLetterSubject(bus.Reason(reason)) || string(out.Data) != string(frame) ||
			out.Header.Get(jetstream.MsgIDHeader) != "dl:"+seq || out.Header.Get(bus.HeaderError) == "" {
			t.Fatalf("dead letter on %s, headers %v", out.Subject, out.Header)
		}
	})
}

// TestSharedConnCache: a worker that takes over a connection another worker
// identified opens its frames without a key search.
func TestSharedConnCache(t *testing.T) {
	js := setup(t)
	devs := loadKeys(t)
	conns, err := bus.OpenConnStore(t.Context(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	run := func() (*Worker, func()) {
		w, err := New(js, Options{Keys: devs, Partitions: parts, Conns: conns})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		return w, func() { cancel(); <-done }
	}
	first, stopFirst := run()
	for i := 1; i <= 5; i++ {
		publishRaw(t, js, "shared-conn", i, wireFrame(devs[2], wire.Pseudo, i))
	}
	streamMsgs(t, js, bus.StreamReadings, 5)
	stopFirst()
	if got := testutil.ToFloat64(first.m.searches); got != 1 {
		t.Fatalf("first worker searched %v times, want once", got)
	}
	second, stopSecond := run()
	defer stopSecond()
	for i := 6; i <= 10; i++ {
		publishRaw(t, js, "shared-conn", i, wireFrame(devs[2], wire.Pseudo, i))
	}
	streamMsgs(t, js, bus.StreamReadings, 10)
	if got := testutil.ToFloat64(second.m.searches); got != 0 {
		t.Fatalf("second worker searched %v times, want none", got)
	}
	if got := testutil.ToFloat64(second.m.sharedHits); got != 1 {
		t.Fatalf("second worker shared-cache hits %v, want 1", got)
	}
}
