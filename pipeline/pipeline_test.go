package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/bus/registry"
	"github.com/medpipe/medpipe/pipeline"
	"github.com/medpipe/medpipe/simulator"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// start builds a pipeline on free ports and runs it until the test ends.
func start(t *testing.T, o pipeline.Options) (*pipeline.Pipeline, *testkit.SyncBuffer) {
	t.Helper()
	logs := &testkit.SyncBuffer{}
	o.DataDir = t.TempDir()
	o.NATSPort, o.MQTTPort, o.MonitorPort = -1, -1, -2
	o.Ingest.Listen = "127.0.0.1:0"
	o.Log = slog.New(slog.NewTextHandler(logs, nil))
	ctx, cancel := context.WithCancel(t.Context())
	p, err := pipeline.New(ctx, o)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("pipeline did not drain within 30 s")
		}
	})
	return p, logs
}

// collect subscribes to every device's temperature on the embedded broker,
// as a dashboard.
func collect(t *testing.T, p *pipeline.Pipeline) *testkit.Collector {
	return testkit.NewCollector(t, testkit.CollectorOptions{
		URL: p.Server.MQTTURL(), Filter: bus.DefaultTopicPrefix + "/+/" + wire.Fields[wire.Temp].Topic, QoS: 1, ClientID: "pipeline-test",
		CleanSession: true, Username: string(bus.RoleDashboard), Password: p.Credentials[bus.RoleDashboard],
	})
}

// devicesSeen waits until readings of n distinct devices arrived.
func devicesSeen(t *testing.T, col *testkit.Collector, n int) {
	t.Helper()
	testkit.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		seen := map[string]bool{}
		for _, m := range col.Messages() {
			seen[strings.Split(m.Topic, "/")[1]] = true
		}
		if len(seen) < n {
			return fmt.Errorf("readings of %d devices of %d", len(seen), n)
		}
		return nil
	})
}

// TestSimulate: the zero options plus simulated devices are a working
// pipeline, every device's readings reach the embedded broker, and a
// cancellation drains without error.
func TestSimulate(t *testing.T) {
	const devices = 6 // legacy pico, legacy pseudo and v2, twice
	ctx, cancel := context.WithCancel(t.Context())
	var logs testkit.SyncBuffer
	o := pipeline.Options{Simulate: devices, Rate: 10, DataDir: t.TempDir(), NATSPort: -1, MQTTPort: -1, MonitorPort: -2, Log: slog.New(slog.NewTextHandler(&logs, nil))}
	o.Ingest.Listen = "127.0.0.1:0"
	p, err := pipeline.New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	devicesSeen(t, collect(t, p), devices)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v after cancellation\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("pipeline did not drain within 30 s")
	}
}

// TestRegistryIsLive: a device added to the registry while the pipeline
// runs is decrypted at once (the pipeline reads keys from the registry,
// not from its options), and one seeded from Keys works from the start.
func TestRegistryIsLive(t *testing.T) {
	seeded, err := simulator.LoadOrCreateKeys(t.TempDir()+"/keys.jsonl", 1, "seeded")
	if err != nil {
		t.Fatal(err)
	}
	p, logs := start(t, pipeline.Options{Keys: seeded})
	col := collect(t, p)

	nc, err := nats.Connect(p.Server.ClientURL(), nats.UserInfo(string(bus.RoleAdmin), p.Credentials[bus.RoleAdmin]))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.Open(t.Context(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	added, err := reg.Add(t.Context(), "added-live")
	if err != nil {
		t.Fatal(err)
	}
	fleet, err := simulator.NewFleet(simulator.Options{
		Server: p.Edge.Addr().String(), Rate: 10, Log: slog.New(slog.NewTextHandler(logs, nil)),
		Devices: []simulator.Device{legacy(t, seeded[0]), legacy(t, added.Device())},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go fleet.Run(ctx)
	devicesSeen(t, col, 2)
}

func legacy(t *testing.T, d wire.Device) simulator.Device {
	sd, err := simulator.Assign(d, 0, "legacy", "pico")
	if err != nil {
		t.Fatal(err)
	}
	return sd
}

// TestPortTaken: a taken port is a *bus.PortError naming the listener, so
// that the CLI can name its flag.
func TestPortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	busy := l.Addr().(*net.TCPAddr).Port
	for _, tc := range []struct {
		listener string
		o        pipeline.Options
	}{
		{"nats", pipeline.Options{NATSPort: busy, MQTTPort: -1, MonitorPort: -2}},
		{"mqtt", pipeline.Options{NATSPort: -1, MQTTPort: busy, MonitorPort: -2}},
		{"monitoring", pipeline.Options{NATSPort: -1, MQTTPort: -2, MonitorPort: busy}},
	} {
		t.Run(tc.listener, func(t *testing.T) {
			tc.o.DataDir = t.TempDir()
			_, err := pipeline.New(t.Context(), tc.o)
			var pe *bus.PortError
			if !errors.As(err, &pe) || pe.Listener != tc.listener {
				t.Fatalf("got %v, want a *bus.PortError of %s", err, tc.listener)
			}
		})
	}
}
