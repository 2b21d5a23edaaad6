package e2e

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/ingest"
	"github.com/medpipe/medpipe/publish"
	"github.com/medpipe/medpipe/stage"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// testDevice is a device whose readings the test can predict: reading i
// (from 1) carries i in its values.
type testDevice struct {
	dev     wire.Device
	variant wire.Variant
}

func makeDevices(n int, variant wire.Variant, prefix string) []testDevice {
	out := make([]testDevice, n)
	for i := range out {
		var d wire.Device
		d.ID = fmt.Sprintf("%s-%02d", prefix, i+1)
		copy(d.Key[:], fmt.Sprintf("k%-9s%06d", prefix, i)) // 16 characters, unique per device
		copy(d.IV[:], fmt.Sprintf("v%-9s%06d", prefix, i))
		out[i] = testDevice{d, variant}
	}
	return out
}

// reading returns the i-th reading of a test device, formatted like the
// firmware (three decimals, negatives with two).
func testReading(i int) wire.Reading {
	return wire.Reading{
		fmt.Sprintf("%.3f", 36+float64(i%1000)/1000), // Temp
		fmt.Sprintf("%.3f", 23+float64(i)/100),       // TempMcu
		fmt.Sprintf("%d.000", i),                     // PulseSig: the sequence itself
		"0.000",
		fmt.Sprintf("%.2f", -float64(i%90)/100),
		"0.980",
		"23.400",
	}
}

// sendFrames writes n readings of dev on one connection, one frame per write.
// Extra frames from extra(i) are written after reading i (for interleaving).
func sendFrames(t *testing.T, addr string, dev testDevice, n int, gap time.Duration, extra func(i int) []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Error(err)
		return
	}
	sendFramesOn(t, conn, dev, n, gap, extra)
}

// sendFramesOn is sendFrames on a connection already made (a TLS one, say);
// it closes the connection at the end.
func sendFramesOn(t *testing.T, conn net.Conn, dev testDevice, n int, gap time.Duration, extra func(i int) []byte) {
	t.Helper()
	defer conn.Close()
	k := wire.NewLegacyKey(dev.dev)
	var buf []byte
	for i := 1; i <= n; i++ {
		r := testReading(i)
		buf = k.Seal(buf[:0], dev.variant, r.AppendJSON(nil))
		if extra != nil {
			buf = append(buf, extra(i)...)
		}
		if _, err := conn.Write(buf); err != nil {
			t.Errorf("%s: write %d: %v", dev.dev.ID, i, err)
			return
		}
		time.Sleep(gap)
	}
}

// expectedTopics lists, in order, the value topics of reading i of device id.
func expectedTopics(prefix, id string, i int) []testkit.Message {
	r := testReading(i)
	base := prefix + "/" + id + "/"
	return []testkit.Message{
		{Topic: base + "Physiological_Data/Temperature", Payload: r[wire.Temp]},
		{Topic: base + "Physiological_Data/Pulse_Signal", Payload: r[wire.PulseSig]},
		{Topic: base + "Physiological_Data/Accelerometer/x", Payload: r[wire.AcelX]},
		{Topic: base + "Physiological_Data/Accelerometer/y", Payload: r[wire.AcelY]},
		{Topic: base + "Physiological_Data/Accelerometer/z", Payload: r[wire.AcelZ]},
		{Topic: base + "Internal_Device_Data/Temperature/MCU", Payload: r[wire.TempMcu]},
		{Topic: base + "Internal_Device_Data/Temperature/MPU", Payload: r[wire.TempMpu]},
	}
}

var addressTopics = []string{"Ip_address", "Port_address", "Internal_Server/Ip_address", "Internal_Server/Port_address"}

// checkDelivery asserts that, per device, every value topic carries exactly
// readings 1..n in order, the address topics appear on readings 1, 51, …,
// and nothing else arrived.
func checkDelivery(t *testing.T, msgs []testkit.Message, prefix string, devs []testDevice, n int) {
	t.Helper()
	perTopic := map[string][]string{}
	for _, m := range msgs {
		perTopic[m.Topic] = append(perTopic[m.Topic], m.Payload)
	}
	want := map[string][]string{}
	for _, d := range devs {
		for i := 1; i <= n; i++ {
			for _, m := range expectedTopics(prefix, d.dev.ID, i) {
				want[m.Topic] = append(want[m.Topic], m.Payload)
			}
		}
		addrs := (n + 49) / 50
		for _, a := range addressTopics {
			topic := prefix + "/" + d.dev.ID + "/" + a
			if got := len(perTopic[topic]); got != addrs {
				t.Errorf("%s: %d messages, want %d", topic, got, addrs)
			}
			for _, p := range perTopic[topic] {
				host, port := p, p
				if strings.HasSuffix(a, "Ip_address") && net.ParseIP(host) == nil {
					t.Errorf("%s: %q is not an IP address", topic, p)
				}
				if strings.HasSuffix(a, "Port_address") {
					if v, err := strconv.Atoi(port); err != nil || v <= 0 || v > 65535 {
						t.Errorf("%s: %q is not a port", topic, p)
					}
				}
			}
			want[topic] = perTopic[topic]
		}
	}
	for topic, w := range want {
		if got := perTopic[topic]; strings.Join(got, ",") != strings.Join(w, ",") {
			t.Errorf("%s: got %d messages, want %d in order (first difference at %d)", topic, len(got), len(w), firstDiff(got, w))
		}
	}
	for topic := range perTopic {
		if _, ok := want[topic]; !ok {
			t.Errorf("unexpected topic %s (%d messages)", topic, len(perTopic[topic]))
		}
	}
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// pipeline is ingest, decrypt and publish running in-process on an embedded
// nats-server.
type pipeline struct {
	server *bus.Embedded
	js     jetstream.JetStream
	edge   *ingest.Edge
	stop   func()
}

func startPipeline(t *testing.T, devs []wire.Device, mqttURL func(e *bus.Embedded) string) *pipeline {
	return startPipelineWith(t, mqttURL, func(_ jetstream.JetStream, o *decrypt.Options) { o.Keys = devs })
}

// startPipelineWith lets the test set the decrypt options (keys, registry).
func startPipelineWith(t *testing.T, mqttURL func(e *bus.Embedded) string, keys func(jetstream.JetStream, *decrypt.Options)) *pipeline {
	t.Helper()
	return startPipelineEdge(t, mqttURL, keys, nil)
}

// startPipelineEdge also lets the test set the edge's options.
func startPipelineEdge(t *testing.T, mqttURL func(e *bus.Embedded) string, keys func(jetstream.JetStream, *decrypt.Options), edgeOpts func(*ingest.Options)) *pipeline {
	t.Helper()
	b := testkit.StartBus(t, 4)
	e, js, parts := b.Server, b.JS, b.Partitions
	ctx, cancel := context.WithCancel(context.Background())
	// MaxBadFrames above the mixed connection's 10 unknown-key frames: that
	// connection stands for a device sharing it with a stranger, and must
	// stay open for the whole run.
	eo := ingest.Options{Listen: "127.0.0.1:0", Partitions: parts, MaxBadFrames: 100}
	if edgeOpts != nil {
		edgeOpts(&eo)
	}
	edge, err := ingest.New(js, eo)
	if err != nil {
		t.Fatal(err)
	}
	dopts := decrypt.Options{Partitions: parts}
	keys(js, &dopts)
	worker, err := decrypt.New(js, dopts)
	if err != nil {
		t.Fatal(err)
	}
	bridge, err := publish.New(js, publish.Options{MQTT: publish.MQTTOptions{URL: mqttURL(e)}, Partitions: parts})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, s := range []stage.Runner{edge, worker, bridge} {
		wg.Go(func() {
			if err := s.Run(ctx); err != nil {
				t.Errorf("stage %T: %v", s, err)
			}
		})
	}
	p := &pipeline{server: e, js: js, edge: edge}
	p.stop = sync.OnceFunc(func() { cancel(); wg.Wait() })
	t.Cleanup(p.stop)
	return p
}

// TestEndToEnd runs 5 pico and 5 pseudo devices × 200 readings through the
// whole pipeline, plus a connection that interleaves unknown-key frames with
// a known device's, and checks what an MQTT subscriber receives: on the
// embedded server's MQTT listener and on a real Mosquitto.
func TestEndToEnd(t *testing.T) {
	brokers := []struct {
		name string
		url  func(t *testing.T) func(e *bus.Embedded) string
	}{
		{"embedded-mqtt", func(*testing.T) func(e *bus.Embedded) string {
			return func(e *bus.Embedded) string { return e.MQTTURL() }
		}},
		{"mosquitto", func(t *testing.T) func(e *bus.Embedded) string {
			m := testkit.StartMosquitto(t, testkit.MosquittoOptions{})
			return func(*bus.Embedded) string { return m.URL() }
		}},
	}
	for _, broker := range brokers {
		t.Run(broker.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
			defer cancel()
			devs := append(makeDevices(5, wire.Pico, "pico"), makeDevices(5, wire.Pseudo, "pseudo")...)
			mixed := makeDevices(1, wire.Pico, "mixed")[0] // shares its connection with unknown-key frames
			stranger := makeDevices(1, wire.Pico, "stranger")[0]
			var keys []wire.Device
			for _, d := range append(devs, mixed) {
				keys = append(keys, d.dev)
			}
			url := broker.url(t)
			p := startPipeline(t, keys, url)
			col := testkit.NewCollector(t, testkit.CollectorOptions{URL: url(p.server), Filter: "Pico/#", QoS: 1, ClientID: "e2e-" + broker.name, CleanSession: true})

			const n = 200
			strangerKey := wire.NewLegacyKey(stranger.dev)
			unknownEvery := 20
			var wg sync.WaitGroup
			for _, d := range devs {
				wg.Go(func() { sendFrames(t, p.edge.Addr().String(), d, n, 2*time.Millisecond, nil) })
			}
			wg.Go(func() {
				sendFrames(t, p.edge.Addr().String(), mixed, n, 2*time.Millisecond, func(i int) []byte {
					if i%unknownEvery != 0 {
						return nil
					}
					r := testReading(i)
					return strangerKey.Seal(nil, wire.Pico, r.AppendJSON(nil))
				})
			})
			wg.Wait()

			all := append(append([]testDevice{}, devs...), mixed)
			perReading := 7
			total := len(all)*n*perReading + len(all)*len(addressTopics)*((n+49)/50)
			if err := col.WaitLen(ctx, total); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond) // anything extra would arrive now
			checkDelivery(t, col.Messages(), "Pico", all, n)

			// The stranger's frames are dead letters, with their reason.
			dl, err := p.js.Stream(ctx, bus.StreamDeadLetter)
			if err != nil {
				t.Fatal(err)
			}
			info, err := dl.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if want := uint64(n / unknownEvery); info.State.Msgs != want {
				t.Fatalf("DEADLETTER holds %d messages, want %d", info.State.Msgs, want)
			}
			m, err := dl.GetMsg(ctx, 1)
			if err != nil {
				t.Fatal(err)
			}
			if r := m.Header.Get(bus.HeaderReason); r != string(bus.ReasonUnknownDevice) {
				t.Fatalf("dead letter reason %q", r)
			}
		})
	}
}
