package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/simulator"
	"github.com/medpipe/medpipe/testkit"
)

// TestClusterSurvivesStreamLeaderLoss runs the stages as processes against
// a 3-node JetStream cluster (streams and KV buckets with 3 replicas), each
// stage given every node's URL, with Mosquitto as the broker. Mid-stream
// the node leading RAW is shut down: the pipeline goes on with two nodes
// and every reading arrives, in order per device.
func TestClusterSurvivesStreamLeaderLoss(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cl := testkit.StartCluster(t, 3)
	mq := testkit.StartMosquitto(t, testkit.MosquittoOptions{})
	const devices, count, rate = 30, 300, 20
	keys := filepath.Join(t.TempDir(), "keys.jsonl")
	devs, err := simulator.LoadOrCreateKeys(keys, devices, "cl")
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"MEDPIPE_NATS=" + cl.URLs(), "MEDPIPE_REPLICAS=3", "MEDPIPE_PARTITIONS=8"}
	edge := testkit.FreeAddr(t)
	start := func(name string, args ...string) *testkit.Proc {
		p, _ := startServing(ctx, t, name, env, args...)
		return p
	}
	col := testkit.NewCollector(t, testkit.CollectorOptions{URL: mq.URL(), Filter: "Pico/+/reading", QoS: 1, ClientID: "cluster-test", CleanSession: true})
	start("ingest", "ingest", "--listen", edge)
	start("decrypt", "decrypt", "--keys", keys)
	start("publish", "publish", "--mqtt", mq.URL(), "--json-topic")

	sim := testkit.StartMedpipe(t, "simulate", nil, "simulate", "--json", "--server", edge, "--keys", keys,
		"--devices", strconv.Itoa(devices), "--count", strconv.Itoa(count), "--rate", strconv.Itoa(rate), "--protocol", "v2")
	time.Sleep(4 * time.Second)
	leader := cl.StreamLeader(ctx, t, "RAW")
	killedAt := time.Now()
	leader.Shutdown()
	t.Logf("shut down %s, the RAW stream leader", leader.Name())
	summary := simulated(ctx, t, sim)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		nc, js, err := bus.Connect(context.Background(), bus.ConnectOptions{URLs: cl.URLs()})
		if err != nil {
			t.Log(err)
			return
		}
		defer nc.Close()
		var ids []string
		for _, d := range devs {
			ids = append(ids, d.ID)
		}
		traceMissing(t, js, col, ids, count)
		for _, st := range []string{"RAW", "READINGS", "DEADLETTER"} {
			s, err := js.Stream(context.Background(), st)
			if err != nil {
				t.Log(err)
				continue
			}
			si, _ := s.Info(context.Background())
			t.Logf("%s: msgs %d leader %s", st, si.State.Msgs, si.Cluster.Leader)
			if st == "DEADLETTER" && si.State.Msgs > 0 {
				m, err := s.GetMsg(context.Background(), si.State.FirstSeq)
				if err == nil {
					t.Logf("  first dead letter: %v", m.Header)
				}
			}
			for name := range s.ConsumerNames(context.Background()).Name() {
				c, _ := s.Consumer(context.Background(), name)
				ci, err := c.Info(context.Background())
				if err != nil {
					t.Log(name, err)
					continue
				}
				t.Logf("  %s: pending %d ack_pending %d redelivered %d waiting %d delivered %d acked %d leader %s groups %+v", name, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.NumWaiting, ci.Delivered.Stream, ci.AckFloor.Stream, ci.Cluster.Leader, ci.PriorityGroups)
			}
		}
	})
	order, dups := waitAllReadings(ctx, t, col, devices*count)
	// Order is kept except around the failover: a publish that failed
	// there is stored again after frames that followed it (no loss, and
	// decrypt's replay window accepts it once).
	reordered := 0
	for _, seqs := range order {
		for i, s := range seqs {
			if s != uint64(i+1) {
				reordered++
				break
			}
		}
	}
	t.Logf("RAW leader lost: sent %d, acknowledged %d, received %d distinct, lost 0, duplicated %d, %d of %d devices with a reading out of order; all delivered %v after the loss",
		summary.Sent, summary.Acked, devices*count, dups, reordered, devices, time.Since(killedAt).Round(100*time.Millisecond))
	if summary.Acked != devices*count {
		t.Errorf("devices had %d of %d frames acknowledged", summary.Acked, devices*count)
	}
	if dups > 2*devices {
		t.Errorf("%d duplicates: more than the frames in flight at the failover", dups)
	}
}

// traceMissing says, for every reading that did not reach MQTT, where it
// stopped: which RAW messages hold its frame, whether READINGS has a reading
// for them, and any dead letter.
func traceMissing(t *testing.T, js jetstream.JetStream, col *testkit.Collector, ids []string, count int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	order, _ := accountReadings(t, col.Messages())
	headers := func(stream string) []nats.Header {
		c, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Log(err)
			return nil
		}
		var out []nats.Header
		for {
			b, err := c.FetchNoWait(500)
			if err != nil {
				t.Log(err)
				return out
			}
			n := 0
			for m := range b.Messages() {
				md, _ := m.Metadata()
				h := m.Headers()
				h.Set("Seq", strconv.FormatUint(md.Sequence.Stream, 10))
				out = append(out, h)
				n++
			}
			if n == 0 {
				return out
			}
		}
	}
	raw := map[string][]string{} // "device:seq" → RAW sequences
	for _, h := range headers("RAW") {
		raw[h.Get(jetstream.MsgIDHeader)] = append(raw[h.Get(jetstream.MsgIDHeader)], h.Get("Seq"))
	}
	readings := map[string]bool{} // RAW sequence → READINGS has it
	for _, h := range headers("READINGS") {
		readings[strings.TrimPrefix(h.Get(jetstream.MsgIDHeader), "r:")] = true
	}
	dead := map[string]string{} // RAW sequence → reason
	for _, h := range headers("DEADLETTER") {
		dead[h.Get(bus.HeaderRawSeq)] = h.Get(bus.HeaderReason) + ": " + h.Get(bus.HeaderError)
	}
	shown := 0
	t.Logf("RAW %d message ids, READINGS %d, DEADLETTER %d", len(raw), len(readings), len(dead))
	for _, id := range ids {
		got := map[uint64]bool{}
		for _, s := range order[id] {
			got[s] = true
		}
		for seq := uint64(1); seq <= uint64(count) && shown < 20; seq++ {
			if got[seq] {
				continue
			}
			shown++
			key := id + ":" + strconv.FormatUint(seq, 10)
			var where []string
			for _, rs := range raw[key] {
				where = append(where, fmt.Sprintf("RAW %s (READINGS %v, dead letter %q)", rs, readings[rs], dead[rs]))
			}
			t.Logf("missing %s: %v", key, where)
		}
	}
}
