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
	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/mqttconn"
	"github.com/medpipe/medpipe/sink"
)

// MQTTOptions says how to reach the broker.
type MQTTOptions struct {
	// URL is tcp://host:port or ssl://host:port (default DefaultMQTTURL).
	URL string
	// ClientID identifies the session (default <ClientIDPrefix><random>).
	ClientID string
	// Username and Password authenticate; the password is never logged.
	Username, Password string
	// TLS configures ssl:// and tls:// connections (nil: system roots, TLS 1.2 or later).
	TLS *tls.Config
	// ConnectTimeout bounds one connection attempt (default 10 s).
	ConnectTimeout time.Duration
}

// MQTTSinkOptions configures an MQTTSink. Zero values take the defaults given.
type MQTTSinkOptions struct {
	MQTT MQTTOptions
	// Prefix is the topics' first levels (default DefaultPrefix).
	Prefix string
	// QoS of every message (default DefaultQoS unless QoSSet). At QoS 0 a reading is
	// acknowledged once handed to the connection, so a broker failure can lose it.
	QoS    byte
	QoSSet bool
	// Retain sets the retained flag.
	Retain bool
	// JSONTopic also publishes each reading as JSON on <prefix>/<id>/reading;
	// JSONOnly publishes only that message (one per reading instead of 7+).
	JSONTopic, JSONOnly bool
	// AddressEvery publishes a device's addresses on its first reading and
	// every AddressEvery after (default DefaultAddressEvery; -1: never).
	AddressEvery int
	// MaxInFlightMessages bounds messages awaiting the broker's ack
	// (default DefaultMaxInFlightMessages).
	MaxInFlightMessages int
	// Session keeps a persistent session whose unacknowledged messages paho
	// resends, in order, after a reconnect, and retries the first connection
	// until Connect's context ends (publish). Without it the session is
	// clean and Connect fails after ConnectTimeout (replay).
	Session bool
	// ClientIDPrefix names generated client ids (default "medpipe-publish-").
	ClientIDPrefix string
	// Log receives connection events; nil uses slog.Default().
	Log *slog.Logger
	// Metrics registers the sink's metrics (medpipe_publish_*); nil registers nowhere.
	Metrics prometheus.Registerer
}

// MQTTSink publishes readings in the dashboards' topic layout (see Topics).
// A write's acknowledgement completes when the broker has every message of
// its readings.
type MQTTSink struct {
	o      MQTTSinkOptions
	log    *slog.Logger
	m      *mqttMetrics
	client mqtt.Client
	window chan struct{} // one slot per MQTT message in flight
	// windowMu makes taking a write's slots one step: two writes (two
	// partitions' batches) each holding part of the window and waiting
	// for the rest would wait for ever.
	windowMu sync.Mutex

	connected   atomic.Bool
	epoch       atomic.Uint64 // connection losses so far
	lastConnErr atomic.Int64  // unix nanos of the last connect failure logged

	countsMu sync.Mutex
	counts   map[string]uint64 // readings seen per device
	statuses map[string]string // the sensor status last published per v2 device

	store *trackingStore
	// gate is closed from a connection loss until the new connection has
	// delivered everything paho resends: paho reports "connected" before it
	// resends its stored messages, so a publish made then could overtake them.
	gateMu  sync.Mutex
	gate    chan struct{} // closed while publishing is allowed
	cleared atomic.Uint64 // the latest epoch whose resent messages are all acknowledged
	stop    context.CancelFunc
}

var _ sink.Sink = (*MQTTSink)(nil)

// NewMQTTSink checks the options; Connect connects.
func NewMQTTSink(o MQTTSinkOptions) (*MQTTSink, error) {
	if o.MQTT.URL == "" {
		o.MQTT.URL = DefaultMQTTURL
	}
	if o.ClientIDPrefix == "" {
		o.ClientIDPrefix = "medpipe-publish-"
	}
	if o.MQTT.ClientID == "" {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		o.MQTT.ClientID = o.ClientIDPrefix + hex.EncodeToString(b)
	}
	if o.MQTT.ConnectTimeout <= 0 {
		o.MQTT.ConnectTimeout = 10 * time.Second
	}
	if o.MQTT.TLS == nil {
		o.MQTT.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.QoS == 0 && !o.QoSSet {
		o.QoS = DefaultQoS
	}
	if o.QoS > 2 {
		return nil, fmt.Errorf("publish: QoS %d: want 0, 1 or 2", o.QoS)
	}
	if o.AddressEvery == 0 {
		o.AddressEvery = DefaultAddressEvery
	}
	if o.MaxInFlightMessages <= 0 {
		o.MaxInFlightMessages = DefaultMaxInFlightMessages
	}
	if o.MaxInFlightMessages > 60000 {
		return nil, fmt.Errorf("publish: MaxInFlightMessages %d exceeds MQTT's packet id space", o.MaxInFlightMessages)
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	s := &MQTTSink{o: o, log: o.Log, counts: map[string]uint64{}, statuses: map[string]string{}, window: make(chan struct{}, o.MaxInFlightMessages), store: newTrackingStore(), gate: make(chan struct{})}
	s.m = newMQTTMetrics(o.Metrics, &s.connected)
	return s, nil
}

// Health returns nil while the broker is connected.
func (s *MQTTSink) Health() error {
	if !s.connected.Load() {
		return errors.New("mqtt broker not connected")
	}
	return nil
}

// Connect connects to the broker: with Session, retrying until ctx ends.
func (s *MQTTSink) Connect(ctx context.Context) error {
	// Reopening after a reconnect runs until Close.
	life, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stop = stop
	opts := mqtt.NewClientOptions().
		AddBroker(s.o.MQTT.URL).
		SetClientID(s.o.MQTT.ClientID).
		SetUsername(s.o.MQTT.Username).
		SetPassword(s.o.MQTT.Password).
		SetTLSConfig(s.o.MQTT.TLS.Clone()).
		// Reads buffered and writes coalesced: a system call per packet
		// was the stage's largest cost at QoS 1.
		SetCustomOpenConnectionFn(mqttconn.Open).
		SetCleanSession(!s.o.Session).
		SetOrderMatters(true).
		SetStore(s.store).
		SetAutoReconnect(true).
		SetConnectRetry(s.o.Session).
		SetConnectRetryInterval(time.Second).
		SetMaxReconnectInterval(2 * time.Second).
		SetConnectTimeout(s.o.MQTT.ConnectTimeout).
		SetKeepAlive(15 * time.Second).
		SetWriteTimeout(10 * time.Second).
		SetConnectionNotificationHandler(func(_ mqtt.Client, n mqtt.ConnectionNotification) {
			f, ok := n.(mqtt.ConnectionNotificationFailed)
			if !ok {
				return
			}
			s.m.connectFailures.Inc()
			// paho retries every second: a line every 10 s is enough.
			if now, last := time.Now().UnixNano(), s.lastConnErr.Load(); now-last >= int64(10*time.Second) && s.lastConnErr.CompareAndSwap(last, now) {
				s.log.Warn("mqtt connect failed; retrying", "broker", bus.RedactURLs(s.o.MQTT.URL), "err", f.Reason)
			}
		}).
		SetOnConnectHandler(func(mqtt.Client) {
			s.connected.Store(true)
			s.log.Info("mqtt connected", "broker", bus.RedactURLs(s.o.MQTT.URL), "client_id", s.o.MQTT.ClientID)
			go s.reopen(life, s.epoch.Load())
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			s.gateMu.Lock()
			s.epoch.Add(1)
			select {
			case <-s.gate:
				s.gate = make(chan struct{})
			default:
			}
			s.gateMu.Unlock()
			s.connected.Store(false)
			s.m.reconnects.Inc()
			s.log.Warn("mqtt connection lost; reconnecting", "err", err)
		})
	s.client = mqtt.NewClient(opts)
	tok := s.client.Connect()
	var timeout <-chan time.Time
	if !s.o.Session {
		timeout = time.After(s.o.MQTT.ConnectTimeout)
	}
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			s.client.Disconnect(0)
			return fmt.Errorf("publish: connect to %s: %w", bus.RedactURLs(s.o.MQTT.URL), err)
		}
		return nil
	case <-timeout:
		s.client.Disconnect(0)
		return fmt.Errorf("publish: connect to %s: timed out after %v", bus.RedactURLs(s.o.MQTT.URL), s.o.MQTT.ConnectTimeout)
	case <-ctx.Done():
		s.client.Disconnect(0)
		return ctx.Err()
	}
}

// seen counts a device's readings and reports whether this one carries the
// addresses, and whether it carries status (the device's sensor status,
// nil when it has none) because it changed or on the addresses' cadence: a
// retained status needs no more, and a reading a second would otherwise
// add a message a second per device.
func (s *MQTTSink) seen(device string, status []byte) (addresses, withStatus bool) {
	s.countsMu.Lock()
	defer s.countsMu.Unlock()
	n := s.counts[device]
	s.counts[device] = n + 1
	cadence := n == 0 || s.o.AddressEvery > 0 && n%uint64(s.o.AddressEvery) == 0
	if status != nil {
		if last, ok := s.statuses[device]; !ok || last != string(status) || cadence {
			s.statuses[device] = string(status)
			withStatus = true
		}
	}
	return s.o.AddressEvery > 0 && cadence, withStatus
}

// WriteBatch publishes the readings' messages once the connection has
// caught up after a loss and there is room in the window.
func (s *MQTTSink) WriteBatch(ctx context.Context, batch []*bus.Reading) (sink.Ack, error) {
	var msgs []Message
	for _, r := range batch {
		if s.o.JSONOnly {
			msgs = append(msgs, JSONMessage(s.o.Prefix, r))
		} else {
			status, ok := StatusMessage(s.o.Prefix, r)
			addresses, withStatus := s.seen(r.Device, status.Payload)
			if ok && withStatus {
				// Before the values: a dashboard learns why a value is null
				// before the null.
				msgs = append(msgs, status)
			}
			msgs = Topics(msgs, s.o.Prefix, r, addresses, s.o.JSONTopic)
		}
	}
	s.gateMu.Lock()
	gate, epoch := s.gate, s.epoch.Load() // consistent: a loss changes both under gateMu
	s.gateMu.Unlock()
	select {
	case <-gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	// A write of more messages than the window holds (a READINGS batch of
	// many readings, a small window) takes the whole window: it is alone
	// in flight, and may exceed the bound by what it is over.
	slots := min(len(msgs), cap(s.window))
	s.windowMu.Lock()
	for i := range slots {
		select {
		case s.window <- struct{}{}:
		case <-ctx.Done():
			for range i {
				<-s.window
			}
			s.windowMu.Unlock()
			return nil, ctx.Err()
		}
	}
	s.windowMu.Unlock()
	d := &delivery{s: s, epoch: epoch, tokens: make([]mqtt.Token, len(msgs)), slots: slots}
	for i, m := range msgs {
		d.tokens[i] = s.client.Publish(m.Topic, s.o.QoS, s.o.Retain || m.Retain, m.Payload)
	}
	s.m.readings.Add(float64(len(batch)))
	s.m.messages.Add(float64(len(msgs)))
	return d, nil
}

// Close disconnects, giving in-flight messages a second.
func (s *MQTTSink) Close(context.Context) error {
	if s.stop != nil {
		s.stop()
	}
	if s.client != nil {
		s.client.Disconnect(1000)
	}
	return nil
}

// delivery is one batch's MQTT publishes; it completes when the broker
// has all of them.
type delivery struct {
	s      *MQTTSink
	epoch  uint64
	tokens []mqtt.Token
	slots  int // of the window, freed once the write is done
}

func (d *delivery) Wait(ctx context.Context) error {
	defer func() {
		for range d.slots {
			<-d.s.window
		}
	}()
	for _, t := range d.tokens {
		select {
		case <-t.Done():
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := t.Error(); err != nil {
			d.s.m.errors.Inc()
			return fmt.Errorf("publish: mqtt: %w", err)
		}
	}
	if d.s.o.QoS > 0 && d.s.epoch.Load() != d.epoch {
		// The connection was lost meanwhile, and paho completes the tokens of
		// messages it resends before the broker acks them: wait until a new
		// connection has had every resent message acknowledged.
		d.s.m.barriers.Inc()
		for d.s.cleared.Load() <= d.epoch {
			select {
			case <-time.After(20 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return nil
}

// reopen lets publishing resume once the connection of the given epoch has
// had everything in paho's store acknowledged.
func (s *MQTTSink) reopen(ctx context.Context, epoch uint64) {
	select {
	case <-s.store.drained():
	case <-ctx.Done():
		return
	}
	s.gateMu.Lock()
	defer s.gateMu.Unlock()
	if s.epoch.Load() != epoch { // lost again meanwhile: the next connection reopens
		return
	}
	s.cleared.Store(epoch)
	select {
	case <-s.gate:
	default:
		close(s.gate)
	}
}
