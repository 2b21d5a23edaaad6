package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/medpipe/medpipe/testkit"
)

// TestSeparateProcesses runs the built binary as one ingest, two decrypt
// and one publish process against one nats-server, with the simulator as
// another process, and checks that every reading arrives exactly once.
func TestSeparateProcesses(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	defer cancel()
	const devices, count = 20, 100
	c := newStageCluster(ctx, t, 8, devices, "proc")
	col := c.collector("Pico/#", "proc-test")
	e, keys, edgeAddr := c.srv, c.keys, c.edge
	procs := []*testkit.Proc{
		c.start("ingest", "ingest", "--listen", edgeAddr),
		c.start("decrypt-1", "decrypt", "--keys", keys),
		c.start("decrypt-2", "decrypt", "--keys", keys),
		c.start("publish", "publish", "--mqtt", e.MQTTURL()),
	}

	sim := testkit.StartMedpipe(t, "simulate", nil, "simulate", "--json", "--server", edgeAddr, "--keys", keys, "--devices", "20", "--count", "100", "--rate", "50", "--log-format", "json")
	summary := simulated(ctx, t, sim)
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
	for _, d := range c.devs {
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
		p.Stop(t, 20*time.Second)
	}
}
