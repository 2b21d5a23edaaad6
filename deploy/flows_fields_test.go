package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/publish"
	"github.com/medpipe/medpipe/wire"
)

// TestFlowsTopicsFollowTheFieldTable keeps the dashboard's flows.json, a
// static file of JavaScript that cannot import the field table, equal to
// it: every value topic of wire.Fields has a case in the dashboard's
// topic switch, every JSON key a read from the reading topic, the reading
// is complete on the last value topic publish.Topics sends, every topic
// the switch knows is one publish sends, and its default prefix is the
// bus's. A new field (one row in wire.Fields) fails here until the
// dashboard learns it.
func TestFlowsTopicsFollowTheFieldTable(t *testing.T) {
	code := dashboardFunction(t)

	// What publish sends for one v2 reading with every optional topic: the
	// value topics in order, addresses, a pulse batch, the sensor status.
	r := &bus.Reading{Device: "d", Protocol: bus.ProtocolV2, Remote: "10.0.0.1:1", Local: "10.0.0.2:2", Pulse: &wire.PulseBatch{Rate: 250, Samples: []float64{1}}}
	r.SetWire(&wire.Reading{"1", "1", "1", "1", "1", "1", "1"})
	var sent, values []string
	msgs := publish.Topics(nil, "P", r, true, false)
	if m, ok := publish.StatusMessage("P", r); ok {
		msgs = append(msgs, m)
	}
	for _, m := range msgs {
		leaf := strings.TrimPrefix(m.Topic, "P/d/")
		sent = append(sent, leaf)
		if slices.ContainsFunc(wire.Fields[:], func(f wire.FieldSpec) bool { return f.Topic == leaf }) {
			values = append(values, leaf)
		}
	}
	if len(values) != int(wire.NumFields) {
		t.Fatalf("publish.Topics sends %d value topics, the field table has %d", len(values), wire.NumFields)
	}

	cases := map[string]bool{}
	for _, m := range regexp.MustCompile(`case "([^"]+)":`).FindAllStringSubmatch(code, -1) {
		cases[m[1]] = true
	}
	for _, f := range wire.Fields {
		if !cases[f.Topic] {
			t.Errorf("flows.json has no case for %s's topic %q", f.Name, f.Topic)
		}
		if !strings.Contains(code, "vals."+f.Name+")") {
			t.Errorf("flows.json does not read %q from the reading topic's values", f.Name)
		}
	}
	for c := range cases {
		if !slices.Contains(sent, c) {
			t.Errorf("flows.json handles topic %q, which publish never sends", c)
		}
	}
	complete := regexp.MustCompile(`case "([^"]+)":[^\n]*complete\(d\)`).FindAllStringSubmatch(code, -1)
	if last := values[len(values)-1]; len(complete) != 1 || complete[0][1] != last {
		t.Errorf("flows.json completes a reading on %v, want on publish's last value topic %q", complete, last)
	}
	if want := `env.get("MQTT_PREFIX") || ` + strconv.Quote(bus.DefaultTopicPrefix); !strings.Contains(code, want) {
		t.Errorf("flows.json's default topic prefix is not %s: want %s", bus.DefaultTopicPrefix, want)
	}
}

// dashboardFunction is the JavaScript of flows.json's function node that
// reads the MQTT topics.
func dashboardFunction(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("node-red", "flows.json"))
	if err != nil {
		t.Fatal(err)
	}
	var nodes []struct {
		Type, Func string
	}
	if err := json.Unmarshal(b, &nodes); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Type == "function" && strings.Contains(n.Func, "function reading(topic, payload)") {
			return n.Func
		}
	}
	t.Fatal("flows.json has no function node with reading(topic, payload)")
	return ""
}
