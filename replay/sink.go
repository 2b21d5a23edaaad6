package replay

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/publish"
)

// JSONLines writes one READINGS-shaped JSON object per reading and line
// (device, values, numbers, received, device_time for v2, raw_seq, …).
type JSONLines struct {
	w *bufio.Writer
}

// NewJSONLines writes to w.
func NewJSONLines(w io.Writer) *JSONLines { return &JSONLines{w: bufio.NewWriterSize(w, 64<<10)} }

// Write writes one line.
func (j *JSONLines) Write(_ context.Context, r *bus.Reading) error {
	b, err := bus.MarshalReading(r)
	if err != nil {
		return fmt.Errorf("replay: encode reading: %w", err)
	}
	b = append(b, '\n')
	if _, err := j.w.Write(b); err != nil {
		return fmt.Errorf("replay: write: %w", err)
	}
	return nil
}

// Close flushes.
func (j *JSONLines) Close(context.Context) error {
	if err := j.w.Flush(); err != nil {
		return fmt.Errorf("replay: write: %w", err)
	}
	return nil
}

// CSVHeader is the first row CSV writes.
var CSVHeader = []string{"device", "received", "device_time", "protocol", "variant", "raw_seq", "device_seq",
	"Temp", "TempMcu", "PulseSig", "Acel_x", "Acel_y", "Acel_z", "TempMpu"}

// CSV writes one row per reading: device, receive time, device time (v2
// devices only: legacy ones send none), protocol, sequence numbers and the
// seven values as the device sent them.
type CSV struct {
	w      *csv.Writer
	header bool
	row    []string
}

// NewCSV writes to w.
func NewCSV(w io.Writer) *CSV { return &CSV{w: csv.NewWriter(w), row: make([]string, len(CSVHeader))} }

// Write writes one row (after the header row).
func (c *CSV) Write(_ context.Context, r *bus.Reading) error {
	if !c.header {
		c.header = true
		if err := c.w.Write(CSVHeader); err != nil {
			return fmt.Errorf("replay: write: %w", err)
		}
	}
	dt, seq := "", ""
	if !r.DeviceTime.IsZero() {
		dt = r.DeviceTime.UTC().Format(time.RFC3339Nano)
	}
	if r.Seq != 0 {
		seq = strconv.FormatUint(r.Seq, 10)
	}
	v := &r.Values
	row := append(c.row[:0], r.Device, r.Received.UTC().Format(time.RFC3339Nano), dt, r.Protocol, r.Variant,
		strconv.FormatUint(r.RawSeq, 10), seq, v.Temp, v.TempMcu, v.PulseSig, v.AcelX, v.AcelY, v.AcelZ, v.TempMpu)
	if err := c.w.Write(row); err != nil {
		return fmt.Errorf("replay: write: %w", err)
	}
	return nil
}

// Close flushes.
func (c *CSV) Close(context.Context) error {
	c.w.Flush()
	if err := c.w.Error(); err != nil {
		return fmt.Errorf("replay: write: %w", err)
	}
	return nil
}

// DefaultPrefix is where replayed readings go on MQTT unless asked
// otherwise: not the live topics, so that dashboards are not fooled.
const DefaultPrefix = "replay/Pico"

// MQTTOptions configures NewMQTT.
type MQTTOptions struct {
	MQTT publish.MQTTOptions
	// Prefix is the topics' first levels (DefaultPrefix; "Pico" for the live ones).
	Prefix string
	QoS    byte
	Retain bool
	// JSONTopic also publishes each reading on <prefix>/<id>/reading.
	JSONTopic bool
	// AddressEvery publishes a device's addresses on its first reading and
	// every AddressEvery after (0: never).
	AddressEvery int
	// MaxInFlight bounds messages awaiting the broker's ack (default 4096).
	MaxInFlight int
}

// MQTT publishes readings with publish's topic layout.
type MQTT struct {
	o      MQTTOptions
	client mqtt.Client
	window chan mqtt.Token
	counts map[string]uint64
	msgs   []publish.Message
}

// NewMQTT connects to the broker.
func NewMQTT(o MQTTOptions) (*MQTT, error) {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.QoS > 2 {
		return nil, fmt.Errorf("replay: QoS %d: want 0, 1 or 2", o.QoS)
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 4096
	}
	if o.MQTT.URL == "" {
		o.MQTT.URL = "tcp://127.0.0.1:1883"
	}
	if o.MQTT.ClientID == "" {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		o.MQTT.ClientID = "medpipe-replay-" + hex.EncodeToString(b)
	}
	if o.MQTT.ConnectTimeout <= 0 {
		o.MQTT.ConnectTimeout = 10 * time.Second
	}
	opts := mqtt.NewClientOptions().AddBroker(o.MQTT.URL).SetClientID(o.MQTT.ClientID).
		SetUsername(o.MQTT.Username).SetPassword(o.MQTT.Password).
		SetCleanSession(true).SetAutoReconnect(true).SetOrderMatters(true).
		SetConnectTimeout(o.MQTT.ConnectTimeout).SetMaxReconnectInterval(2 * time.Second)
	if o.MQTT.TLS != nil {
		opts.SetTLSConfig(o.MQTT.TLS.Clone())
	} else {
		opts.SetTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12})
	}
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(o.MQTT.ConnectTimeout) {
		c.Disconnect(0)
		return nil, fmt.Errorf("replay: MQTT connect to %s: timed out", bus.RedactURLs(o.MQTT.URL))
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("replay: MQTT connect to %s: %w", bus.RedactURLs(o.MQTT.URL), err)
	}
	return &MQTT{o: o, client: c, window: make(chan mqtt.Token, o.MaxInFlight), counts: map[string]uint64{}}, nil
}

// Write publishes one reading's messages, waiting for room in the window.
func (m *MQTT) Write(ctx context.Context, r *bus.Reading) error {
	n := m.counts[r.Device]
	m.counts[r.Device] = n + 1
	withAddr := m.o.AddressEvery > 0 && n%uint64(m.o.AddressEvery) == 0
	m.msgs = publish.Topics(m.msgs[:0], m.o.Prefix, r, withAddr, m.o.JSONTopic)
	for _, msg := range m.msgs {
		if len(m.window) == cap(m.window) {
			if err := m.waitOne(ctx); err != nil {
				return err
			}
		}
		m.window <- m.client.Publish(msg.Topic, m.o.QoS, m.o.Retain, msg.Payload)
	}
	return nil
}

func (m *MQTT) waitOne(ctx context.Context) error {
	tok := <-m.window
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("replay: MQTT publish: %w", err)
	}
	return nil
}

// Close waits for every message's acknowledgement, then disconnects.
func (m *MQTT) Close(ctx context.Context) error {
	var errs []error
	for len(m.window) > 0 {
		if err := m.waitOne(ctx); err != nil {
			errs = append(errs, err)
			break
		}
	}
	m.client.Disconnect(250)
	return errors.Join(errs...)
}
