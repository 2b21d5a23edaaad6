package ingest

import (
	"bufio"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

var v2Key = wire.NewV2Key(testDev)

func v2Frame(t testing.TB, seq uint64) []byte {
	t.Helper()
	f, err := v2Key.SealData(nil, testDev.ID, seq, [12]byte{byte(seq)}, []byte(`{"time":1,"values":{"Temp":36.6,"TempMcu":23.7,"PulseSig":1.7,"Acel_x":0,"Acel_y":0,"Acel_z":1,"TempMpu":23.4}}`))
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

// TestV2AckAfterStore: every frame is acknowledged, in order, once stored;
// a retransmitted frame is acknowledged again but stored once.
func TestV2AckAfterStore(t *testing.T) {
	h := start(t, Options{})
	c := dial(t, h)
	r := bufio.NewReader(c)
	for seq := uint64(1); seq <= 20; seq++ {
		if _, err := c.Write(v2Frame(t, seq)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Write(v2Frame(t, 7)); err != nil { // a resend after a lost ACK
		t.Fatal(err)
	}
	for want := uint64(1); want <= 20; want++ {
		if f := readReply(t, r); f.Type != wire.V2Ack || f.Seq != want {
			t.Fatalf("reply %+v, want ACK %d", f, want)
		}
	}
	if f := readReply(t, r); f.Type != wire.V2Ack || f.Seq != 7 {
		t.Fatalf("resend: reply %+v", f)
	}
	msgs := rawMessages(t, h.js, 20) // the resend is not stored twice
	for _, m := range msgs {
		if m.Headers().Get(bus.HeaderProtocol) != bus.ProtocolV2 || m.Headers().Get(bus.HeaderDevice) != testDev.ID {
			t.Fatalf("headers %v", m.Headers())
		}
		if m.Subject() != bus.RawSubject(bus.Partition(testDev.ID, parts)) {
			t.Fatalf("subject %s: v2 frames are partitioned by device", m.Subject())
		}
		if _, err := wire.ParseV2(m.Data()); err != nil {
			t.Fatal(err)
		}
	}
	if id := msgs[6].Headers().Get(jetstream.MsgIDHeader); id != testDev.ID+":7" {
		t.Fatalf("message id %q", id)
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
		{"not a DATA frame", func(t *testing.T) []byte { return wire.AppendV2Ack(nil, 1) }, "malformed", wire.V2ErrMalformed},
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
