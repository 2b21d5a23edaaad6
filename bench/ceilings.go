package bench

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/mqttconn"
)

// Ceilings are what the pipeline's parts give on this machine at this
// moment, measured on the stack's own servers with messages of a frame's
// size.
type Ceilings struct {
	JSPublishPerSec float64 `json:"js_publish_per_s"`
	JSConsumePerSec float64 `json:"js_consume_per_s"`
	MQTTPerSec      float64 `json:"mqtt_per_s"`
	// PerReading: what each part caps the pipeline at, in readings/s.
	JSReadingsPerSec   float64 `json:"js_readings_per_s"`
	MQTTReadingsPerSec float64 `json:"mqtt_readings_per_s"`
	Bottleneck         string  `json:"bottleneck"`
	BottleneckPerSec   float64 `json:"bottleneck_readings_per_s"`
}

// measureCeilings runs the raw JetStream and MQTT rates. A reading costs
// JetStream two stored messages (RAW, READINGS), each published once and
// consumed once, and MQTT msgsPerReading messages.
func measureCeilings(ctx context.Context, natsURL, mqttURL, mqttReadURL string, qos byte, msgsPerReading int) (Ceilings, error) {
	var c Ceilings
	var err error
	if c.JSPublishPerSec, c.JSConsumePerSec, err = jetStreamRate(ctx, natsURL, 50_000, 263); err != nil {
		return c, fmt.Errorf("bench: JetStream ceiling: %w", err)
	}
	if c.MQTTPerSec, err = mqttRate(ctx, mqttURL, mqttReadURL, qos, 40_000, 64); err != nil {
		return c, fmt.Errorf("bench: MQTT ceiling: %w", err)
	}
	c.JSReadingsPerSec = 1 / (2/c.JSPublishPerSec + 2/c.JSConsumePerSec)
	c.MQTTReadingsPerSec = c.MQTTPerSec / float64(msgsPerReading)
	c.Bottleneck, c.BottleneckPerSec = "JetStream", c.JSReadingsPerSec
	if c.MQTTReadingsPerSec < c.JSReadingsPerSec {
		c.Bottleneck, c.BottleneckPerSec = "MQTT", c.MQTTReadingsPerSec
	}
	return c, nil
}

// jetStreamRate publishes n messages of size bytes asynchronously to a
// file-backed stream, then consumes and acks them, and returns both rates.
func jetStreamRate(ctx context.Context, url string, n, size int) (pub, cons float64, err error) {
	nc, js, err := bus.Connect(ctx, bus.ConnectOptions{URLs: url, Name: "medpipe-bench-ceiling"})
	if err != nil {
		return 0, 0, err
	}
	defer nc.Close()
	const name = "MEDPIPE_BENCH_CEILING"
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{"medpipe.bench.ceiling"}, Storage: jetstream.FileStorage})
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = js.DeleteStream(context.WithoutCancel(ctx), name) }()
	data := make([]byte, size)
	start := time.Now()
	for range n {
		if _, err := js.PublishAsync("medpipe.bench.ceiling", data, bus.Backpressure); err != nil {
			return 0, 0, err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
	pub = float64(n) / time.Since(start).Seconds()
	c, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 8192})
	if err != nil {
		return 0, 0, err
	}
	start = time.Now()
	for got := 0; got < n; {
		batch, err := c.FetchNoWait(512)
		if err != nil {
			return 0, 0, err
		}
		for m := range batch.Messages() {
			_ = m.Ack()
			got++
		}
		if ctx.Err() != nil {
			return 0, 0, ctx.Err()
		}
	}
	if err := nc.Flush(); err != nil {
		return 0, 0, err
	}
	return pub, float64(n) / time.Since(start).Seconds(), nil
}

// ceilingTopic is where the MQTT ceiling is measured: under the live
// prefix, the one place the bridge's login may write and a dashboard's read.
const ceilingTopic = bus.DefaultTopicPrefix + "/medpipe-bench/ceiling"

// mqttRate publishes n messages at qos with a window of 1,000 in flight to
// a subscriber on the same broker and returns the rate at which the
// subscriber received them. The publisher connects to url, the subscriber
// to readURL (the same broker, perhaps another login).
func mqttRate(ctx context.Context, url, readURL string, qos byte, n, size int) (float64, error) {
	var got atomic.Int64
	done := make(chan struct{})
	sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(readURL).SetClientID("medpipe-bench-ceiling-sub").SetCleanSession(true).
		SetCustomOpenConnectionFn(mqttconn.Open)) // the client publish uses: the ceiling is the broker's, not paho's
	if t := sub.Connect(); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		return 0, fmt.Errorf("subscriber connect: %v", t.Error())
	}
	defer sub.Disconnect(100)
	if t := sub.Subscribe(ceilingTopic, qos, func(mqtt.Client, mqtt.Message) {
		if got.Add(1) == int64(n) {
			close(done)
		}
	}); !t.WaitTimeout(10*time.Second) || subscribeError(t, ceilingTopic) != nil {
		return 0, fmt.Errorf("subscribe: %v", subscribeError(t, ceilingTopic))
	}
	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("medpipe-bench-ceiling-pub").SetCleanSession(true).
		SetCustomOpenConnectionFn(mqttconn.Open))
	if t := pub.Connect(); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		return 0, fmt.Errorf("publisher connect: %v", t.Error())
	}
	defer pub.Disconnect(100)
	payload := make([]byte, size)
	window := make(chan mqtt.Token, 1000)
	errs := make(chan error, 1)
	go func() {
		for t := range window {
			t.Wait()
			if t.Error() != nil {
				select {
				case errs <- t.Error():
				default:
				}
			}
		}
	}()
	start := time.Now()
	for range n {
		window <- pub.Publish(ceilingTopic, qos, false, payload)
	}
	close(window)
	select {
	case <-done:
	case err := <-errs:
		return 0, err
	case <-time.After(60 * time.Second):
		return 0, errors.New("subscriber did not receive every message within 60 s (the broker dropped some)")
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return float64(n) / time.Since(start).Seconds(), nil
}
