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
// nothing pending and nothing unacknowledged. The deadline is generous: on
// a busy machine draining is slow, and only a stuck consumer should fail.
func (b *Bus) WaitDrained(t testing.TB, stream, stage string) {
	t.Helper()
	for p := range b.Partitions {
		CheckFor(t, time.Minute, 20*time.Millisecond, func() error {
			c, err := b.JS.Consumer(context.Background(), stream, fmt.Sprintf("%s-%d", stage, p))
			if err != nil {
				return err
			}
			info, err := c.Info(context.Background())
			if err != nil {
				return err
			}
			if info.NumAckPending != 0 || info.NumPending != 0 {
				return fmt.Errorf("%s partition %d: %d unacked, %d pending", stage, p, info.NumAckPending, info.NumPending)
			}
			return nil
		})
	}
}
