package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
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
	// No fixed deadline: on a busy machine a failover can take a minute and
	// still be progressing. The watch fails the test when nothing moved for
	// clusterStall, and the context bounds the whole run for safety.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
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
	nc, js, err := bus.Connect(ctx, bus.ConnectOptions{URLs: cl.URLs(), Name: "cluster-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	col := testkit.NewCollector(t, testkit.CollectorOptions{URL: mq.URL(), Filter: "Pico/+/reading", QoS: 1, ClientID: "cluster-test", CleanSession: true})
	watch := newProgressWatch(t, js, clusterStall, col.Len)
	start := func(name string, args ...string) *testkit.Proc {
		p, addr := startServing(ctx, t, name, env, append(args, "--pprof")...)
		watch.stages[name] = addr
		return p
	}
	start("ingest", "ingest", "--listen", edge, "--raw-batch", rawBatched)
	start("decrypt", "decrypt", "--keys", keys, "--readings-batch", batched)
	start("publish", "publish", "--mqtt", mq.URL(), "--json-topic")

	sim := testkit.StartMedpipe(t, "simulate", nil, "simulate", "--json", "--server", edge, "--keys", keys,
		"--devices", strconv.Itoa(devices), "--count", strconv.Itoa(count), "--rate", strconv.Itoa(rate), "--protocol", "v2")
	watch.until(ctx, "a quarter of the readings before the failover", func() bool { return col.Len() >= devices*count/4 })
	leader := cl.StreamLeader(ctx, t, "RAW")
	killedAt := time.Now()
	leader.Shutdown()
	t.Logf("shut down %s, the RAW stream leader", leader.Name())
	watch.until(ctx, "the simulator to have every frame acknowledged", func() bool {
		select {
		case <-sim.Exited():
			return true
		default:
			return false
		}
	})
	summary := simulated(ctx, t, sim)
	t.Cleanup(func() {
		if t.Failed() {
			var ids []string
			for _, d := range devs {
				ids = append(ids, d.ID)
			}
			traceMissing(t, js, col, ids, count)
		}
	})
	distinct := func() int {
		order, _ := accountReadings(t, col.Messages())
		n := 0
		for _, o := range order {
			n += len(o)
		}
		return n
	}
	watch.until(ctx, fmt.Sprintf("all %d readings on MQTT", devices*count), func() bool { return distinct() == devices*count })
	time.Sleep(time.Second) // duplicates would arrive now
	order, dups := accountReadings(t, col.Messages())
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
	t.Logf("RAW leader lost: sent %d, acknowledged %d, received %d distinct, lost 0, duplicated %d, %d of %d devices with a reading out of order; all delivered %v after the loss; %v frames published again under a new id (theirs was in process)",
		summary.Sent, summary.Acked, devices*count, dups, reordered, devices, time.Since(killedAt).Round(100*time.Millisecond),
		scrape(t, watch.stages["ingest"])["medpipe_ingest_publish_renamed_total"])
	if summary.Acked != devices*count {
		t.Errorf("devices had %d of %d frames acknowledged", summary.Acked, devices*count)
	}
	if dups > 2*devices {
		t.Errorf("%d duplicates: more than the frames in flight at the failover", dups)
	}
}

// clusterStall is how long the cluster test lets the pipeline make no
// progress at all before calling it stuck: longer than an async publish
// lost with its stream leader waits for its ack (bus.PublishAckTimeout)
// plus a redelivery (bus.DefaultAckWait).
const clusterStall = bus.PublishAckTimeout + 4*bus.DefaultAckWait

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

// progressWatch tells a stuck pipeline from a slow one: it samples
// everything that moves when work gets done (messages stored in every
// stream, every consumer's delivered and acknowledged positions, readings
// on MQTT) and fails the test only when none of it changed for stall,
// however long the whole run takes; on a busy machine a failover can take
// a minute and still be making progress. On failure it reports every
// consumer's state and saves the stages' goroutine dumps.
type progressWatch struct {
	t      *testing.T
	js     jetstream.JetStream
	extra  func() int        // e.g. readings on MQTT
	stages map[string]string // stage name → --http address serving /debug/pprof
	stall  time.Duration
	last   string
	moved  time.Time
}

func newProgressWatch(t *testing.T, js jetstream.JetStream, stall time.Duration, extra func() int) *progressWatch {
	return &progressWatch{t: t, js: js, extra: extra, stall: stall, stages: map[string]string{}, moved: time.Now()}
}

// snapshot returns the pipeline's positions as text, and the consumers'
// state for a report.
func (w *progressWatch) snapshot(ctx context.Context) (pos string, state []string) {
	var b strings.Builder
	fmt.Fprintf(&b, "out=%d", w.extra())
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for name := range w.js.StreamNames(ctx).Name() {
		s, err := w.js.Stream(ctx, name)
		if err != nil {
			continue
		}
		si, err := s.Info(ctx)
		if err != nil {
			continue
		}
		fmt.Fprintf(&b, " %s=%d", name, si.State.LastSeq)
		state = append(state, fmt.Sprintf("%s: msgs %d last %d", name, si.State.Msgs, si.State.LastSeq))
		for ci := range s.ListConsumers(ctx).Info() {
			// Acknowledged, not delivered: redeliveries move nothing forward.
			fmt.Fprintf(&b, " %s=%d", ci.Name, ci.AckFloor.Stream)
			leader := ""
			if ci.Cluster != nil {
				leader = ci.Cluster.Leader
			}
			state = append(state, fmt.Sprintf("  %s: pending %d ack_pending %d redelivered %d waiting %d delivered %d acked %d leader %s groups %+v",
				ci.Name, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.NumWaiting, ci.Delivered.Stream, ci.AckFloor.Stream, leader, ci.PriorityGroups))
		}
	}
	return b.String(), state
}

// until polls done every 200 ms and returns once it reports true; it fails
// the test when nothing moved for the watch's stall time.
func (w *progressWatch) until(ctx context.Context, what string, done func() bool) {
	w.t.Helper()
	w.moved = time.Now()
	for !done() {
		pos, state := w.snapshot(context.WithoutCancel(ctx))
		if pos != w.last {
			w.last, w.moved = pos, time.Now()
		}
		stuck := time.Since(w.moved) > w.stall
		if stuck || ctx.Err() != nil {
			if stuck {
				w.t.Logf("stuck waiting for %s: nothing moved for %v; last positions: %s", what, w.stall, pos)
			} else {
				w.t.Logf("still moving but out of time waiting for %s; last positions: %s", what, pos)
			}
			for _, l := range state {
				w.t.Log(l)
			}
			w.dumpStacks()
			w.t.Fatalf("waiting for %s: stuck %v, out of time %v", what, stuck, ctx.Err() != nil)
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// dumpStacks saves every stage's goroutines (served with --pprof) in the
// test's artifact directory, and logs each stage's medpipe goroutines
// grouped by stack, which is where a stuck stage shows what it waits for.
func (w *progressWatch) dumpStacks() {
	dir := w.t.ArtifactDir()
	get := func(addr string, debug int) string {
		resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/goroutine?debug=%d", addr, debug))
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	for name, addr := range w.stages {
		path := filepath.Join(dir, name+"-goroutines.txt")
		_ = os.WriteFile(path, []byte(get(addr, 2)), 0o644)
		var b strings.Builder
		for _, block := range strings.Split(get(addr, 1), "\n\n") {
			lines := strings.Split(block, "\n")
			if !strings.Contains(block, "medpipe/medpipe/") || len(lines) < 2 {
				continue
			}
			fmt.Fprintf(&b, "\n  %s", strings.Fields(lines[0])[0])
			for _, l := range lines[1:] {
				if f := strings.Fields(l); len(f) >= 3 && (strings.Contains(f[2], "medpipe/medpipe/") || l == lines[1]) {
					fmt.Fprintf(&b, " ← %s", f[2][strings.LastIndex(f[2], "/")+1:])
				}
			}
		}
		w.t.Logf("%s goroutines (all saved in %s):%s", name, path, b.String())
	}
}
