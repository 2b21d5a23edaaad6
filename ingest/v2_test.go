package ingest

import (
	"bufio"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

var v2Key = wire.NewV2Key(testDev)

// v2Payload is a valid reading's payload.
var v2Payload, _ = wire.AppendV2Payload(nil, &wire.V2Payload{Time: 1, Values: wire.V2Values{Temp: 36.6, TempMcu: 23.7, PulseSig: 1.7, AcelZ: 1, TempMpu: 23.4}})

func v2Frame(t testing.TB, seq uint64) []byte {
	t.Helper()
	f, err := v2Key.SealData(nil, seq, v2Payload)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// readReply reads one edge → device frame.
func readReply(t testing.TB, r *bufio.Reader) wire.V2Frame {
	t.Helper()
	raw, err := wire.ReadV2Frame(r, nil, 1024)
	if err != nil {
		t.Fatalf("reading the edge's reply: %v", err)
	}
	f, err := wire.ParseV2(raw)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// ackAsDecrypt stands in for decrypt's replies in the edge's own tests: it
// acknowledges every v2 frame stored in RAW, with the device's ACK key, on
// the reply subject of the edge that received it (decrypt's real path is
// tested in decrypt and end to end in cmd/medpipe).
func ackAsDecrypt(t testing.TB, nc *nats.Conn, keys map[string]*wire.V2Key) {
	t.Helper()
	ack := func(edge, conn string, data []byte) {
		f, err := wire.ParseV2(data)
		if err != nil {
			return
		}
		k := keys[f.Device]
		if k == nil {
			return
		}
		if _, err := k.Open(nil, &f); err != nil {
			return
		}
		_ = nc.PublishMsg(&nats.Msg{Subject: bus.AckSubject(edge), Data: k.AppendAck(nil, f.Seq, f.Tag()), Header: nats.Header{bus.HeaderConn: {conn}}})
	}
	sub, err := nc.Subscribe(bus.SubjectRawPrefix+">", func(m *nats.Msg) {
		switch m.Header.Get(bus.HeaderProtocol) {
		case bus.ProtocolV2:
			ack(m.Header.Get(bus.HeaderEdge), m.Header.Get(bus.HeaderConn), m.Data)
		case bus.ProtocolBatch:
			fs, err := bus.DecodeRawBatch(m.Data)
			if err != nil {
				return
			}
			for _, f := range fs {
				if f.Protocol == bus.ProtocolV2 {
					ack(m.Header.Get(bus.HeaderEdge), f.Conn, f.Data)
				}
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
}

// TestV2StoreAndRelay: every frame is stored once under an id that holds
// its tag; a byte-identical resend is stored once more, marked as a
// resend, so that decrypt acknowledges it again; a forged frame for the
// same (device, seq) is stored apart and cannot shadow the genuine one;
// decrypt's replies reach the device's connection.
func TestV2StoreAndRelay(t *testing.T) {
	h := start(t, Options{})
	ackAsDecrypt(t, h.js.Conn(), map[string]*wire.V2Key{testDev.ID: v2Key})
	forger := dial(t, h)
	forged := v2Frame(t, 7)
	forged[len(forged)-wire.V2TagLen] ^= 1 // no key: the tag cannot be right
	if _, err := forger.Write(forged); err != nil {
		t.Fatal(err)
	}
	rawMessages(t, h.js, 1)
	c := dial(t, h)
	r := bufio.NewReader(c)
	for seq := uint64(1); seq <= 20; seq++ {
		if _, err := c.Write(v2Frame(t, seq)); err != nil {
			t.Fatal(err)
		}
	}
	got := map[uint64]bool{}
	for range 20 {
		f := readReply(t, r)
		if f.Type != wire.V2Ack || !v2Key.VerifyReply(&f, v2Frame(t, f.Seq)) {
			t.Fatalf("reply %+v does not verify", f)
		}
		got[f.Seq] = true
	}
	if len(got) != 20 {
		t.Fatalf("ACKs for %d frames, want 20", len(got))
	}
	if _, err := c.Write(v2Frame(t, 7)); err != nil { // a resend after a lost ACK
		t.Fatal(err)
	}
	if f := readReply(t, r); f.Type != wire.V2Ack || f.Seq != 7 {
		t.Fatalf("resend: reply %+v", f)
	}
	msgs := rawMessages(t, h.js, 22) // the forgery, 20 frames, the resend's request for an ACK
	resends := 0
	for _, m := range msgs[1:] {
		if m.Headers().Get(bus.HeaderProtocol) != bus.ProtocolV2 || m.Headers().Get(bus.HeaderDevice) != testDev.ID || m.Headers().Get(bus.HeaderEdge) != h.edge.o.EdgeID {
			t.Fatalf("headers %v", m.Headers())
		}
		if m.Subject() != bus.RawSubject(bus.Partition(testDev.ID, parts)) {
			t.Fatalf("subject %s: v2 frames are partitioned by device", m.Subject())
		}
		if m.Headers().Get(bus.HeaderResend) != "" {
			resends++
		}
	}
	if resends != 1 {
		t.Fatalf("%d resend requests, want 1", resends)
	}
	f7, _ := wire.ParseV2(v2Frame(t, 7))
	if id := msgs[7].Headers().Get(jetstream.MsgIDHeader); id != bus.V2MsgID(testDev.ID, 7, f7.Tag()) {
		t.Fatalf("message id %q", id)
	}
	if testutil.ToFloat64(h.edge.m.repliesRelayed) < 21 {
		t.Fatalf("%v replies relayed", testutil.ToFloat64(h.edge.m.repliesRelayed))
	}
}

func TestV2BadFramesCloseCleanly(t *testing.T) {
	tests := []struct {
		name   string
		data   func(t *testing.T) []byte
		reason string
		code   byte
	}{
		{"truncated", func(t *testing.T) []byte { f := v2Frame(t, 1); return f[:len(f)-3] }, "truncated", 0},
		{"oversize", func(t *testing.T) []byte { return []byte{wire.V2Magic, wire.V2Version, wire.V2Data, 0xff, 0xff} }, "too_long", wire.V2ErrTooLarge},
		{"not a DATA frame", func(t *testing.T) []byte { return wire.AppendV2Error(nil, 1, 1, "x") }, "malformed", wire.V2ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t, Options{MaxFrame: 1024})
			c := dial(t, h)
			if _, err := c.Write(tt.data(t)); err != nil {
				t.Fatal(err)
			}
			if tt.code == 0 {
				c.(*net.TCPConn).CloseWrite()
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			r := bufio.NewReader(c)
			if tt.code != 0 {
				if f := readReply(t, r); f.Type != wire.V2Error || f.Code != tt.code {
					t.Fatalf("reply %+v, want ERROR code %d", f, tt.code)
				}
			}
			if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
				t.Fatalf("connection not closed: %v", err)
			}
			waitMetric(t, func() float64 { return testutil.ToFloat64(h.edge.m.connErrors.WithLabelValues(tt.reason)) })
		})
	}
}

// TestLegacyAndV2OnOnePort: both protocols at once on the same listener.
func TestLegacyAndV2OnOnePort(t *testing.T) {
	h := start(t, Options{})
	ackAsDecrypt(t, h.js.Conn(), map[string]*wire.V2Key{testDev.ID: v2Key})
	legacy, v2 := dial(t, h), dial(t, h)
	for i := 1; i <= 10; i++ {
		legacy.Write(frame(i))
		v2.Write(v2Frame(t, uint64(i)))
	}
	r := bufio.NewReader(v2)
	for i := 1; i <= 10; i++ {
		readReply(t, r)
	}
	byProtocol := map[string]int{}
	for _, m := range rawMessages(t, h.js, 20) {
		byProtocol[m.Headers().Get(bus.HeaderProtocol)]++
	}
	if byProtocol[bus.ProtocolLegacy] != 10 || byProtocol[bus.ProtocolV2] != 10 {
		t.Fatalf("frames by protocol %v", byProtocol)
	}
}

func waitMetric(t *testing.T, value func() float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for value() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("metric is %v, want 1", value())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkEdgeFramesV2 is BenchmarkEdgeFrames for v2: frames/s from
// loopback connections into embedded JetStream (file storage), each frame
// read, published and its publish ack followed up (no ACKs: decrypt is not
// running). 100 connections send in turn, as a fleet's do.
func BenchmarkEdgeFramesV2(b *testing.B) {
	h := start(b, Options{MaxPreFramePerIP: -1, AcceptRatePerIP: -1, MaxFrameRate: -1})
	const conns = 100
	cs := make([]net.Conn, conns)
	for i := range cs {
		cs[i] = dial(b, h)
	}
	frames := make([][]byte, 1<<16)
	for i := range frames {
		frames[i] = v2Frame(b, uint64(i+1))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := cs[i%conns].Write(frames[i%len(frames)]); err != nil {
			b.Fatal(err)
		}
	}
	for testutil.ToFloat64(h.edge.m.frames.WithLabelValues(bus.ProtocolV2)) < float64(b.N) {
		time.Sleep(time.Millisecond)
	}
	<-h.js.PublishAsyncComplete()
}
