package e2e

import (
	"context"
	"encoding/json"
	"syscall"
	"testing"
	"time"

	"github.com/medpipe/medpipe/simulator"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// jsonTopicReading is the payload of Pico/<id>/reading.
type jsonTopicReading struct {
	Seq    uint64 // v2 only
	Device string
	Values struct {
		Temp, TempMcu, TempMpu string
		AcelZ                  string `json:"Acel_z"`
	}
}

// accountReadings decodes the simulator's sequence numbers from the JSON
// topic and returns, per device, first occurrences in arrival order and the
// number of duplicates.
func accountReadings(t *testing.T, msgs []testkit.Message) (map[string][]uint64, int) {
	t.Helper()
	order := map[string][]uint64{}
	seen := map[string]map[uint64]bool{}
	dups := 0
	for _, m := range msgs {
		var r jsonTopicReading
		if err := json.Unmarshal([]byte(m.Payload), &r); err != nil {
			t.Fatalf("%s: %v", m.Topic, err)
		}
		// A v2 reading carries its frame's sequence number (boot epoch ‖
		// counter: the counter is the simulator's reading number); its
		// values are numbers reformatted, which can lose the digits
		// EncodeSeq set.
		seq, ok := uint64(wire.V2SeqCounter(r.Seq)), r.Seq != 0
		if !ok {
			seq, ok = simulator.DecodeSeq([4]string{r.Values.Temp, r.Values.TempMcu, r.Values.AcelZ, r.Values.TempMpu})
		}
		if !ok {
			t.Fatalf("no sequence in %s", m.Payload)
		}
		if seen[r.Device] == nil {
			seen[r.Device] = map[uint64]bool{}
		}
		if seen[r.Device][seq] {
			dups++
			continue
		}
		seen[r.Device][seq] = true
		order[r.Device] = append(order[r.Device], seq)
	}
	return order, dups
}

// waitAllReadings waits until total distinct readings arrived on the JSON
// topic, lets stragglers come in, and accounts for them.
func waitAllReadings(ctx context.Context, t *testing.T, col *testkit.Collector, total int) (map[string][]uint64, int) {
	t.Helper()
	for {
		order, _ := accountReadings(t, col.Messages())
		distinct := 0
		for _, o := range order {
			distinct += len(o)
		}
		if distinct == total {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d of %d distinct readings reached MQTT", distinct, total)
		case <-time.After(200 * time.Millisecond):
		}
	}
	time.Sleep(time.Second) // duplicates would arrive now
	return accountReadings(t, col.Messages())
}

// TestDecryptFailoverKill9 runs four decrypt and two publish processes, kills one decrypt with
// SIGKILL mid-stream, and checks that every reading reaches MQTT, in order
// per device except readings in flight at the kill (bounded); duplicates are
// counted and bounded.
func TestDecryptFailoverKill9(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 150*time.Second)
	defer cancel()
	const devices, count = 40, 300
	c := newStageCluster(ctx, t, 16, devices, "fo")
	col := c.collector("Pico/+/reading", "failover")
	e, keys, edgeAddr, start := c.srv, c.keys, c.edge, c.start
	start("ingest", "ingest", "--listen", edgeAddr, "--raw-batch", rawBatched)
	var decrypts []*testkit.Proc
	for i := range 4 {
		decrypts = append(decrypts, start("decrypt-"+string(rune('1'+i)), "decrypt", "--keys", keys, "--readings-batch", batched))
	}
	start("publish-1", "publish", "--mqtt", e.MQTTURL(), "--json-topic")
	start("publish-2", "publish", "--mqtt", e.MQTTURL(), "--json-topic")

	sim := testkit.StartMedpipe(t, "simulate", nil, "simulate", "--json", "--server", edgeAddr, "--keys", keys, "--devices", "40", "--count", "300", "--rate", "20")
	time.Sleep(5 * time.Second)
	if err := decrypts[0].Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	if err := sim.Wait(ctx, t); err != nil {
		t.Fatalf("simulate: %v", err)
	}
	order, dups := waitAllReadings(ctx, t, col, devices*count)
	// Readings in flight in the killed worker are redelivered when its
	// partitions move; the new worker can be handed a few newer ones first.
	for _, d := range c.devs {
		if got := len(order[d.ID]); got != count {
			t.Errorf("%s: %d distinct readings, want %d", d.ID, got, count)
		}
	}
	reordered, worst := assertDisplacement(t, order, maxDisplacement)
	t.Logf("decrypt-1 killed with SIGKILL; all %d readings arrived %v after the kill; %d duplicates on MQTT; %d of %d devices with readings out of order, at most %d places",
		devices*count, time.Since(killedAt).Round(time.Second), dups, reordered, devices, worst)
	assertFewDuplicates(t, dups, devices*count)
}
