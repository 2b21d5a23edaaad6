package testkit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
)

// Bus is an embedded nats-server with JetStream (and MQTT) for one test,
// with a client connection and medpipe's streams in place.
type Bus struct {
	Server     *bus.Embedded
	JS         jetstream.JetStream
	Partitions int
}

// StartBus starts an embedded nats-server on random loopback ports with a
// JetStream store in a temp dir, connects, and creates the streams with the
// given partition count (0: none created). Everything stops with the test.
func StartBus(t testing.TB, partitions int) *Bus {
	t.Helper()
	e, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, MQTTPort: -1, HTTPPort: -2, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	nc, js, err := bus.Connect(context.Background(), bus.ConnectOptions{URLs: e.ClientURL(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	b := &Bus{Server: e, JS: js}
	if partitions > 0 {
		if b.Partitions, err = bus.ApplyStreams(context.Background(), js, bus.StreamOptions{Partitions: partitions}); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// WaitDrained waits until every partition consumer of stage on stream has
// nothing pending and nothing unacknowledged. It tells stuck from slow: it
// fails only when a partition's backlog did not shrink for drainStall (a
// busy CI machine can take many seconds to drain thousands of messages).
func (b *Bus) WaitDrained(t testing.TB, stream, stage string) {
	t.Helper()
	for p := range b.Partitions {
		last, moved := uint64(0), time.Now()
		for {
			c, err := b.JS.Consumer(context.Background(), stream, fmt.Sprintf("%s-%d", stage, p))
			if err != nil {
				t.Fatal(err)
			}
			info, err := c.Info(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			left := uint64(info.NumAckPending) + info.NumPending
			if left == 0 {
				break
			}
			if left < last || last == 0 {
				moved = time.Now()
			}
			last = left
			if time.Since(moved) > drainStall {
				t.Fatalf("%s partition %d: %d unacked, %d pending, none done in %v", stage, p, info.NumAckPending, info.NumPending, drainStall)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// drainStall is how long WaitDrained lets a backlog stay the same size.
const drainStall = 30 * time.Second
