package decrypt

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

// runBatchingWorker starts a worker that gathers up to batch readings of
// a partition in one READINGS message.
func runBatchingWorker(t *testing.T, js jetstream.JetStream, devs []wire.Device, batch int) *Worker {
	t.Helper()
	w, err := New(js, Options{Keys: devs, Partitions: parts, ReadingsBatch: batch, Metrics: prometheus.NewRegistry(), DrainTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	}))
	return w
}

// batchedReadings reads READINGS until it holds want readings, decoding
// batches, and fails on more.
func batchedReadings(t *testing.T, js jetstream.JetStream, want int) (rs []bus.KeyedReading, msgs, largest int) {
	t.Helper()
	rs = readReadings(t, js, want, func(m jetstream.Msg, got []bus.KeyedReading) {
		meta, _ := m.Metadata()
		if !bus.IsReadingBatch(m.Data()) || !strings.HasSuffix(m.Subject(), ".~batch") {
			t.Fatalf("READINGS message %d on %s is not a batch", meta.Sequence.Stream, m.Subject())
		}
		if id := m.Headers().Get(jetstream.MsgIDHeader); id != "r:"+strconv.FormatUint(got[0].RawSeq, 10)+"-"+strconv.FormatUint(got[len(got)-1].RawSeq, 10) {
			t.Fatalf("batch of RAW %d-%d has message id %q", got[0].RawSeq, got[len(got)-1].RawSeq, id)
		}
		msgs++
		largest = max(largest, len(got))
	})
	return rs, msgs, largest
}

// readReadings reads READINGS until it holds want readings, single or
// batched, calling check on each message with its readings; more readings
// than want is a failure.
func readReadings(t *testing.T, js jetstream.JetStream, want int, check func(jetstream.Msg, []bus.KeyedReading)) []bus.KeyedReading {
	t.Helper()
	c, err := js.OrderedConsumer(t.Context(), bus.StreamReadings, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var rs []bus.KeyedReading
	for len(rs) < want {
		m, err := c.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("READINGS: %d of %d readings: %v", len(rs), want, err)
		}
		got, err := bus.DecodeReadings(m.Data(), m.Headers())
		if err != nil {
			t.Fatal(err)
		}
		if check != nil {
			check(m, got)
		}
		rs = append(rs, got...)
	}
	if len(rs) > want {
		t.Fatalf("READINGS: %d readings, want %d", len(rs), want)
	}
	if m, err := c.Next(jetstream.FetchMaxWait(300 * time.Millisecond)); err == nil {
		t.Fatalf("READINGS: extra message %s", m.Subject())
	}
	return rs
}

// checkOnceInOrder fails on a reading stored twice (by connection and
// value) or out of its connection's order.
func checkOnceInOrder(t *testing.T, rs []bus.KeyedReading) {
	t.Helper()
	seen := map[string]bool{}
	last := map[string]uint64{}
	for _, r := range rs {
		key := r.Conn + "/" + r.Values.PulseSig
		if seen[key] {
			t.Fatalf("reading %s stored twice", key)
		}
		seen[key] = true
		if r.FrameSeq <= last[r.Conn] {
			t.Fatalf("%s: frame %d after %d", r.Conn, r.FrameSeq, last[r.Conn])
		}
		last[r.Conn] = r.FrameSeq
	}
}

// TestWorkerBatchesReadings: frames that are ready together are stored a
// batch a partition's pull, every reading once, in order per connection,
// and RAW is left acknowledged; batches never exceed the bound.
func TestWorkerBatchesReadings(t *testing.T) {
	for _, batch := range []int{64, 5} {
		t.Run(strconv.Itoa(batch), func(t *testing.T) {
			js := setup(t)
			devs := loadKeys(t)
			const n, conns = 100, 8
			for i := 1; i <= n; i++ {
				for c := range conns {
					publishRaw(t, js, fmt.Sprintf("conn-%d", c), i, wireFrame(devs[c%len(devs)], wire.Pico+wire.Variant(c%2), i))
				}
			}
			w := runBatchingWorker(t, js, devs, batch)
			rs, msgs, largest := batchedReadings(t, js, n*conns)
			waitRawDone(t, js)
			checkOnceInOrder(t, rs)
			if msgs*2 > len(rs) {
				t.Errorf("%d readings in %d READINGS messages: not gathered", len(rs), msgs)
			}
			var h dto.Metric
			if err := w.m.batchSize.Write(&h); err != nil {
				t.Fatal(err)
			}
			if c, s := h.GetHistogram().GetSampleCount(), h.GetHistogram().GetSampleSum(); c != uint64(msgs) || s != float64(len(rs)) {
				t.Errorf("medpipe_decrypt_readings_per_message: %d messages, %v readings; want %d, %d", c, s, msgs, len(rs))
			}
			if largest > batch {
				t.Errorf("a READINGS message of %d readings, over the bound of %d", largest, batch)
			}
			t.Logf("%d readings in %d READINGS messages (at most %d each)", len(rs), msgs, batch)
		})
	}
}

// TestBatchingWorkersShareTheStream: two batching workers on the same
// durable consumers (each partition pinned to one of them) store every
// reading once, in order per connection, whatever they gather.
func TestBatchingWorkersShareTheStream(t *testing.T) {
	js := setup(t)
	devs := loadKeys(t)
	runBatchingWorker(t, js, devs, DefaultReadingsBatch)
	runBatchingWorker(t, js, devs, DefaultReadingsBatch)
	const n, conns = 100, 8
	for i := 1; i <= n; i++ {
		for c := range conns {
			publishRaw(t, js, fmt.Sprintf("conn-%d", c), i, wireFrame(devs[c%len(devs)], wire.Pico+wire.Variant(c%2), i))
		}
	}
	rs, msgs, _ := batchedReadings(t, js, n*conns)
	checkOnceInOrder(t, rs)
	waitRawDone(t, js)
	t.Logf("%d readings in %d READINGS messages", len(rs), msgs)
}
