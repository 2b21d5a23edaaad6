package ingest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// TestRawRollsAtItsSizeLimit: RAW at --raw-max-bytes drops its oldest
// frames (a rolling archive) and keeps taking new ones: devices see no
// error and nothing stalls.
func TestRawRollsAtItsSizeLimit(t *testing.T) {
	const limit = 64 << 10
	js, parts := startStore(t, 0, bus.StreamOptions{Partitions: 2, RawMaxBytes: limit})
	edge := runEdge(t, js, Options{Listen: "127.0.0.1:0", Partitions: parts, MaxFrameRate: -1})
	c, err := net.Dial("tcp", edge.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 1500 // about 400 KB of frames
	var all []byte
	for i := range n {
		all = append(all, frame(i)...)
	}
	if _, err := c.Write(all); err != nil {
		t.Fatal(err)
	}
	raw, err := js.Stream(t.Context(), bus.StreamRaw)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := raw.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if info.State.LastSeq == n {
			if info.State.Bytes > limit || info.State.FirstSeq == 1 {
				t.Fatalf("RAW holds %d bytes from seq %d: not rolling at %d bytes", info.State.Bytes, info.State.FirstSeq, limit)
			}
			t.Logf("RAW at its limit: %d frames sent, the newest %d kept in %d bytes", n, info.State.Msgs, info.State.Bytes)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("RAW took %d of %d frames", info.State.LastSeq, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := testutil.ToFloat64(edge.m.publishErrors); got != 0 {
		t.Fatalf("%v publish errors at the size limit", got)
	}
}

// TestStoreFullSlowsDevicesLosesNothing: when the JetStream store itself
// is full (nats-server's max store, or the disk), RAW refuses frames. The
// edge keeps each frame and retries it, logs why, counts it, and sends a v2
// device no ACK, so the device holds its frames; once space is freed every
// frame is stored and acknowledged, in order, none lost.
func TestStoreFullSlowsDevicesLosesNothing(t *testing.T) {
	js, parts := startStore(t, 4<<20, bus.StreamOptions{Partitions: 2, RawMaxBytes: -1})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// Fill the store with another stream's data.
	ballast, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BALLAST", Subjects: []string{"ballast"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := js.Publish(ctx, "ballast", chunk); err != nil {
			break // full
		}
	}
	var logs testkit.SyncBuffer
	edge := runEdge(t, js, Options{Listen: "127.0.0.1:0", Partitions: parts, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	c, err := net.Dial("tcp", edge.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 20
	for seq := uint64(1); seq <= n; seq++ {
		if _, err := c.Write(v2Frame(t, seq)); err != nil {
			t.Fatal(err)
		}
	}
	// The device hears nothing while the store is full.
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("the edge replied while the store was full")
	}
	testkit.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if testutil.ToFloat64(edge.m.publishRetries) == 0 {
			return errors.New("the edge has not retried a publish to the full store")
		}
		return nil
	})
	if !strings.Contains(logs.String(), "RAW is not taking frames") {
		t.Fatalf("no log line says why the devices are slowed:\n%s", logs.String())
	}
	// Space comes back: everything is stored, in order (decrypt then
	// acknowledges each; nothing from the edge says "stored").
	if err := ballast.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	for i, m := range rawMessages(t, js, n) {
		if f, err := wire.ParseV2(m.Data()); err != nil || f.Seq != uint64(i+1) {
			t.Fatalf("RAW message %d: %+v %v", i, f, err)
		}
	}
	t.Logf("store full: %v publish errors, %v retries, then all %d frames stored", testutil.ToFloat64(edge.m.publishErrors), testutil.ToFloat64(edge.m.publishRetries), n)
}

// startStore starts an embedded JetStream with a store bound (0: none) and
// medpipe's streams as configured, for one test.
func startStore(t *testing.T, maxStore int64, so bus.StreamOptions) (jetstream.JetStream, int) {
	t.Helper()
	e, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, MQTTPort: -2, HTTPPort: -2, StoreDir: t.TempDir(), MaxStore: maxStore})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	nc, js, err := bus.Connect(t.Context(), bus.ConnectOptions{URLs: e.ClientURL()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	parts, err := bus.ApplyStreams(t.Context(), js, so)
	if err != nil {
		t.Fatal(err)
	}
	return js, parts
}

// runEdge runs an edge on js until the test ends.
func runEdge(t *testing.T, js jetstream.JetStream, o Options) *Edge {
	t.Helper()
	o.Metrics = prometheus.NewRegistry()
	edge, err := New(js, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- edge.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return edge
}
