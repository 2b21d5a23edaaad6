package e2e

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/firmware/device"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// TestReflashLostEpoch: the pipeline has accepted frame 5,000 of this
// device's boot epoch 1 (its previous firmware, or the unit it replaces),
// and the device boots on a flash without its boot-epoch record, so at
// epoch 1 again. decrypt refuses its frames as `replayed`; the device
// persists a new epoch, seals the refused readings again under it, and
// every reading reaches MQTT.
func TestReflashLostEpoch(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	cfg := testConfig(device.ProtocolV2)
	p := startPipeline(t, cfg.Device)
	// The predecessor's frame, sealed with the device's key.
	key := wire.NewV2Key(cfg.Device)
	payload, err := wire.AppendV2Payload(nil, &wire.V2Payload{Time: time.Now().UnixMilli(), Values: wire.V2Values{Temp: 36.6}})
	if err != nil {
		t.Fatal(err)
	}
	old, err := key.SealData(nil, wire.V2Seq(1, 5000), payload)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", p.edge)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(old); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	ack, err := wire.ReadV2Frame(c, nil, 1024)
	if err != nil {
		t.Fatalf("the predecessor's frame: %v", err)
	}
	if f, err := wire.ParseV2(ack); err != nil || f.Type != wire.V2Ack || !key.VerifyReply(&f, old) {
		t.Fatalf("the predecessor's frame was not acknowledged: %x %v", ack, err)
	}

	const readings = 20
	fb := newBoard(t, p.edge) // a fresh flash: boot epoch 1 again
	d := device.New(fb.Board, device.Options{Readings: readings})
	if err := d.Work(ctx, cfg); err != nil {
		t.Fatalf("working mode: %v (stats %+v)", err, d.Stats)
	}
	if d.Stats.Replayed == 0 || d.Stats.Dropped != 0 || d.Stats.Acked != readings {
		t.Fatalf("stats %+v: want frames refused as replayed, none dropped, all %d acknowledged", d.Stats, readings)
	}
	got := p.waitReadings(ctx, t, cfg.Device.ID, readings+1)
	times := map[time.Time]bool{}
	for _, r := range got {
		if r.Seq == wire.V2Seq(1, 5000) {
			continue
		}
		if e := wire.V2SeqEpoch(r.Seq); e < 2 {
			t.Errorf("a reading of epoch %d reached MQTT: %+v", e, r)
		}
		times[r.DeviceTime] = true
	}
	if len(times) != readings {
		t.Fatalf("%d distinct readings of the reflashed device reached MQTT, want %d", len(times), readings)
	}
	checkValues(t, got[len(got)-1])
	t.Logf("stats %+v", d.Stats)
}

// TestRevokedKeyHalts revokes the device's key with `medpipe keys revoke`
// while it runs: decrypt refuses its frames as `revoked` (a reply made with
// its key), and the device stops sending, keeping its readings.
func TestRevokedKeyHalts(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	cfg := testConfig(device.ProtocolV2)
	p := startPipeline(t, cfg.Device)
	fb := newBoard(t, p.edge)
	d := device.New(fb.Board, device.Options{})
	done := make(chan error, 1)
	go func() { done <- d.Work(ctx, cfg) }()
	p.waitReadings(ctx, t, cfg.Device.ID, 10)
	out, err := exec.CommandContext(ctx, testkit.MedpipeBinary(t), "keys", "revoke", cfg.Device.ID, "--nats", p.natsURL,
		"--nats-credentials-dir", filepath.Join(p.dataDir, bus.CredentialsDir)).CombinedOutput()
	if err != nil {
		t.Fatalf("medpipe keys revoke: %v\n%s", err, out)
	}
	for !d.Halted() {
		select {
		case err := <-done:
			t.Fatalf("working mode ended: %v", err)
		case <-ctx.Done():
			t.Fatal("the device kept sending after its key was revoked")
		case <-time.After(50 * time.Millisecond):
		}
	}
	// A revoked device's frames never reach MQTT; what the device sends
	// shows on the fake ESP8266's UART: a reading's worth in flight at
	// most, where 2 s of sending would be about 40 frames.
	before := fb.mod.Link().ToModule
	time.Sleep(2 * time.Second)
	sentBytes := fb.mod.Link().ToModule - before
	cancel()
	<-done
	if sentBytes > 3*150 {
		t.Fatalf("a halted device wrote %d bytes to its modem in 2 s", sentBytes)
	}
	if d.Stats.Halts == 0 {
		t.Fatalf("stats %+v", d.Stats)
	}
	t.Logf("stats %+v", d.Stats)
}
