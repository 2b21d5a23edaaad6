package decrypt

import (
	"context"
	"encoding/hex"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

const parts = 4

func setup(t *testing.T) jetstream.JetStream {
	t.Helper()
	e, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, MQTTPort: -2, HTTPPort: -2, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	nc, js, err := bus.Connect(t.Context(), bus.ConnectOptions{URLs: e.ClientURL(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if _, err := bus.EnsureStreams(t.Context(), js, bus.StreamOptions{Partitions: parts}); err != nil {
		t.Fatal(err)
	}
	return js
}

// publishRaw stores a frame in RAW as the edge would.
func publishRaw(t *testing.T, js jetstream.JetStream, conn string, seq int, frame []byte) {
	t.Helper()
	h := nats.Header{}
	h.Set(bus.HeaderConn, conn)
	h.Set(bus.HeaderFrameSeq, strconv.Itoa(seq))
	h.Set(bus.HeaderRemote, "127.0.0.1:40000")
	h.Set(bus.HeaderLocal, "127.0.0.1:9998")
	h.Set(bus.HeaderReceived, time.Now().UTC().Format(time.RFC3339Nano))
	h.Set(bus.HeaderProtocol, bus.ProtocolLegacy)
	if _, err := js.PublishMsg(t.Context(), &nats.Msg{Subject: bus.RawSubject(bus.Partition(conn, parts)), Data: frame, Header: h}); err != nil {
		t.Fatal(err)
	}
}

func wireFrame(d wire.Device, v wire.Variant, i int) []byte {
	return []byte(hexFrame(sealReading(d, v, i)))
}

func hexFrame(ct []byte) string {
	s := ""
	for i := 0; i < len(ct); i += 16 {
		if i > 0 {
			s += "+"
		}
		s += hex.EncodeToString(ct[i : i+16])
	}
	return s
}

func runWorker(t *testing.T, js jetstream.JetStream, devs []wire.Device) func() {
	t.Helper()
	w, err := New(js, Options{Keys: devs, Partitions: parts})
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
	return stop
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

func TestWorkerReadingsAndDeadLetters(t *testing.T) {
	js := setup(t)
	devs := loadKeys(t)
	stranger := wire.Device{ID: "stranger", Key: [16]byte([]byte("ZZZZZZZZZZZZZZZZ")), IV: devs[0].IV}
	const n = 50
	// Four connections, both variants; the first also carries unknown-key
	// and malformed frames, which must not disturb its readings.
	for i := 1; i <= n; i++ {
		seq := map[string]int{}
		for c, d := range devs {
			conn := fmt.Sprintf("e-%d", c)
			v := wire.Pico + wire.Variant(c%2)
			publishRaw(t, js, conn, i*3, wireFrame(d, v, i))
			seq[conn] = i * 3
		}
		if i%10 == 0 {
			publishRaw(t, js, "e-0", i*3+1, wireFrame(stranger, wire.Pico, i))
			publishRaw(t, js, "e-0", i*3+2, []byte("not+hex"))
		}
	}
	runWorker(t, js, devs)
	readings := streamMsgs(t, js, bus.StreamReadings, n*len(devs))
	next := map[string]int{}
	for _, m := range readings {
		r, err := bus.UnmarshalReading(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		next[r.Device]++
		if want := fmt.Sprintf("%d.000", next[r.Device]); r.Values.PulseSig != want {
			t.Fatalf("%s: reading %s, want %s (order per device)", r.Device, r.Values.PulseSig, want)
		}
		if m.Subject() != bus.ReadingsSubject(bus.Partition(r.Device, parts), r.Device) || r.Remote == "" || r.RawSeq == 0 || r.Received.IsZero() {
			t.Fatalf("reading %+v on %s", r, m.Subject())
		}
		if m.Headers().Get(jetstream.MsgIDHeader) != "r:"+strconv.FormatUint(r.RawSeq, 10) {
			t.Fatal("reading lacks its message id")
		}
		if want := []string{"pico", "pseudo"}[(int(r.Device[len(r.Device)-1]-'1'))%2]; r.Variant != want {
			t.Fatalf("%s: variant %s, want %s", r.Device, r.Variant, want)
		}
	}
	dls := streamMsgs(t, js, bus.StreamDeadLetter, 2*n/10)
	reasons := map[string]int{}
	for _, m := range dls {
		reasons[m.Headers().Get(bus.HeaderReason)]++
		if m.Headers().Get(bus.HeaderRawSeq) == "" || m.Headers().Get(bus.HeaderConn) != "e-0" {
			t.Fatalf("dead letter headers %v", m.Headers())
		}
	}
	if reasons[string(bus.ReasonUnknownDevice)] != n/10 || reasons[string(bus.ReasonMalformed)] != n/10 {
		t.Fatalf("dead letters by reason %v", reasons)
	}
}

// TestWorkerRedeliveryIsStoredOnce: the same RAW message handled twice (a
// worker that died before acking) gives one reading.
func TestWorkerRedeliveryIsStoredOnce(t *testing.T) {
	js := setup(t)
	devs := loadKeys(t)
	publishRaw(t, js, "c", 1, wireFrame(devs[0], wire.Pico, 1))
	stop := runWorker(t, js, devs)
	streamMsgs(t, js, bus.StreamReadings, 1)
	stop()
	// Rewind the consumer as if the ack had been lost.
	p := bus.Partition("c", parts)
	if err := js.DeleteConsumer(t.Context(), bus.StreamRaw, "decrypt-"+strconv.Itoa(p)); err != nil {
		t.Fatal(err)
	}
	runWorker(t, js, devs)
	time.Sleep(500 * time.Millisecond)
	streamMsgs(t, js, bus.StreamReadings, 1)
}

// TestTwoWorkersShareTheStream: two workers on the same consumers give every
// reading exactly once.
func TestTwoWorkersShareTheStream(t *testing.T) {
	js := setup(t)
	devs := loadKeys(t)
	runWorker(t, js, devs)
	runWorker(t, js, devs)
	const n = 100
	for i := 1; i <= n; i++ {
		for c, d := range devs {
			publishRaw(t, js, fmt.Sprintf("conn-%d", c), i, wireFrame(d, wire.Pico, i))
		}
	}
	readings := streamMsgs(t, js, bus.StreamReadings, n*len(devs))
	seen := map[string]bool{}
	for _, m := range readings {
		r, _ := bus.UnmarshalReading(m.Data())
		key := r.Device + "/" + r.Values.PulseSig
		if seen[key] {
			t.Fatalf("reading %s stored twice", key)
		}
		seen[key] = true
	}
}

// FuzzHandleFrame feeds arbitrary frame bytes through the worker's decode
// and identify path: no panic, and any reading it accepts is valid.
func FuzzHandleFrame(f *testing.F) {
	devs := benchDevices(20)
	w, err := New(nil, Options{Keys: devs, Partitions: 1})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(wireFrame(devs[3], wire.Pico, 1), "conn")
	f.Add([]byte("00+11"), "")
	f.Fuzz(func(t *testing.T, frame []byte, conn string) {
		ct, err := wire.DecodeFrame(nil, frame)
		if err != nil {
			return
		}
		id, _, err := w.identify(context.Background(), &scratch{ct: ct}, conn)
		if err != nil {
			return
		}
		if err := id.Reading.Validate(); err != nil {
			t.Fatalf("accepted invalid reading: %v", err)
		}
		w.cache.put(conn, connDevice{id.Device, id.Variant})
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
