package publish

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

func reading(dev string, i int) *bus.Reading {
	r := &bus.Reading{Device: dev, Protocol: bus.ProtocolLegacy, Remote: "192.0.2.7:40001", Local: "10.0.0.1:9998", RawSeq: uint64(i), Received: time.Unix(1764000000, 0).UTC()}
	w := wire.Reading{fmt.Sprintf("36.%03d", i%1000), "23.700", fmt.Sprintf("%d.000", i), "0.000", "-0.02", "0.980", "23.400"}
	r.SetWire(&w)
	return r
}

func TestTopics(t *testing.T) {
	r := reading("dev-1", 5)
	tests := []struct {
		name      string
		addresses bool
		json      bool
		remote    string
		v2        bool
		pulse     bool
		want      []string
	}{
		{name: "values only", want: []string{
			"P/dev-1/Physiological_Data/Temperature=36.005",
			"P/dev-1/Physiological_Data/Pulse_Signal=5.000",
			"P/dev-1/Physiological_Data/Accelerometer/x=0.000",
			"P/dev-1/Physiological_Data/Accelerometer/y=-0.02",
			"P/dev-1/Physiological_Data/Accelerometer/z=0.980",
			"P/dev-1/Internal_Device_Data/Temperature/MCU=23.700",
			"P/dev-1/Internal_Device_Data/Temperature/MPU=23.400",
		}},
		{name: "with addresses, IPv6 device", addresses: true, remote: "[::1]:5000", want: []string{
			"P/dev-1/Ip_address=::1", "P/dev-1/Port_address=5000",
			"P/dev-1/Internal_Server/Ip_address=10.0.0.1", "P/dev-1/Internal_Server/Port_address=9998",
		}},
		{name: "json topic", json: true, want: []string{
			`P/dev-1/reading={"device":"dev-1","values":{"Temp":"36.005","TempMcu":"23.700","PulseSig":"5.000","Acel_x":"0.000","Acel_y":"-0.02","Acel_z":"0.980","TempMpu":"23.400"},"received":"2025-11-24T16:00:00Z"}`,
		}},
		{name: "json topic, v2", json: true, v2: true, want: []string{
			`P/dev-1/reading={"device":"dev-1","values":{"Temp":"36.005","TempMcu":"23.700","PulseSig":"5.000","Acel_x":"0.000","Acel_y":"-0.02","Acel_z":"0.980","TempMpu":"23.400"},"received":"2025-11-24T16:00:00Z","device_time":"2025-11-24T15:59:59.95Z","seq":42,"sensors":{"temperature":"ok","mcu":"ok","pulse":"ok","motion":"ok"}}`,
		}},
		// --json-only publishes nothing else: the batch rides in the reading.
		{name: "json topic, v2 pulse batch", json: true, v2: true, pulse: true, want: []string{
			`P/dev-1/Physiological_Data/Pulse_Signal/batch={"rate":250,"start":"2025-11-24T15:59:59.95Z","samples":[0.5,1.25]}`,
			`P/dev-1/reading={"device":"dev-1","values":{"Temp":"36.005","TempMcu":"23.700","PulseSig":"5.000","Acel_x":"0.000","Acel_y":"-0.02","Acel_z":"0.980","TempMpu":"23.400"},"received":"2025-11-24T16:00:00Z","device_time":"2025-11-24T15:59:59.95Z","seq":42,"pulse":{"rate":250,"start":"2025-11-24T15:59:59.95Z","samples":[0.5,1.25]},"sensors":{"temperature":"ok","mcu":"ok","pulse":"ok","motion":"ok"}}`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rr := *r
			if tt.remote != "" {
				rr.Remote = tt.remote
			}
			if tt.v2 {
				rr.Protocol, rr.Seq, rr.DeviceTime = bus.ProtocolV2, 42, rr.Received.Add(-50*time.Millisecond)
			}
			if tt.pulse {
				rr.Pulse = &wire.PulseBatch{Rate: 250, Start: rr.DeviceTime.UnixMilli(), Samples: []float64{0.5, 1.25}}
			}
			msgs := Topics(nil, "P", &rr, tt.addresses, tt.json)
			var got []string
			for _, m := range msgs[7:] {
				got = append(got, m.Topic+"="+string(m.Payload))
			}
			want := tt.want
			if !tt.addresses && !tt.json {
				got = got[:0]
				for _, m := range msgs {
					got = append(got, m.Topic+"="+string(m.Payload))
				}
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

type env struct {
	js    jetstream.JetStream
	e     *bus.Embedded
	parts int
	bus   *testkit.Bus
}

func newEnv(t *testing.T) *env {
	t.Helper()
	b := testkit.StartBus(t, 4)
	return &env{b.JS, b.Server, b.Partitions, b}
}

// publishReadings puts n readings of each device on READINGS as decrypt would.
func (v *env) publishReadings(t *testing.T, devs []string, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		for _, d := range devs {
			b, _ := bus.MarshalReading(reading(d, i))
			msg := &nats.Msg{Subject: bus.ReadingsSubject(bus.Partition(d, v.parts), d), Data: b}
			if _, err := v.js.PublishMsgAsync(msg); err != nil {
				t.Fatal(err)
			}
		}
	}
	<-v.js.PublishAsyncComplete()
}

func (v *env) runBridge(t *testing.T, o Options) (stop func()) {
	t.Helper()
	o.Partitions = v.parts
	b, err := New(v.js, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("bridge: %v", err)
		}
	})
	t.Cleanup(stop)
	return stop
}

// checkOrder asserts that each device's value topics carry readings
// from..to in order; duplicates (at-least-once) are counted, not failed.
func checkOrder(t *testing.T, msgs []testkit.Message, devs []string, n int, allowDuplicates bool) {
	t.Helper()
	dups := 0
	for _, d := range devs {
		var seqs []string
		for _, m := range msgs {
			if m.Topic == "Pico/"+d+"/Physiological_Data/Pulse_Signal" {
				seqs = append(seqs, m.Payload)
			}
		}
		next := 0
		for _, s := range seqs {
			switch {
			case s == fmt.Sprintf("%d.000", next):
				next++
			case allowDuplicates && seqNum(s) < next:
				dups++
			default:
				t.Fatalf("%s: got reading %s, want %d.000 (out of order or extra); sequence %v", d, s, next, seqs)
			}
		}
		if next != n {
			t.Fatalf("%s: %d of %d readings arrived in order", d, next, n)
		}
	}
	t.Logf("%d duplicate readings (at-least-once)", dups)
}

func seqNum(s string) int {
	var n int
	fmt.Sscanf(s, "%d.000", &n)
	return n
}

func TestBridgeOnEmbeddedMQTT(t *testing.T) {
	v := newEnv(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	col := testkit.NewCollector(t, testkit.CollectorOptions{URL: v.e.MQTTURL(), Filter: "Pico/#", ClientID: "col", QoS: 1, CleanSession: true})
	devs := []string{"a", "b", "c"}
	const n = 120
	v.publishReadings(t, devs, 0, n)
	v.runBridge(t, Options{MQTT: MQTTOptions{URL: v.e.MQTTURL()}})
	want := len(devs) * (n*int(wire.NumFields) + 4*3) // addresses on readings 1, 51, 101
	waitExactly(ctx, t, col, want)
	checkOrder(t, col.Messages(), devs, n, false)
	waitNothingPending(t, v)
}

// waitExactly waits for want messages and checks that no more follow.
func waitExactly(ctx context.Context, t *testing.T, col *testkit.Collector, want int) {
	t.Helper()
	if err := col.WaitLen(ctx, want); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if got := col.Len(); got != want {
		t.Fatalf("%d messages, want exactly %d", got, want)
	}
}

func waitNothingPending(t *testing.T, v *env) {
	t.Helper()
	v.bus.WaitDrained(t, bus.StreamReadings, "publish")
}

func TestBridgeOnMosquitto(t *testing.T) {
	v := newEnv(t)
	m := testkit.StartMosquitto(t, testkit.MosquittoOptions{})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	col := testkit.NewCollector(t, testkit.CollectorOptions{URL: m.URL(), Filter: "Pico/#", ClientID: "col", QoS: 1, CleanSession: true})
	devs := []string{"a", "b"}
	const n = 200
	v.runBridge(t, Options{MQTT: MQTTOptions{URL: m.URL()}, JSONTopic: true})
	v.publishReadings(t, devs, 0, n)
	want := len(devs) * (n*8 + 4*4)
	waitExactly(ctx, t, col, want)
	checkOrder(t, col.Messages(), devs, n, false)
	waitNothingPending(t, v)
}

// TestBridgeSurvivesMosquittoRestart stops the broker for 10 s while
// readings flow and starts it again: every reading arrives, in order per
// device.
func TestBridgeSurvivesMosquittoRestart(t *testing.T) {
	v := newEnv(t)
	m := testkit.StartMosquitto(t, testkit.MosquittoOptions{Persistence: true})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	col := testkit.NewCollector(t, testkit.CollectorOptions{URL: m.URL(), Filter: "Pico/#", ClientID: "restart-col", QoS: 1, CleanSession: false})
	devs := []string{"a", "b", "c"}
	const n = 300
	v.runBridge(t, Options{MQTT: MQTTOptions{URL: m.URL(), ClientID: "restart-bridge"}})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i < n; i += 10 { // readings keep flowing through the outage (about 12 s)
			v.publishReadings(t, devs, i, 10)
			time.Sleep(400 * time.Millisecond)
		}
	})
	if err := col.WaitLen(ctx, 100); err != nil {
		t.Fatal(err)
	}
	m.Stop()
	down := time.Now()
	time.Sleep(10 * time.Second)
	m.Start()
	wg.Wait()
	deadline := time.Now().Add(40 * time.Second)
	for {
		if missing := missingReadings(col.Messages(), devs, n); missing == 0 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("%d readings never arrived after the restart", missing)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("broker down 10 s: all %d readings of %d devices arrived %v after it went down", n, len(devs), time.Since(down).Round(100*time.Millisecond))
	checkOrder(t, col.Messages(), devs, n, true)
	waitNothingPending(t, v)
}

func missingReadings(msgs []testkit.Message, devs []string, n int) int {
	have := map[string]bool{}
	for _, m := range msgs {
		have[m.Topic+"="+m.Payload] = true
	}
	missing := 0
	for _, d := range devs {
		for i := range n {
			if !have["Pico/"+d+"/Physiological_Data/Pulse_Signal="+fmt.Sprintf("%d.000", i)] {
				missing++
			}
		}
	}
	return missing
}

// TestBridgeDrain: cancelling while readings are in flight returns, and
// everything READINGS counts as acked was delivered.
func TestBridgeDrain(t *testing.T) {
	v := newEnv(t)
	col := testkit.NewCollector(t, testkit.CollectorOptions{URL: v.e.MQTTURL(), Filter: "Pico/+/Physiological_Data/Pulse_Signal", ClientID: "col", QoS: 1, CleanSession: true})
	devs := []string{"a", "b", "c", "d"}
	v.publishReadings(t, devs, 0, 500)
	stop := v.runBridge(t, Options{MQTT: MQTTOptions{URL: v.e.MQTTURL()}})
	if err := col.WaitLen(t.Context(), 100); err != nil {
		t.Fatal(err)
	}
	stop()
	acked := len(devs) * 500 // every reading, less those not yet acknowledged
	for p := range v.parts {
		c, err := v.js.Consumer(t.Context(), bus.StreamReadings, fmt.Sprintf("publish-%d", p))
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		acked -= int(info.NumPending) + info.NumAckPending
	}
	time.Sleep(300 * time.Millisecond)
	if got := col.Len(); got < acked {
		t.Fatalf("%d readings delivered, but READINGS acked at least %d", got, acked)
	}
}

func BenchmarkTopics(b *testing.B) {
	r := reading("iot_med_dev_01", 1)
	dst := make([]Message, 0, 12)
	b.ReportAllocs()
	for b.Loop() {
		dst = Topics(dst[:0], "Pico", r, false, false)
	}
}

// TestRedeliveryKnowledge: a redelivered reading is skipped only when this
// process delivered exactly that READINGS message, lately.
func TestRedeliveryKnowledge(t *testing.T) {
	b := &Bridge{delivered: bus.NewRecentSeqs(4)}
	for _, seq := range []uint64{10, 12, 15} {
		b.markDelivered(seq)
	}
	tests := []struct {
		seq  uint64
		want bool
	}{
		{10, true}, {12, true}, {15, true},
		{11, false}, // lost on its way here, redelivered after newer ones: publish it
		{14, false}, // failed: publish it again
		{16, false}, {0, false},
	}
	for _, tt := range tests {
		if got := b.wasDelivered(tt.seq); got != tt.want {
			t.Errorf("wasDelivered(%d) = %v, want %v", tt.seq, got, tt.want)
		}
	}
	for _, seq := range []uint64{20, 21, 22} {
		b.markDelivered(seq)
	}
	if b.wasDelivered(10) || !b.wasDelivered(15) || !b.wasDelivered(22) {
		t.Error("the set does not keep exactly the last 4")
	}
}

// publishBatches puts n readings of each device on READINGS as a
// batching decrypt would: each partition's readings in batches of size.
func (v *env) publishBatches(t *testing.T, devs []string, n, size int) {
	t.Helper()
	byPart := map[int][]bus.KeyedReading{}
	for i := range n {
		for _, d := range devs {
			p := bus.Partition(d, v.parts)
			byPart[p] = append(byPart[p], bus.KeyedReading{Reading: reading(d, i)})
		}
	}
	for p, rs := range byPart {
		for len(rs) > 0 {
			k := min(size, len(rs))
			b, err := bus.AppendReadingBatch(nil, rs[:k])
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v.js.PublishMsgAsync(&nats.Msg{Subject: bus.ReadingsBatchSubject(p), Data: b}); err != nil {
				t.Fatal(err)
			}
			rs = rs[k:]
		}
	}
	<-v.js.PublishAsyncComplete()
}

// TestBridgeBatches: every reading of a READINGS batch reaches the broker
// in order, the batch is acknowledged once the broker has them all, and a
// batch needing more MQTT messages than the in-flight window holds goes
// through alone instead of waiting for ever.
func TestBridgeBatches(t *testing.T) {
	for _, tc := range []struct {
		name   string
		window int
	}{{"default window", 0}, {"batch over the window", 20}} {
		t.Run(tc.name, func(t *testing.T) {
			v := newEnv(t)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			col := testkit.NewCollector(t, testkit.CollectorOptions{URL: v.e.MQTTURL(), Filter: "Pico/#", ClientID: "col", QoS: 1, CleanSession: true})
			devs := []string{"a", "b", "c", "d", "e"}
			const n = 120
			v.publishBatches(t, devs, n, 16)
			v.runBridge(t, Options{MQTT: MQTTOptions{URL: v.e.MQTTURL()}, MaxInFlightMessages: tc.window})
			want := len(devs) * (n*int(wire.NumFields) + 4*3) // addresses on readings 1, 51, 101
			waitExactly(ctx, t, col, want)
			checkOrder(t, col.Messages(), devs, n, false)
			waitNothingPending(t, v)
		})
	}
}
