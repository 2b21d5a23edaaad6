package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/firmware/device"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// TestMissingThermometer boots a v2 device whose DS18B20 is unplugged,
// against a real pipeline: MQTT's retained status says the temperature
// sensor is missing, no 0 °C (nor any value) is published for it while it
// is — its topic carries null — and once it is plugged in the status turns
// ok and the measured temperature follows.
func TestMissingThermometer(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	cfg := testConfig(device.ProtocolV2)
	p := startPipeline(t, cfg.Device)
	base := bus.DefaultTopicPrefix + "/" + cfg.Device.ID + "/"
	statusTopic, tempTopic := base+wire.StatusTopic, base+wire.Fields[wire.Temp].Topic
	col := testkit.NewCollector(t, testkit.CollectorOptions{URL: p.mqttURL, Filter: base + "#", QoS: 1, ClientID: "thermometer-e2e", CleanSession: true,
		Username: p.user, Password: p.password})
	fb := newBoard(t, p.edge)
	fb.temp.SetAbsent(true)
	d := device.New(fb.Board, device.Options{Readings: 200})
	done := make(chan error, 1)
	go func() { done <- d.Work(ctx, cfg) }()

	// wait polls the collected messages until ok says so.
	wait := func(what string, ok func([]testkit.Message) bool) {
		t.Helper()
		for !ok(col.Messages()) {
			select {
			case err := <-done:
				if !ok(col.Messages()) {
					t.Fatalf("%s: the device stopped (%v) first", what, err)
				}
				return
			case <-ctx.Done():
				t.Fatalf("%s: not seen", what)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	const missing = `"temperature":"missing"`
	wait("the status to say the temperature sensor is missing, and 20 readings", func(ms []testkit.Message) bool {
		st, temps := 0, 0
		for _, m := range ms {
			switch {
			case m.Topic == statusTopic && strings.Contains(m.Payload, missing):
				st++
			case m.Topic == tempTopic:
				temps++
			}
		}
		return st > 0 && temps >= 20
	})
	fb.temp.SetAbsent(false) // plugged in
	wait("the status to turn ok and the temperature to follow", func(ms []testkit.Message) bool {
		ok := false
		for _, m := range ms {
			if m.Topic == statusTopic && strings.Contains(m.Payload, `"temperature":"ok"`) {
				ok = true
			}
			if ok && m.Topic == tempTopic && m.Payload == "36.625" {
				return true
			}
		}
		return false
	})
	cancel()
	<-done

	// Until the status turned ok, the temperature topic carried null and
	// nothing else; the JSON reading null too.
	var nulls, values int
	statusOK := false
	for _, m := range col.Messages() {
		switch {
		case m.Topic == statusTopic:
			statusOK = strings.Contains(m.Payload, `"temperature":"ok"`)
		case m.Topic == tempTopic && !statusOK:
			if m.Payload != "null" {
				t.Errorf("with the sensor missing, the temperature topic carried %q", m.Payload)
			}
			nulls++
		case m.Topic == tempTopic:
			values++
		case m.Topic == base+"reading" && !statusOK && !strings.Contains(m.Payload, `"Temp":null`):
			t.Errorf("with the sensor missing, the JSON reading is %s", m.Payload)
		}
	}
	// A new dashboard learns the state at once: the status is retained.
	late := testkit.NewCollector(t, testkit.CollectorOptions{URL: p.mqttURL, Filter: statusTopic, QoS: 1, ClientID: "late-dashboard", CleanSession: true,
		Username: p.user, Password: p.password})
	lctx, lcancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer lcancel()
	if err := late.WaitLen(lctx, 1); err != nil {
		t.Fatalf("no retained status: %v", err)
	}
	if m := late.Messages()[0]; !m.Retained || !strings.Contains(m.Payload, `"temperature":"ok"`) {
		t.Errorf("a later dashboard got %+v", m)
	}
	t.Logf("%d readings with the temperature null, %d with it measured; stats %+v", nulls, values, d.Stats)
}
