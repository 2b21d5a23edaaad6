package ingest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

const parts = 4

type harness struct {
	srv  *bus.Embedded
	js   jetstream.JetStream
	edge *Edge
	reg  *prometheus.Registry
	stop func() error
}

func start(t testing.TB, o Options) *harness {
	t.Helper()
	ctx := context.Background()
	b := testkit.StartBus(t, parts)
	e, js := b.Server, b.JS
	reg := prometheus.NewRegistry()
	o.Listen, o.Partitions, o.Metrics = "127.0.0.1:0", parts, reg
	edge, err := New(js, o)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- edge.Run(rctx) }()
	var once sync.Once
	var runErr error
	stop := func() error { once.Do(func() { cancel(); runErr = <-done }); return runErr }
	t.Cleanup(func() { _ = stop() })
	return &harness{srv: e, js: js, edge: edge, reg: reg, stop: stop}
}

var testDev = wire.Device{ID: "dev", Key: [16]byte([]byte("1234567890123456")), IV: [16]byte([]byte("AAAAAAAAAAAAAAAA"))}

func frame(i int) []byte {
	r := wire.Reading{fmt.Sprintf("%d.000", i), "1", "1", "1", "1", "1", "1"}
	return wire.NewLegacyKey(testDev).Seal(nil, wire.Pico, r.AppendJSON(nil))
}

// rawMessages reads every message in RAW.
func rawMessages(t testing.TB, js jetstream.JetStream, want int) []jetstream.Msg {
	t.Helper()
	var out []jetstream.Msg
	readRaw(t, js, want, func(m jetstream.Msg) int {
		out = append(out, m)
		return 1
	})
	return out
}

// readRaw reads RAW until take, given each message, has counted want
// (messages, or frames); more is a failure.
func readRaw(t testing.TB, js jetstream.JetStream, want int, take func(jetstream.Msg) int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := js.OrderedConsumer(ctx, bus.StreamRaw, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; n < want; {
		m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("after %d of %d in RAW: %v", n, want, err)
		}
		if n += take(m); n > want {
			t.Fatalf("%d in RAW, want %d", n, want)
		}
	}
	if m, err := c.Next(jetstream.FetchMaxWait(300 * time.Millisecond)); err == nil {
		t.Fatalf("extra RAW message: %q", m.Data())
	}
}

func dial(t testing.TB, h *harness) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", h.edge.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestFramesLandInRaw: concurrent connections, frames byte for byte, with
// headers, per-connection sequence, partition subject and nothing extra.
func TestFramesLandInRaw(t *testing.T) {
	h := start(t, Options{})
	const conns, perConn = 5, 20
	var wg sync.WaitGroup
	for range conns {
		c := dial(t, h)
		wg.Go(func() {
			for i := 1; i <= perConn; i++ {
				if _, err := c.Write(frame(i)); err != nil {
					t.Error(err)
					return
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	wg.Wait()
	msgs := rawMessages(t, h.js, conns*perConn)
	next := map[string]int{}
	for _, m := range msgs {
		hd := m.Headers()
		id := hd.Get(bus.HeaderConn)
		next[id]++
		if got := hd.Get(bus.HeaderFrameSeq); got != strconv.Itoa(next[id]) {
			t.Fatalf("conn %s: frame seq %s, want %d", id, got, next[id])
		}
		if string(m.Data()) != string(frame(next[id])) {
			t.Fatalf("conn %s frame %d differs from what was sent", id, next[id])
		}
		if want := bus.RawSubject(bus.Partition(id, parts)); m.Subject() != want {
			t.Fatalf("subject %s, want %s", m.Subject(), want)
		}
		if hd.Get(bus.HeaderProtocol) != bus.ProtocolLegacy || hd.Get(jetstream.MsgIDHeader) != id+":"+hd.Get(bus.HeaderFrameSeq) {
			t.Fatalf("headers %v", hd)
		}
		if _, err := time.Parse(time.RFC3339Nano, hd.Get(bus.HeaderReceived)); err != nil {
			t.Fatalf("received header: %v", err)
		}
		if !strings.HasPrefix(hd.Get(bus.HeaderRemote), "127.0.0.1:") || hd.Get(bus.HeaderLocal) != h.edge.Addr().String() {
			t.Fatalf("addresses %s %s", hd.Get(bus.HeaderRemote), hd.Get(bus.HeaderLocal))
		}
	}
	if len(next) != conns {
		t.Fatalf("%d connection ids, want %d", len(next), conns)
	}
}

func TestFraming(t *testing.T) {
	tests := []struct {
		name   string
		writes [][]byte
		want   []string
	}{
		{"two frames in one write", [][]byte{append(frame(1), frame(2)...)}, []string{string(frame(1)), string(frame(2))}},
		{"split inside a block", [][]byte{frame(3)[:40], frame(3)[40:]}, []string{string(frame(3))}},
		{"frame then silence", [][]byte{frame(4)}, []string{string(frame(4))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t, Options{})
			c := dial(t, h)
			for _, w := range tt.writes {
				if _, err := c.Write(w); err != nil {
					t.Fatal(err)
				}
				time.Sleep(30 * time.Millisecond) // longer than the idle gap
			}
			msgs := rawMessages(t, h.js, len(tt.want))
			for i, m := range msgs {
				if string(m.Data()) != tt.want[i] {
					t.Fatalf("frame %d: %q", i, m.Data())
				}
			}
		})
	}
}

// TestBadInputClosesOnlyThatConnection.
func TestBadInputClosesOnlyThatConnection(t *testing.T) {
	short := 300 * time.Millisecond
	tests := []struct {
		name, reason string
		data         []byte
		opts         Options
	}{
		{"non-hex", "not_hex", []byte("0z" + strings.Repeat("0", 40)), Options{}},
		{"neither protocol", "unknown_protocol", []byte("{\"Temp\":1}"), Options{}},
		{"over-long", "too_long", []byte(strings.Repeat(strings.Repeat("a", 32)+"+", 40)), Options{}},
		{"plus then close", "truncated", append(frame(1)[:32], '+'), Options{}},
		{"half a block, then silence", "frame_timeout", frame(1)[:10], Options{FrameTimeout: short}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.MaxFrame = 1024
			h := start(t, tt.opts)
			good := dial(t, h)
			bad := dial(t, h)
			if _, err := bad.Write(tt.data); err != nil {
				t.Fatal(err)
			}
			if tt.reason == "truncated" {
				bad.(*net.TCPConn).CloseWrite()
			}
			bad.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := bad.Read(make([]byte, 1)); err == nil || isTimeout(err) {
				t.Fatalf("bad connection not closed by the edge: %v", err)
			}
			if _, err := good.Write(frame(7)); err != nil {
				t.Fatal(err)
			}
			msgs := rawMessages(t, h.js, 1)
			if string(msgs[0].Data()) != string(frame(7)) {
				t.Fatal("good connection's frame lost")
			}
			if got := testutil.ToFloat64(h.edge.m.connErrors.WithLabelValues(tt.reason)); got != 1 {
				t.Fatalf("connection_errors_total{reason=%s} = %v", tt.reason, got)
			}
		})
	}
}

// TestIdleConnectionClosed: a connection silent after its first frame is
// closed after IdleTimeout while a device sending every 50 ms stays connected.
func TestIdleConnectionClosed(t *testing.T) {
	h := start(t, Options{IdleTimeout: 300 * time.Millisecond})
	busy, silent := dial(t, h), dial(t, h)
	if _, err := silent.Write(frame(0)); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	sent := make(chan int, 1)
	go func() {
		n := 0
		defer func() { sent <- n }()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			n++
			if _, err := busy.Write(frame(n)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := silent.Read(make([]byte, 1))
	if err == nil || isTimeout(err) {
		t.Fatalf("silent connection not closed: %v", err)
	}
	time.Sleep(200 * time.Millisecond) // the busy device sends on
	if got := testutil.ToFloat64(h.edge.m.connErrors.WithLabelValues("idle")); got != 1 {
		t.Fatalf("connection_errors_total{reason=idle} = %v, want 1", got)
	}
	close(done)
	n := <-sent + 1
	for _, m := range rawMessages(t, h.js, n) {
		if m.Headers().Get(bus.HeaderConn) == "" {
			t.Fatal("frame without a connection id")
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestMaxConns(t *testing.T) {
	h := start(t, Options{MaxConns: 2})
	a, b := dial(t, h), dial(t, h)
	a.Write(frame(1))
	b.Write(frame(1))
	rawMessages(t, h.js, 2) // both are being served
	c := dial(t, h)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("third connection not closed: %v", err)
	}
	if got := testutil.ToFloat64(h.edge.m.rejected.WithLabelValues("max_conns")); got != 1 {
		t.Fatalf("rejected = %v", got)
	}
}

// TestShutdownDrains: frames written before the cancel are in RAW when Run returns.
// rawBatches is the --raw-batch values the drain tests run with: single
// frames, and batches.
var rawBatches = []int{1, DefaultRawBatch}

func TestShutdownDrains(t *testing.T) {
	for _, batch := range rawBatches {
		t.Run("raw-batch="+strconv.Itoa(batch), func(t *testing.T) {
			h := start(t, Options{RawBatch: batch})
			c := dial(t, h)
			var all []byte
			for i := 1; i <= 200; i++ {
				all = append(all, frame(i)...)
			}
			if _, err := c.Write(all); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
			if err := h.stop(); err != nil {
				t.Fatal(err)
			}
			if fs := rawFrames(t, h.js, 200); fs[199].Seq != 200 {
				t.Fatalf("last frame %d, want 200", fs[199].Seq)
			}
		})
	}
}

// TestShutdownWhileDeviceKeepsSending: a device that never pauses cannot
// hold shutdown open past DrainTimeout.
func TestShutdownWhileDeviceKeepsSending(t *testing.T) {
	h := start(t, Options{DrainTimeout: time.Second})
	c := dial(t, h)
	var batch []byte
	for i := 1; i <= 50; i++ {
		batch = append(batch, frame(i)...)
	}
	writing := make(chan struct{})
	go func() {
		defer close(writing)
		for {
			c.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := c.Write(batch); err != nil {
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	stopped := make(chan error, 1)
	go func() { stopped <- h.stop() }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return with a device still sending")
	}
	c.Close()
	<-writing
}

// TestDrainBoundedWithoutJetStream: with the NATS server gone, Run gives up
// on unacknowledged frames after DrainTimeout and says so.
func TestDrainBoundedWithoutJetStream(t *testing.T) {
	for _, batch := range rawBatches {
		t.Run("raw-batch="+strconv.Itoa(batch), func(t *testing.T) { testDrainBoundedWithoutJetStream(t, batch) })
	}
}

func testDrainBoundedWithoutJetStream(t *testing.T, batch int) {
	h := start(t, Options{DrainTimeout: time.Second, RawBatch: batch})
	c := dial(t, h)
	if _, err := c.Write(frame(1)); err != nil {
		t.Fatal(err)
	}
	rawMessages(t, h.js, 1)
	if err := h.edge.Health(); err != nil {
		t.Fatalf("health before the outage: %v", err)
	}
	h.srv.Shutdown()
	for i := 2; i <= 5; i++ {
		if _, err := c.Write(frame(i)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(30 * time.Millisecond) // one frame per write, past the idle gap
	}
	testkit.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if n := testutil.ToFloat64(h.edge.m.frames.WithLabelValues(bus.ProtocolLegacy)); n != 5 || h.edge.Health() == nil {
			return fmt.Errorf("%v frames read, health %v: want 5 and the edge unhealthy", n, h.edge.Health())
		}
		return nil
	})
	stopped := make(chan error, 1)
	go func() { stopped <- h.stop() }()
	select {
	case err := <-stopped:
		if err == nil || !strings.Contains(err.Error(), "unconfirmed") {
			t.Fatalf("Run returned %v, want a drain error counting unconfirmed frames", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within the drain timeout")
	}
}

func TestBusyAddress(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = New(nil, Options{Listen: l.Addr().String(), Partitions: 1})
	if err == nil || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Fatalf("got %v, want an error naming %s", err, l.Addr())
	}
}

// BenchmarkEdgeFrames measures frames/s from one loopback connection into
// embedded JetStream (file storage).
func BenchmarkEdgeFrames(b *testing.B) {
	h := start(b, Options{})
	c := dial(b, h)
	f := frame(1)
	batch := make([]byte, 0, len(f)*100)
	for range 100 {
		batch = append(batch, f...)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(f)))
	b.ResetTimer()
	for i := 0; i < b.N; i += 100 {
		if _, err := c.Write(batch); err != nil {
			b.Fatal(err)
		}
	}
	want := float64((b.N + 99) / 100 * 100)
	for testutil.ToFloat64(h.edge.m.frames.WithLabelValues(bus.ProtocolLegacy)) < want {
		time.Sleep(time.Millisecond)
	}
	<-h.js.PublishAsyncComplete()
}

// BenchmarkReplyWrites is the cost per v2 reply (an ACK's 30-odd bytes)
// written to a device's loopback TCP connection: each with its own write,
// as every ACK was before, and in bursts of 8 queued and written at once,
// as relayReplies now does when decrypt's ACKs for a connection come
// together (a backlog, an outbox resent after a reconnect).
func BenchmarkReplyWrites(b *testing.B) {
	ack := wire.NewV2Key(testDev).AppendAck(nil, 1, make([]byte, wire.V2TagLen))
	for _, burst := range []int{1, 8} {
		b.Run(fmt.Sprintf("burst-%d", burst), func(b *testing.B) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			go func() {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				buf := make([]byte, 64<<10)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
			nc, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			cn := &conn{Conn: nc}
			b.ReportAllocs()
			b.SetBytes(int64(len(ack)))
			for i := 0; b.Loop(); i++ {
				if burst == 1 {
					if !cn.writeReply(ack) {
						b.Fatal("write failed")
					}
					continue
				}
				cn.queueReply(ack)
				if i%burst == burst-1 && cn.flushReplies() != burst {
					b.Fatal("write failed")
				}
			}
		})
	}
}
