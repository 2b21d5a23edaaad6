package publish

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// v2Reading is reading i of a v2 device with sensor states st: a value
// whose sensor is not ok is absent, as decrypt makes it.
func v2Reading(dev string, i int, st wire.SensorStates) *bus.Reading {
	r := reading(dev, i)
	r.Protocol, r.Seq, r.DeviceTime, r.Sensors = bus.ProtocolV2, uint64(i+1), r.Received, st
	w := r.Values.Wire()
	for f := range wire.NumFields {
		if st.Absent(f) {
			w[f] = ""
		}
	}
	r.SetWire(&w)
	return r
}

// TestTopicsAbsentSensor: the missing DS18B20's temperature is published
// as null (never a 0), in the JSON reading too, with the states beside it.
func TestTopicsAbsentSensor(t *testing.T) {
	r := v2Reading("dev-1", 3, wire.SensorStates{wire.TempSensor: wire.SensorMissing})
	msgs := Topics(nil, "P", r, false, true)
	got := map[string]string{}
	for _, m := range msgs {
		got[m.Topic] = string(m.Payload)
	}
	if v := got["P/dev-1/Physiological_Data/Temperature"]; v != "null" {
		t.Errorf("temperature published as %q, want null", v)
	}
	if v := got["P/dev-1/Internal_Device_Data/Temperature/MCU"]; v != "23.700" {
		t.Errorf("MCU temperature %q", v)
	}
	j := got["P/dev-1/reading"]
	for _, want := range []string{`"Temp":null`, `"sensors":{"temperature":"missing","mcu":"ok","pulse":"ok","motion":"ok"}`} {
		if !strings.Contains(j, want) {
			t.Errorf("JSON reading lacks %s: %s", want, j)
		}
	}
	if _, ok := StatusMessage("P", reading("dev-1", 1)); ok {
		t.Error("a legacy reading has a status: legacy devices report none")
	}
	m, ok := StatusMessage("P", r)
	if !ok || m.Topic != "P/dev-1/"+wire.StatusTopic || !m.Retain || string(m.Payload) != `{"temperature":"missing","mcu":"ok","pulse":"ok","motion":"ok"}` {
		t.Errorf("status message %+v %s", m, m.Payload)
	}
}

// TestBridgeStatusTopic runs the bridge against the embedded MQTT broker:
// a v2 device's status is published retained on its first reading, when
// it changes, and with the addresses (every AddressEvery readings), not
// with every reading; a dashboard that subscribes later gets the latest at once.
func TestBridgeStatusTopic(t *testing.T) {
	v := newEnv(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	statusTopic := bus.DefaultTopicPrefix + "/dev-s/" + wire.StatusTopic
	col := testkit.NewCollector(t, testkit.CollectorOptions{URL: v.e.MQTTURL(), Filter: statusTopic, ClientID: "col", QoS: 1, CleanSession: true})
	missing := wire.SensorStates{wire.TempSensor: wire.SensorMissing}
	// 0-9 missing, 10-19 ok, 20-24 missing: the first, changes at 10 and
	// 20, and the cadence (AddressEvery 8) at 8, 16 and 24.
	for i := range 25 {
		st := missing
		if i >= 10 && i < 20 {
			st = wire.SensorStates{}
		}
		b, err := bus.AppendReading(nil, v2Reading("dev-s", i, st))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.js.PublishMsg(ctx, &nats.Msg{Subject: bus.ReadingsSubject(bus.Partition("dev-s", v.parts), "dev-s"), Data: b}); err != nil {
			t.Fatal(err)
		}
	}
	v.runBridge(t, Options{MQTT: MQTTOptions{URL: v.e.MQTTURL()}, AddressEvery: 8})
	const m, ok = `{"temperature":"missing","mcu":"ok","pulse":"ok","motion":"ok"}`, `{"temperature":"ok","mcu":"ok","pulse":"ok","motion":"ok"}`
	want := []string{m /* 0 */, m /* 8 */, ok /* 10 */, ok /* 16 */, m /* 20 */, m /* 24 */}
	waitExactly(ctx, t, col, len(want))
	for i, msg := range col.Messages() {
		if msg.Payload != want[i] {
			t.Errorf("status %d: %s, want %s", i, msg.Payload, want[i])
		}
	}
	late := testkit.NewCollector(t, testkit.CollectorOptions{URL: v.e.MQTTURL(), Filter: statusTopic, ClientID: "late", QoS: 1, CleanSession: true})
	if err := late.WaitLen(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if got := late.Messages()[0]; !got.Retained || got.Payload != m {
		t.Fatalf("a later dashboard got %+v, want the retained %s", got, m)
	}
}
