package e2e

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/bus/registry"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/ingest"
	"github.com/medpipe/medpipe/wire"
)

// liveDevice sends a reading every 10 ms with whatever key it holds now;
// reading i carries i in PulseSig.
type liveDevice struct {
	id   string
	key  atomic.Pointer[wire.LegacyKey]
	sent atomic.Int64
}

// The edge cuts a connection whose first frame fits no key (an unknown or
// revoked device), so the device reconnects, as a real one does.
func (d *liveDevice) run(ctx context.Context, t *testing.T, addr string) {
	var conn net.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for i := 1; ctx.Err() == nil; i++ {
		if conn == nil {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			conn = c
		}
		r := testReading(i)
		if _, err := conn.Write(d.key.Load().Seal(nil, wire.Pico, r.AppendJSON(nil))); err != nil {
			conn.Close()
			conn = nil
		}
		d.sent.Store(int64(i))
		time.Sleep(10 * time.Millisecond)
	}
}

// outcome is what the pipeline made of one frame.
type outcome struct {
	at     time.Time
	device string
	seq    string // PulseSig of a reading
	reason string // dead-letter reason
}

// TestRegistryLiveChanges adds, rotates and revokes devices in the KV
// registry while devices send: each change takes effect within a second and
// the other devices are not disturbed.
func TestRegistryLiveChanges(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var reg *registry.Registry
	// The devices share one address, like a ward behind NAT: the edge's
	// penalty for an address whose connections it cut (the newcomer's and
	// the revoked device's) is off, or it would refuse the others' reconnects.
	noPenalty := func(o *ingest.Options) { o.Penalty = -1 }
	p := startPipelineEdge(t, func(e *bus.Embedded) string { return e.MQTTURL() }, func(js jetstream.JetStream, o *decrypt.Options) {
		var err error
		if reg, err = registry.Open(ctx, js, 1); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"steady", "rotating"} {
			if _, err := reg.Add(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		o.Registry = reg
	}, noPenalty)
	nc, err := nats.Connect(p.server.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var mu sync.Mutex
	var outcomes []outcome
	record := func(o outcome) { mu.Lock(); outcomes = append(outcomes, o); mu.Unlock() }
	if _, err := nc.Subscribe(bus.SubjectReadingsPrefix+">", func(m *nats.Msg) {
		rs, _ := bus.DecodeReadings(m.Data, m.Header)
		for _, r := range rs {
			record(outcome{time.Now(), r.Device, r.Values.PulseSig, ""})
		}
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Subscribe(bus.SubjectDeadLetterPrefix+">", func(m *nats.Msg) {
		record(outcome{time.Now(), m.Header.Get(bus.HeaderDevice), "", m.Header.Get(bus.HeaderReason)})
	}); err != nil {
		t.Fatal(err)
	}

	keyOf := func(id string) *wire.LegacyKey {
		r, _, err := reg.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return wire.NewLegacyKey(r.Device())
	}
	steady, rotating, newcomer := &liveDevice{id: "steady"}, &liveDevice{id: "rotating"}, &liveDevice{id: "newcomer"}
	steady.key.Store(keyOf("steady"))
	rotating.key.Store(keyOf("rotating"))
	unknownKey, _ := wire.NewRandomDevice("newcomer")
	newcomer.key.Store(wire.NewLegacyKey(unknownKey))
	sendCtx, stopSending := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, d := range []*liveDevice{steady, rotating, newcomer} {
		wg.Go(func() { d.run(sendCtx, t, p.edge.Addr().String()) })
	}
	// waitFor returns how long until an outcome after since matches.
	waitFor := func(what string, since time.Time, match func(outcome) bool) time.Duration {
		t.Helper()
		for {
			mu.Lock()
			for _, o := range outcomes {
				if o.at.After(since) && match(o) {
					mu.Unlock()
					return o.at.Sub(since)
				}
			}
			mu.Unlock()
			if time.Since(since) > 5*time.Second {
				t.Fatalf("%s: nothing within 5s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond) // the newcomer's frames are dead letters so far

	// Add: the newcomer's readings flow within a second.
	added, err := reg.Add(ctx, "newcomer")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	newcomer.key.Store(wire.NewLegacyKey(added.Device()))
	d := waitFor("add", at, func(o outcome) bool { return o.device == "newcomer" && o.seq != "" })
	t.Logf("add took effect after %v", d)
	if d > time.Second {
		t.Errorf("add took %v to take effect", d)
	}
	// Rotate: the device switches to its new key; its readings resume within a second.
	rotated, err := reg.Rotate(ctx, "rotating")
	if err != nil {
		t.Fatal(err)
	}
	at = time.Now()
	rotating.key.Store(wire.NewLegacyKey(rotated.Device()))
	d = waitFor("rotate", at.Add(50*time.Millisecond), func(o outcome) bool { return o.device == "rotating" && o.seq != "" })
	t.Logf("rotation took effect after %v", d+50*time.Millisecond)
	if d > time.Second {
		t.Errorf("rotation took %v to take effect", d)
	}
	time.Sleep(500 * time.Millisecond) // the steady device's run before its revocation
	// Revoke: its frames become dead letters within a second.
	if _, err := reg.Revoke(ctx, "steady"); err != nil {
		t.Fatal(err)
	}
	at = time.Now()
	d = waitFor("revoke", at, func(o outcome) bool { return o.device == "steady" && o.reason == string(bus.ReasonRevoked) })
	t.Logf("revocation took effect after %v", d)
	if d > time.Second {
		t.Errorf("revocation took %v to take effect", d)
	}
	time.Sleep(200 * time.Millisecond)
	stopSending()
	wg.Wait()

	// The steady device was not disturbed until it was revoked: its
	// readings form an unbroken run from 1.
	mu.Lock()
	defer mu.Unlock()
	next := 1
	for _, o := range outcomes {
		if o.device == "steady" && o.seq != "" {
			if o.seq != testReading(next)[wire.PulseSig] {
				t.Fatalf("steady: reading %s, want %d: disturbed by another device's change", o.seq, next)
			}
			next++
		}
		if o.device == "steady" && o.reason != "" && o.reason != string(bus.ReasonRevoked) {
			t.Fatalf("steady: dead letter %s before its revocation", o.reason)
		}
	}
	if next < 20 {
		t.Fatalf("steady: only %d readings", next-1)
	}
}
