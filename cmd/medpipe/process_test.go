package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/simulator"
	"github.com/medpipe/medpipe/testkit"
)

// TestSeparateProcesses runs the built binary as one ingest, two decrypt
// and one publish process against one nats-server, with the simulator as
// another process, and checks that every reading arrives exactly once.
func TestSeparateProcesses(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	defer cancel()
	e, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, MQTTPort: -1, HTTPPort: -2, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)

	const devices, count = 20, 100
	keys := filepath.Join(t.TempDir(), "keys.jsonl")
	if _, err := simulator.LoadOrCreateKeys(keys, devices, "proc"); err != nil {
		t.Fatal(err)
	}
	col := testkit.NewCollector(t, testkit.CollectorOptions{URL: e.MQTTURL(), Filter: "Pico/#", QoS: 1, ClientID: "proc-test", CleanSession: true})

	env := []string{"MEDPIPE_NATS=" + e.ClientURL(), "MEDPIPE_PARTITIONS=8"}
	edgeAddr := freeAddr(t)
	var procs []*proc
	var healthz []string
	for _, s := range []struct {
		name string
		args []string
	}{
		{"ingest", []string{"ingest", "--listen", edgeAddr}},
		{"decrypt-1", []string{"decrypt", "--keys", keys}},
		{"decrypt-2", []string{"decrypt", "--keys", keys}},
		{"publish", []string{"publish", "--mqtt", e.MQTTURL()}},
	} {
		h := freeAddr(t)
		procs = append(procs, startProc(t, s.name, env, append(s.args, "--http", h)...))
		healthz = append(healthz, h)
	}
	for _, h := range healthz {
		waitHealthy(ctx, t, h)
	}

	sim := startProc(t, "simulate", nil, "simulate", "--json", "--server", edgeAddr, "--keys", keys, "--devices", "20", "--count", "100", "--rate", "50", "--log-format", "json")
	select {
	case err := <-sim.done:
		sim.done <- err
		if err != nil {
			t.Fatalf("simulate: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("simulate did not finish")
	}
	summary := parseSimSummary(t, sim.out.String())
	if summary.Sent != devices*count {
		t.Fatalf("simulator sent %d readings, want %d", summary.Sent, devices*count)
	}

	const perReading = 7
	addrs := 4 * ((count + 49) / 50)
	if err := col.WaitLen(ctx, devices*(count*perReading+addrs)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	perTopic := map[string]int{}
	for _, m := range col.Messages() {
		perTopic[m.Topic]++
	}
	devs, _ := simulator.LoadOrCreateKeys(keys, devices, "proc")
	for _, d := range devs {
		for _, topic := range []string{"Physiological_Data/Temperature", "Physiological_Data/Pulse_Signal", "Physiological_Data/Accelerometer/x", "Internal_Device_Data/Temperature/MPU"} {
			if got := perTopic["Pico/"+d.ID+"/"+topic]; got != count {
				t.Errorf("%s %s: %d messages, want %d exactly once each", d.ID, topic, got, count)
			}
		}
	}
	if total := len(col.Messages()); total != devices*(count*perReading+addrs) {
		t.Errorf("%d messages in all, want %d", total, devices*(count*perReading+addrs))
	}
	for _, p := range procs {
		p.stop(t, 20*time.Second)
	}
}
