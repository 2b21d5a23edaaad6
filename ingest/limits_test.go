package ingest

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/bus"
)

// dialFrom connects to the edge from a given loopback source address
// (127.0.0.0/8 is all loopback on Linux), standing in for another device IP.
func dialFrom(t testing.TB, h *harness, src string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", h.edge.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByEdge reports whether the edge closed c within the timeout.
func closedByEdge(c net.Conn, timeout time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false // still open
	}
	return errors.Is(err, io.EOF) || err != nil
}

// TestMaxConnsPerIP: a third connection from one address is refused while
// another address still gets in, and the refusal is counted by bound.
func TestMaxConnsPerIP(t *testing.T) {
	h := start(t, Options{MaxConnsPerIP: 2})
	a1, a2 := dialFrom(t, h, "127.0.0.1"), dialFrom(t, h, "127.0.0.1")
	waitActive(t, h, 2)
	third := dialFrom(t, h, "127.0.0.1")
	if !closedByEdge(third, 5*time.Second) {
		t.Fatal("third connection from 127.0.0.1 not refused")
	}
	other := dialFrom(t, h, "127.0.0.2")
	waitActive(t, h, 3)
	for _, c := range []net.Conn{a1, a2, other} {
		if closedByEdge(c, 100*time.Millisecond) {
			t.Fatalf("connection %v closed", c.LocalAddr())
		}
	}
	if got := testutil.ToFloat64(h.edge.m.rejected.WithLabelValues("max_conns_per_ip")); got != 1 {
		t.Fatalf("rejected{max_conns_per_ip} = %v, want 1", got)
	}
}

func waitActive(t testing.TB, h *harness, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for h.edge.active.Load() != n {
		if time.Now().After(deadline) {
			t.Fatalf("active connections = %d, want %d", h.edge.active.Load(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFrameRateThrottles: a connection sending far above its bound has
// every frame stored, in order, and the frames beyond the burst delayed.
func TestFrameRateThrottles(t *testing.T) {
	const rate, n = 20, 50
	h := start(t, Options{MaxFrameRate: rate})
	c := dial(t, h)
	var all []byte
	for i := range n {
		all = append(all, frame(i)...)
	}
	if _, err := c.Write(all); err != nil {
		t.Fatal(err)
	}
	msgs := rawMessages(t, h.js, n)
	for i, m := range msgs {
		if string(m.Data()) != string(frame(i)) {
			t.Fatalf("frame %d differs", i)
		}
	}
	// The first second's burst passes; nearly all the rest waited.
	if got := testutil.ToFloat64(h.edge.m.throttled); got < n-rate-5 {
		t.Fatalf("throttled frames = %v, want at least %d", got, n-rate-5)
	}
}

// TestFrameBucket checks the token bucket's arithmetic.
func TestFrameBucket(t *testing.T) {
	t0 := time.Unix(0, 0)
	tests := []struct {
		name  string
		rate  float64
		takes []time.Duration // offsets from t0 of each frame
		want  []time.Duration // wait owed before each
	}{
		{"within burst", 2, []time.Duration{0, 0}, []time.Duration{0, 0}},
		{"over burst waits a token's time", 2, []time.Duration{0, 0, 0}, []time.Duration{0, 0, 500 * time.Millisecond}},
		{"refills over time", 2, []time.Duration{0, 0, time.Second}, []time.Duration{0, 0, 0}},
		{"fractional rate bursts one", 0.5, []time.Duration{0, 0}, []time.Duration{0, 2 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newFrameBucket(tt.rate)
			b.last = t0
			for i, off := range tt.takes {
				if got := b.take(t0.Add(off)); (got - tt.want[i]).Abs() > time.Millisecond {
					t.Fatalf("frame %d: wait %v, want %v", i, got, tt.want[i])
				}
			}
		})
	}
	if newFrameBucket(-1).take(t0) != 0 {
		t.Fatal("no bound must never wait")
	}
}

// TestBadFramesCloseConnection: once decrypt has dead-lettered MaxBadFrames
// of a connection's frames, the edge closes that connection and no other;
// replayed frames are not held against it.
func TestBadFramesCloseConnection(t *testing.T) {
	h := start(t, Options{MaxBadFrames: 3})
	bad, good := dial(t, h), dial(t, h)
	for _, c := range []net.Conn{bad, good} {
		if _, err := c.Write(frame(1)); err != nil {
			t.Fatal(err)
		}
	}
	msgs := rawMessages(t, h.js, 2)
	ids := map[string]bool{}
	for _, m := range msgs {
		ids[m.Headers().Get(bus.HeaderConn)] = true
	}
	// Which RAW message is whose: the edge numbers connections in accept order.
	badID := h.edge.o.EdgeID + "-1"
	if !ids[badID] {
		t.Fatalf("no frame from %s among %v", badID, ids)
	}
	nc, err := nats.Connect(h.srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	deadLetter := func(id string, reason bus.Reason) {
		m := nats.NewMsg(bus.SubjectDeadLetterPrefix + string(reason))
		m.Header.Set(bus.HeaderConn, id)
		m.Header.Set(bus.HeaderReason, string(reason))
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		deadLetter(badID, bus.ReasonReplayed)
	}
	deadLetter(badID, bus.ReasonInvalid)
	deadLetter(badID, bus.ReasonTampered)
	deadLetter("otheredge-1", bus.ReasonUnknownDevice) // another edge's connection
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if closedByEdge(bad, 300*time.Millisecond) {
		t.Fatal("closed after 2 bad frames; the bound is 3")
	}
	deadLetter(badID, bus.ReasonInvalid)
	if !closedByEdge(bad, 5*time.Second) {
		t.Fatal("not closed after 3 bad frames")
	}
	if closedByEdge(good, 200*time.Millisecond) {
		t.Fatal("the good connection was closed too")
	}
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(h.edge.m.connErrors.WithLabelValues("bad_frames")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("bad_frames close not counted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := good.Write(frame(2)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		info, err := h.js.Stream(ctx, bus.StreamRaw)
		if err != nil {
			t.Fatal(err)
		}
		if info.CachedInfo().State.Msgs == 3 {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("good connection's next frame not stored")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
