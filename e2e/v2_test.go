package e2e

import (
	"context"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/medpipe/medpipe/testkit"
)

// TestV2SurvivesIngestKill9 kills the ingest process with SIGKILL while 100
// v2 devices send, and starts it again: every reading of every device
// reaches MQTT exactly once per sequence number.
func TestV2SurvivesIngestKill9(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 150*time.Second)
	defer cancel()
	const devices, count = 100, 200
	c := newStageCluster(ctx, t, 8, devices, "v2")
	col := c.collector("Pico/+/reading", "v2-kill")
	e, keys, edgeAddr, start := c.srv, c.keys, c.edge, c.start
	ingest := start("ingest", "ingest", "--listen", edgeAddr)
	start("decrypt", "decrypt", "--keys", keys)
	start("publish", "publish", "--mqtt", e.MQTTURL(), "--json-topic")

	sim := testkit.StartMedpipe(t, "simulate", nil, "simulate", "--json", "--server", edgeAddr, "--keys", keys, "--devices", strconv.Itoa(devices), "--count", strconv.Itoa(count), "--rate", "10", "--protocol", "v2")
	time.Sleep(3 * time.Second)
	if err := ingest.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	start("ingest-again", "ingest", "--listen", edgeAddr)
	summary := simulated(ctx, t, sim)
	if summary.Sent != devices*count || summary.Acked != devices*count || summary.Dropped != 0 {
		t.Fatalf("simulator: %+v, want %d sent and acknowledged", summary, devices*count)
	}
	if summary.Reconnects < devices {
		t.Fatalf("only %d reconnects: the kill did not reach the devices", summary.Reconnects)
	}

	order, dups := waitAllReadings(ctx, t, col, devices*count)
	t.Logf("ingest killed with SIGKILL and restarted; %d reconnects; all %d readings arrived; %d duplicates", summary.Reconnects, devices*count, dups)
	assertFewDuplicates(t, dups, devices*count)
	assertInOrder(t, order)
}
