// Package publish is medpipe's output stage: it reads READINGS and hands
// every reading to a sink (see package sink), acknowledging a reading only
// once the sink has it. MQTTSink, the default, republishes into the topic
// layout today's dashboards subscribe to; a reading is the broker's once
// it has all of its MQTT messages.
package publish

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/sink"
)

// Options configures a Bridge. Zero values take the defaults given.
type Options struct {
	// Sink receives the readings. Nil: an MQTTSink built from the MQTT
	// fields below, with a persistent session.
	Sink sink.Sink
	MQTT MQTTOptions
	// Prefix is the first topic level (default DefaultPrefix).
	Prefix string
	// QoS of every message (default DefaultQoS). At QoS 0 a reading is acked once
	// handed to the connection, so a broker failure can lose it.
	QoS byte
	// QoSSet marks QoS as given, so that 0 is not taken for "default".
	QoSSet bool
	// Retain sets the retained flag.
	Retain bool
	// JSONTopic also publishes each reading as JSON on <prefix>/<id>/reading.
	JSONTopic bool
	// JSONOnly publishes only that JSON message: one MQTT message per
	// reading instead of seven or more.
	JSONOnly bool
	// AddressEvery publishes a device's addresses on its first reading and
	// every AddressEvery readings after (default DefaultAddressEvery).
	AddressEvery int
	// MaxInFlightMessages bounds MQTT messages awaiting the broker's ack
	// over all partitions (default DefaultMaxInFlightMessages).
	MaxInFlightMessages int

	// Partitions is the partition count in force (see bus.VerifyStreams).
	Partitions int
	// MaxInFlight bounds readings in flight per partition (default DefaultMaxInFlight).
	MaxInFlight int
	// DrainTimeout bounds in-flight work after cancellation (default 10 s).
	DrainTimeout time.Duration
	// Log receives connection events; nil uses slog.Default().
	Log *slog.Logger
	// Metrics registers the bridge's metrics; nil registers nowhere.
	Metrics prometheus.Registerer
}

// Bridge feeds READINGS to a sink, acknowledging a READINGS message only
// once the sink has acknowledged its reading.
type Bridge struct {
	js  jetstream.JetStream
	o   Options
	log *slog.Logger
	m   *metrics

	mu        sync.Mutex
	delivered bus.RecentSeqs // READINGS sequences the sink has acknowledged, lately
}

// New checks the options; it does not connect.
func New(js jetstream.JetStream, o Options) (*Bridge, error) {
	if o.Partitions <= 0 {
		return nil, errors.New("publish: Partitions must be set (see bus.VerifyStreams)")
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Sink == nil {
		s, err := NewMQTTSink(MQTTSinkOptions{
			MQTT: o.MQTT, Prefix: o.Prefix, QoS: o.QoS, QoSSet: o.QoSSet, Retain: o.Retain, JSONTopic: o.JSONTopic, JSONOnly: o.JSONOnly,
			AddressEvery: o.AddressEvery, MaxInFlightMessages: o.MaxInFlightMessages, Session: true, Log: o.Log, Metrics: o.Metrics,
		})
		if err != nil {
			return nil, err
		}
		o.Sink = s
	}
	return &Bridge{js: js, o: o, log: o.Log, m: newMetrics(o.Metrics), delivered: bus.NewRecentSeqs(recentDelivered)}, nil
}

// Health is the sink's (nil when it cannot tell).
func (b *Bridge) Health() error {
	if c, ok := b.o.Sink.(sink.Checker); ok {
		return c.Health()
	}
	return nil
}

// Run connects the sink (retrying until ctx ends, for sinks that can),
// feeds it READINGS until ctx is cancelled, drains and closes it.
func (b *Bridge) Run(ctx context.Context) error {
	if err := b.o.Sink.Connect(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer b.o.Sink.Close(context.Background())
	return bus.ConsumePartitions(ctx, b.js, bus.ConsumeOptions{
		Stage: "publish", Stream: bus.StreamReadings, Partitions: b.o.Partitions, Filter: bus.ReadingsPartitionFilter,
		MaxInFlight: b.o.MaxInFlight, DrainTimeout: b.o.DrainTimeout, Handle: b.handle, Log: b.log,
		Latency: b.m.latency,
	})
}

func (b *Bridge) handle(ctx context.Context, msg jetstream.Msg) (bus.Completion, error) {
	keyed, err := bus.DecodeReadings(msg.Data(), msg.Headers())
	if err != nil {
		// Not a reading, or a batch with readings that are not: nothing to
		// republish of those; keep them from blocking the partition.
		b.m.invalid.Inc()
		b.log.Error("READINGS message is not a reading, in part or whole; what is not was skipped", "subject", msg.Subject(), "readings", len(keyed), "err", err)
		if len(keyed) == 0 {
			return nil, nil
		}
	}
	rs := make([]*bus.Reading, len(keyed))
	for i, k := range keyed {
		rs[i] = k.Reading
	}
	var streamSeq uint64
	if meta, err := msg.Metadata(); err == nil {
		streamSeq = meta.Sequence.Stream
		// A redelivery (an ack lost or late) of a reading this process
		// delivered itself, moments ago: skip it. Only the exact sequence
		// counts: a message lost on its way here is redelivered after newer
		// ones, and must not be taken for delivered.
		if meta.NumDelivered > 1 && b.wasDelivered(streamSeq) {
			b.m.redeliveriesSkipped.Inc()
			return nil, nil
		}
	}
	ack, err := b.o.Sink.WriteBatch(ctx, rs)
	if err != nil {
		return nil, err
	}
	return &completion{b: b, ack: ack, seq: streamSeq, readings: rs}, nil
}

// completion is one READINGS message's sink acknowledgement.
type completion struct {
	b        *Bridge
	ack      sink.Ack
	seq      uint64         // READINGS stream sequence
	readings []*bus.Reading // its readings, for the end-to-end latency
}

func (c *completion) Wait(ctx context.Context) error {
	if err := c.ack.Wait(ctx); err != nil {
		if ctx.Err() == nil {
			c.b.m.sinkErrors.Inc()
		}
		return err
	}
	c.b.markDelivered(c.seq)
	now := time.Now()
	for _, r := range c.readings {
		if !r.Received.IsZero() { // when the edge read the reading's frame
			c.b.m.endToEnd.Observe(now.Sub(r.Received).Seconds())
		}
	}
	return nil
}

// recentDelivered is how many delivered READINGS sequences a bridge
// remembers: a lost ack brings a message back within AckWait, by when a
// 2,000-device fleet at 5 readings/s has delivered 60,000 more. A sequence
// forgotten is published again: a duplicate, never a loss.
const recentDelivered = 1 << 16

// wasDelivered reports whether this process had every MQTT message of the
// READINGS message seq acknowledged by the sink, lately.
func (b *Bridge) wasDelivered(seq uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.delivered.Has(seq)
}

func (b *Bridge) markDelivered(seq uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.delivered.Add(seq)
}
