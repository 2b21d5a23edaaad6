// Package publish is medpipe's MQTT bridge: it reads READINGS and
// republishes every reading into the topic layout today's dashboards
// subscribe to, acknowledging a reading only once the broker has all of
// its MQTT messages.
package publish

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/bus"
)

// MQTTOptions says how to reach the broker.
type MQTTOptions struct {
	// URL is tcp://host:port or ssl://host:port (default tcp://127.0.0.1:1883).
	URL string
	// ClientID identifies the session (default medpipe-publish-<random>).
	ClientID string
	// Username and Password authenticate; the password is never logged.
	Username, Password string
	// TLS configures ssl:// and tls:// connections (nil: system roots).
	TLS *tls.Config
	// ConnectTimeout bounds one connection attempt (default 10 s).
	ConnectTimeout time.Duration
}

// Options configures a Bridge. Zero values take the defaults given.
type Options struct {
	MQTT MQTTOptions
	// Prefix is the first topic level (default "Pico").
	Prefix string
	// QoS of every message (default 1). At QoS 0 a reading is acked once
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
	// every AddressEvery readings after (default 50).
	AddressEvery int
	// Partitions is the partition count in force (see bus.VerifyStreams).
	Partitions int
	// MaxInFlight bounds readings in flight per partition (default 256).
	MaxInFlight int
	// MaxInFlightMessages bounds MQTT messages awaiting the broker's ack
	// over all partitions (default 16384; MQTT packet ids allow 65535).
	MaxInFlightMessages int
	// DrainTimeout bounds in-flight work after cancellation (default 10 s).
	DrainTimeout time.Duration
	// Log receives connection events; nil uses slog.Default().
	Log *slog.Logger
	// Metrics registers the bridge's metrics; nil registers nowhere.
	Metrics prometheus.Registerer
}

// Bridge republishes READINGS to MQTT.
type Bridge struct {
	js     jetstream.JetStream
	o      Options
	log    *slog.Logger
	m      *metrics
	client mqtt.Client
	window chan struct{} // one slot per MQTT message in flight

	connected   atomic.Bool
	epoch       atomic.Uint64 // connection losses so far
	lastConnErr atomic.Int64  // unix nanos of the last connect failure logged

	countsMu  sync.Mutex
	counts    map[string]uint64 // readings seen per device
	delivered bus.RecentSeqs    // READINGS sequences whose MQTT messages the broker has, lately

	store *trackingStore
	// gate is closed from a connection loss until the new connection has
	// delivered everything paho resends: paho reports "connected" before it
	// resends its stored messages, so a publish made then could overtake them.
	gateMu  sync.Mutex
	gate    chan struct{} // closed while publishing is allowed
	cleared atomic.Uint64 // the latest epoch whose resent messages are all acknowledged
}

// New checks the options; it does not connect.
func New(js jetstream.JetStream, o Options) (*Bridge, error) {
	if o.Partitions <= 0 {
		return nil, errors.New("publish: Partitions must be set (see bus.VerifyStreams)")
	}
	if o.MQTT.URL == "" {
		o.MQTT.URL = "tcp://127.0.0.1:1883"
	}
	if o.MQTT.ClientID == "" {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		o.MQTT.ClientID = "medpipe-publish-" + hex.EncodeToString(b)
	}
	if o.MQTT.ConnectTimeout <= 0 {
		o.MQTT.ConnectTimeout = 10 * time.Second
	}
	if o.Prefix == "" {
		o.Prefix = "Pico"
	}
	if o.QoS == 0 && !o.QoSSet {
		o.QoS = 1
	}
	if o.QoS > 2 {
		return nil, fmt.Errorf("publish: QoS %d: want 0, 1 or 2", o.QoS)
	}
	if o.AddressEvery <= 0 {
		o.AddressEvery = 50
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 256
	}
	if o.MaxInFlightMessages <= 0 {
		o.MaxInFlightMessages = 16384
	}
	if o.MaxInFlightMessages > 60000 {
		return nil, fmt.Errorf("publish: MaxInFlightMessages %d exceeds MQTT's packet id space", o.MaxInFlightMessages)
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	b := &Bridge{js: js, o: o, log: o.Log, counts: map[string]uint64{}, delivered: bus.NewRecentSeqs(recentDelivered), window: make(chan struct{}, o.MaxInFlightMessages), store: newTrackingStore(), gate: make(chan struct{})}
	b.m = newMetrics(o.Metrics, &b.connected)
	return b, nil
}

// Health returns nil while the broker is connected.
func (b *Bridge) Health() error {
	if !b.connected.Load() {
		return errors.New("mqtt broker not connected")
	}
	return nil
}

// Run connects to the broker (retrying until ctx ends), republishes
// READINGS until ctx is cancelled, drains and disconnects.
func (b *Bridge) Run(ctx context.Context) error {
	opts := mqtt.NewClientOptions().
		AddBroker(b.o.MQTT.URL).
		SetClientID(b.o.MQTT.ClientID).
		SetUsername(b.o.MQTT.Username).
		SetPassword(b.o.MQTT.Password).
		SetTLSConfig(b.o.MQTT.TLS).
		// A persistent session and an ordered store let paho resend
		// unacknowledged messages, in order, after a reconnect.
		SetCleanSession(false).
		SetStore(b.store).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).
		SetMaxReconnectInterval(2 * time.Second).
		SetConnectTimeout(b.o.MQTT.ConnectTimeout).
		SetKeepAlive(15 * time.Second).
		SetWriteTimeout(10 * time.Second).
		SetConnectionNotificationHandler(func(_ mqtt.Client, n mqtt.ConnectionNotification) {
			f, ok := n.(mqtt.ConnectionNotificationFailed)
			if !ok {
				return
			}
			b.m.connectFailures.Inc()
			// paho retries every second: a line every 10 s is enough.
			if now, last := time.Now().UnixNano(), b.lastConnErr.Load(); now-last >= int64(10*time.Second) && b.lastConnErr.CompareAndSwap(last, now) {
				b.log.Warn("mqtt connect failed; retrying", "broker", bus.RedactURLs(b.o.MQTT.URL), "err", f.Reason)
			}
		}).
		SetOnConnectHandler(func(mqtt.Client) {
			b.connected.Store(true)
			b.log.Info("mqtt connected", "broker", bus.RedactURLs(b.o.MQTT.URL), "client_id", b.o.MQTT.ClientID)
			go b.reopen(ctx, b.epoch.Load())
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			b.gateMu.Lock()
			b.epoch.Add(1)
			select {
			case <-b.gate:
				b.gate = make(chan struct{})
			default:
			}
			b.gateMu.Unlock()
			b.connected.Store(false)
			b.m.reconnects.Inc()
			b.log.Warn("mqtt connection lost; reconnecting", "err", err)
		})
	b.client = mqtt.NewClient(opts)
	tok := b.client.Connect()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("publish: connect to %s: %w", bus.RedactURLs(b.o.MQTT.URL), err)
		}
	case <-ctx.Done():
		b.client.Disconnect(0)
		return nil
	}
	defer b.client.Disconnect(1000)
	return bus.ConsumePartitions(ctx, b.js, bus.ConsumeOptions{
		Stage: "publish", Stream: bus.StreamReadings, Partitions: b.o.Partitions, Filter: bus.ReadingsPartitionFilter,
		MaxInFlight: b.o.MaxInFlight, DrainTimeout: b.o.DrainTimeout, Handle: b.handle, Log: b.log,
	})
}

// seen counts a device's readings and reports whether this one carries the addresses.
func (b *Bridge) seen(device string) bool {
	b.countsMu.Lock()
	defer b.countsMu.Unlock()
	n := b.counts[device]
	b.counts[device] = n + 1
	return n%uint64(b.o.AddressEvery) == 0
}

func (b *Bridge) handle(ctx context.Context, msg jetstream.Msg) (bus.Completion, error) {
	r, err := bus.UnmarshalReading(msg.Data())
	if err != nil {
		// Not a reading: nothing to republish; keep it from blocking the partition.
		b.m.invalid.Inc()
		b.log.Error("READINGS message is not a reading; skipped", "subject", msg.Subject(), "err", err)
		return nil, nil
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
	var msgs []Message
	if b.o.JSONOnly {
		msgs = []Message{JSONMessage(b.o.Prefix, r)}
	} else {
		msgs = Topics(make([]Message, 0, 12), b.o.Prefix, r, b.seen(r.Device), b.o.JSONTopic)
	}
	b.gateMu.Lock()
	gate, epoch := b.gate, b.epoch.Load() // consistent: a loss changes both under gateMu
	b.gateMu.Unlock()
	select {
	case <-gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for range msgs {
		select {
		case b.window <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c := &delivery{b: b, epoch: epoch, tokens: make([]mqtt.Token, len(msgs)), seq: streamSeq}
	for i, m := range msgs {
		c.tokens[i] = b.client.Publish(m.Topic, b.o.QoS, b.o.Retain, m.Payload)
	}
	b.m.readings.Inc()
	b.m.messages.Add(float64(len(msgs)))
	return c, nil
}

// delivery is one reading's MQTT publishes; it completes when the broker
// has all of them.
type delivery struct {
	b      *Bridge
	epoch  uint64
	tokens []mqtt.Token
	seq    uint64 // READINGS stream sequence
}

func (d *delivery) Wait(ctx context.Context) error {
	defer func() {
		for range d.tokens {
			<-d.b.window
		}
	}()
	for _, t := range d.tokens {
		select {
		case <-t.Done():
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := t.Error(); err != nil {
			d.b.m.errors.Inc()
			return fmt.Errorf("publish: mqtt: %w", err)
		}
	}
	if d.b.o.QoS > 0 && d.b.epoch.Load() != d.epoch {
		// The connection was lost meanwhile, and paho completes the tokens of
		// messages it resends before the broker acks them: wait until a new
		// connection has had every resent message acknowledged.
		d.b.m.barriers.Inc()
		for d.b.cleared.Load() <= d.epoch {
			select {
			case <-time.After(20 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	d.b.markDelivered(d.seq)
	return nil
}

// recentDelivered is how many delivered READINGS sequences a bridge
// remembers: a lost ack brings a message back within AckWait, by when a
// 2,000-device fleet at 5 readings/s has delivered 60,000 more. A sequence
// forgotten is published again: a duplicate, never a loss.
const recentDelivered = 1 << 16

// wasDelivered reports whether this process had every MQTT message of the
// READINGS message seq acknowledged by the broker, lately.
func (b *Bridge) wasDelivered(seq uint64) bool {
	b.countsMu.Lock()
	defer b.countsMu.Unlock()
	return b.delivered.Has(seq)
}

func (b *Bridge) markDelivered(seq uint64) {
	b.countsMu.Lock()
	defer b.countsMu.Unlock()
	b.delivered.Add(seq)
}

// reopen lets publishing resume once the connection of the given epoch has
// had everything in paho's store acknowledged.
func (b *Bridge) reopen(ctx context.Context, epoch uint64) {
	select {
	case <-b.store.drained():
	case <-ctx.Done():
		return
	}
	b.gateMu.Lock()
	defer b.gateMu.Unlock()
	if b.epoch.Load() != epoch { // lost again meanwhile: the next connection reopens
		return
	}
	b.cleared.Store(epoch)
	select {
	case <-b.gate:
	default:
		close(b.gate)
	}
}
