package e2e

import (
	"context"
	"crypto/rand"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/simulator"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// v2Pipeline is an in-process pipeline (embedded nats-server with
// JetStream and MQTT) whose decrypt keeps v2 marks.
func v2Pipeline(t *testing.T, devs []wire.Device) (*pipeline, jetstream.KeyValue) {
	t.Helper()
	var seqs jetstream.KeyValue
	p := startPipelineWith(t, func(e *bus.Embedded) string { return e.MQTTURL() }, func(js jetstream.JetStream, o *decrypt.Options) {
		var err error
		if seqs, err = bus.OpenSeqStore(t.Context(), js, 1); err != nil {
			t.Fatal(err)
		}
		o.Keys, o.Seqs = devs, seqs
	})
	return p, seqs
}

// runV2Fleet runs simulated v2 devices until each has sent count readings
// and had them acknowledged (or ctx ends), and returns the fleet's stats.
func runV2Fleet(ctx context.Context, t *testing.T, addr string, devs []wire.Device, count int, epoch uint32) simulator.Stats {
	t.Helper()
	sims := make([]simulator.Device, len(devs))
	for i, d := range devs {
		sims[i] = simulator.Device{Device: d, V2: true}
	}
	f, err := simulator.NewFleet(simulator.Options{Server: addr, Devices: sims, Rate: 20, Count: count, Epoch: epoch})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Run(ctx); err != nil {
		t.Fatalf("fleet: %v (stats %+v)", err, f.Stats())
	}
	return f.Stats()
}

// deadLetters counts DEADLETTER messages by reason.
func deadLetters(ctx context.Context, t *testing.T, js jetstream.JetStream) map[string]int {
	t.Helper()
	out := map[string]int{}
	s, err := js.Stream(ctx, bus.StreamDeadLetter)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		out[m.Header.Get(bus.HeaderReason)]++
	}
	return out
}

// readingsOf counts READINGS messages of device.
func readingsOf(ctx context.Context, t *testing.T, js jetstream.JetStream, device string) int {
	t.Helper()
	s, err := js.Stream(ctx, bus.StreamReadings)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(bus.SubjectReadingsPrefix+"*."+device))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range info.State.Subjects {
		n += int(c)
	}
	return n
}

func v2Devices(n int, prefix string) []wire.Device {
	var out []wire.Device
	for _, d := range makeDevices(n, wire.Pico, prefix) {
		out = append(out, d.dev)
	}
	return out
}

// TestV2KeylessSuppressionLosesNothing: an attacker without the key sends
// DATA frames with a live device's coming sequence numbers and random
// bytes before the device does. Every one of the device's readings still
// reaches MQTT, and the forgeries are dead letters.
func TestV2KeylessSuppressionLosesNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	defer cancel()
	devs := v2Devices(1, "victim")
	p, _ := v2Pipeline(t, devs)
	col := testkit.NewCollector(t, testkit.CollectorOptions{URL: p.server.MQTTURL(), Filter: "Pico/+/" + wire.Fields[wire.Temp].Topic, QoS: 1, ClientID: "suppress", CleanSession: true})
	const n = 100
	epoch := uint32(time.Now().Unix())
	// The forger knows the id and guesses the epoch right.
	c, err := net.Dial("tcp", p.edge.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := uint32(1); i <= n; i++ {
		id := devs[0].ID
		body := make([]byte, 60)
		_, _ = rand.Read(body)
		frame := []byte{wire.V2Magic, wire.V2Version, wire.V2Data, 0, 0, byte(len(id))}
		frame = append(frame, id...)
		seq := wire.V2Seq(epoch, i)
		for s := 56; s >= 0; s -= 8 {
			frame = append(frame, byte(seq>>s))
		}
		frame = append(frame, body...)
		frame[3], frame[4] = byte((len(frame)-5)>>8), byte(len(frame)-5)
		if _, err := c.Write(frame); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 30*time.Second, func() bool { return deadLetters(ctx, t, p.js)[string(bus.ReasonTampered)] >= n })
	st := runV2Fleet(ctx, t, p.edge.Addr().String(), devs, n, epoch)
	if st.Acked != n || st.Dropped != 0 {
		t.Fatalf("fleet %+v, want %d acknowledged", st, n)
	}
	if err := col.WaitLen(ctx, n); err != nil {
		t.Fatalf("%d of %d readings reached MQTT: %v", col.Len(), n, err)
	}
	if got := readingsOf(ctx, t, p.js, devs[0].ID); got != n {
		t.Fatalf("READINGS holds %d of the device's readings, want %d", got, n)
	}
	t.Logf("%d forged frames for the coming sequence numbers: all %d genuine readings on MQTT, dead letters %v", n, n, deadLetters(ctx, t, p.js))
}

// TestV2RestartedSimulatorFlows: a simulator restarted from nothing (no
// state at all: its epoch comes from the clock) flows again at once with
// nothing refused; a device whose epoch went back is refused as replayed,
// acts on the verified refusal by moving to a new epoch, and flows again.
func TestV2RestartedSimulatorFlows(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	defer cancel()
	devs := v2Devices(2, "restart")
	p, _ := v2Pipeline(t, devs)
	addr := p.edge.Addr().String()
	const n = 40
	runV2Fleet(ctx, t, addr, devs, n, 0)
	time.Sleep(1100 * time.Millisecond) // the next start is in a later second
	start := time.Now()
	st := runV2Fleet(ctx, t, addr, devs, n, 0)
	if st.Acked != 2*n || st.Dropped != 0 {
		t.Fatalf("restarted fleet %+v", st)
	}
	for _, d := range devs {
		if got := readingsOf(ctx, t, p.js, d.ID); got != 2*n {
			t.Fatalf("%s: %d readings, want %d", d.ID, got, 2*n)
		}
	}
	if dl := deadLetters(ctx, t, p.js); dl[string(bus.ReasonReplayed)] != 0 {
		t.Fatalf("dead letters after a restart from nothing: %v", dl)
	}
	t.Logf("restarted from zero state: %d readings acknowledged in %v, nothing refused", 2*n, time.Since(start).Round(time.Millisecond))

	// An epoch that went back (a unit whose epoch record was lost):
	// refused, then the device starts a new epoch and its readings flow.
	st = runV2Fleet(ctx, t, addr, devs[:1], n, 1)
	dl := deadLetters(ctx, t, p.js)
	if dl[string(bus.ReasonReplayed)] == 0 {
		t.Fatalf("an epoch gone back was not refused: %v", dl)
	}
	want := 2*n + n - dl[string(bus.ReasonReplayed)]
	if got := readingsOf(ctx, t, p.js, devs[0].ID); got != want {
		t.Fatalf("%s: %d readings, want %d (%d refused)", devs[0].ID, got, want, dl[string(bus.ReasonReplayed)])
	}
	t.Logf("epoch gone back: %d frames refused as replayed and dropped by the device on the verified refusal, the rest flowed (%+v)", dl[string(bus.ReasonReplayed)], st)
}

// TestV2DeletedMarkAndReset: deleting the mark checkpoints by hand while a
// device sends is treated as absent checkpoints (no livelock, nothing
// lost: the partition's owner writes them again from its marks), and the
// operator's reset lets a device whose sequence went back flow again.
func TestV2DeletedMarkAndReset(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	defer cancel()
	devs := v2Devices(1, "mark")
	p, seqs := v2Pipeline(t, devs)
	addr := p.edge.Addr().String()
	const n = 100
	done := make(chan simulator.Stats, 1)
	go func() { done <- runV2Fleet(ctx, t, addr, devs, n, 0) }()
	waitUntil(t, 30*time.Second, func() bool { return readingsOf(ctx, t, p.js, devs[0].ID) >= 20 })
	deleted := 0
	for range 2 { // and again once the owner has written them again
		kl, err := seqs.ListKeysFiltered(ctx, "ckpt.>")
		if err != nil {
			t.Fatal(err)
		}
		for k := range kl.Keys() {
			if err := seqs.Delete(ctx, k); err != nil {
				t.Fatal(err)
			}
			deleted++
		}
		time.Sleep(1500 * time.Millisecond)
	}
	if deleted < 2 {
		t.Fatalf("%d checkpoints deleted: the owner did not write them again", deleted)
	}
	st := <-done
	if st.Acked != n {
		t.Fatalf("after the checkpoints were deleted: %+v", st)
	}
	if got := readingsOf(ctx, t, p.js, devs[0].ID); got != n {
		t.Fatalf("%d readings, want %d", got, n)
	}
	// Reset: a mark far ahead of what the device will send next (an epoch
	// from the future, then a unit that starts below it); reset it and the
	// device's frames are accepted at once.
	now := uint32(time.Now().Unix())
	if st := runV2Fleet(ctx, t, addr, devs, 5, now+1000); st.Acked != 5 {
		t.Fatalf("ahead: %+v", st)
	}
	if err := decrypt.ResetMarks(ctx, seqs, devs[0].ID); err != nil {
		t.Fatalf("reset: %v", err)
	}
	time.Sleep(500 * time.Millisecond) // the watch reaches decrypt
	st = runV2Fleet(ctx, t, addr, devs, 20, now+5)
	if st.Acked != 20 || deadLetters(ctx, t, p.js)[string(bus.ReasonReplayed)] != 0 {
		t.Fatalf("after the reset: %+v, dead letters %v", st, deadLetters(ctx, t, p.js))
	}
}

// TestV2DowngradeRefused: a legacy frame recorded while a device was legacy
// is refused as a downgrade once the device has spoken v2; `keys protocol`
// pins a device that never spoke v2.
func TestV2DowngradeRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	defer cancel()
	devs := v2Devices(2, "pin")
	p, seqs := v2Pipeline(t, devs)
	addr := p.edge.Addr().String()
	sendLegacy := func(d wire.Device, frame []byte) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(frame); err != nil {
			t.Fatal(err)
		}
	}
	r := wire.Reading{"36.600", "23.700", "1.700", "0.000", "0.000", "1.000", "23.400"}
	recorded := wire.NewLegacyKey(devs[0]).Seal(nil, wire.Pico, r.AppendJSON(nil))
	sendLegacy(devs[0], recorded) // while the device is legacy: a reading
	waitUntil(t, 30*time.Second, func() bool { return readingsOf(ctx, t, p.js, devs[0].ID) == 1 })
	runV2Fleet(ctx, t, addr, devs[:1], 5, 0) // the device moves to v2
	sendLegacy(devs[0], recorded)            // the recording, replayed
	waitUntil(t, 30*time.Second, func() bool { return deadLetters(ctx, t, p.js)[string(bus.ReasonDowngrade)] == 1 })
	if got := readingsOf(ctx, t, p.js, devs[0].ID); got != 6 {
		t.Fatalf("%d readings, want 6", got)
	}
	// Pinned by the operator before it ever spoke v2.
	if err := decrypt.SetProtocol(ctx, seqs, devs[1].ID, bus.ProtocolV2); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the workers' watch delivers the pin
	sendLegacy(devs[1], wire.NewLegacyKey(devs[1]).Seal(nil, wire.Pico, r.AppendJSON(nil)))
	waitUntil(t, 30*time.Second, func() bool { return deadLetters(ctx, t, p.js)[string(bus.ReasonDowngrade)] == 2 })
	if h := p.worker.Health(); h != nil && !strings.Contains(h.Error(), "replayed") {
		t.Fatalf("health: %v", h)
	}
}

// waitUntil polls cond until it holds, failing after d: a generous bound
// that tells stuck from slow on a busy machine.
func waitUntil(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
