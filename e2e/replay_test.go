package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/replay/rawgen"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// writeKeys writes devs as a keys file.
func writeKeys(t *testing.T, devs []rawgen.Device) string {
	t.Helper()
	var b []byte
	for _, d := range rawgen.Keys(devs) {
		b = wire.AppendKeyLine(b, d)
	}
	path := filepath.Join(t.TempDir(), "keys.jsonl")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// recordRaw stores n frames of g in RAW as ingest would and returns them.
func recordRaw(ctx context.Context, t *testing.T, js jetstream.JetStream, g *rawgen.Generator, n int) []rawgen.Frame {
	t.Helper()
	frames, err := g.Store(ctx, js, n)
	if err != nil {
		t.Fatal(err)
	}
	return frames
}

// medpipe runs a medpipe command in-process and returns its output.
func medpipe(ctx context.Context, t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer // run returns before anything else could write
	err := run(ctx, args, &out, &out)
	return out.String(), err
}

// TestReplayMatchesLive records 5 minutes of 50 devices (1 reading/s, on
// an explicit clock) into RAW while the live pipeline publishes them to
// Mosquitto, then replays a 10-second window of two devices (one legacy,
// one v2) with the replay command: exactly that window's readings arrive
// under replay/Pico, with the values MQTT carried live.
func TestReplayMatchesLive(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 150*time.Second)
	defer cancel()
	mosq := testkit.StartMosquitto(t, testkit.MosquittoOptions{})
	devs := rawgen.Devices(50, "dev", 6)
	p := startPipelineWith(t, func(*bus.Embedded) string { return mosq.URL() }, func(js jetstream.JetStream, o *decrypt.Options) {
		o.Keys = rawgen.Keys(devs)
		seqs, err := bus.OpenSeqStore(ctx, js, 1)
		if err != nil {
			t.Fatal(err)
		}
		o.Seqs = seqs
	})
	chosen := []int{6, 8} // dev-007 speaks legacy (pico), dev-009 v2
	for _, i := range chosen {
		if i == 6 && devs[i].Protocol != bus.ProtocolLegacy || i == 8 && devs[i].Protocol != bus.ProtocolV2 {
			t.Fatalf("device %s speaks %s", devs[i].ID, devs[i].Protocol)
		}
	}
	live := map[int]*testkit.Collector{}
	for _, i := range chosen {
		live[i] = testkit.NewCollector(t, testkit.CollectorOptions{URL: mosq.URL(), Filter: "Pico/" + devs[i].ID + "/#", QoS: 1, ClientID: "live-" + devs[i].ID, CleanSession: true})
	}
	replayed := testkit.NewCollector(t, testkit.CollectorOptions{URL: mosq.URL(), Filter: "replay/#", QoS: 1, ClientID: "replayed", CleanSession: true})

	t0 := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	const seconds = 300
	frames := recordRaw(ctx, t, p.js, rawgen.New(rawgen.Options{Devices: devs, Start: t0, Rate: 1, Partitions: 4, Seed: 6}), len(devs)*seconds)
	const perDevice = seconds*7 + (seconds+49)/50*4 // value topics, and addresses on readings 1, 51, …
	for _, i := range chosen {
		if err := live[i].WaitLen(ctx, perDevice); err != nil {
			t.Fatalf("live %s: %v", devs[i].ID, err)
		}
	}

	since, until := t0.Add(123*time.Second), t0.Add(133*time.Second)
	out, err := medpipe(ctx, t, "replay", "--nats", p.server.ClientURL(), "--keys", writeKeys(t, devs),
		"--since", since.Format(time.RFC3339), "--until", until.Format(time.RFC3339),
		"--device", devs[6].ID, "--device", devs[8].ID, "--mqtt", mosq.URL(), "--address-every", "0", "--progress", "off")
	if err != nil {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	if !strings.Contains(out, "readings 20,") || !strings.Contains(out, "dead letters: none") {
		t.Fatalf("replay summary:\n%s", out)
	}
	// Which readings the window holds, per device, by their number.
	inWindow := map[int][]int{}
	for _, f := range frames {
		if !f.Received.Before(since) && f.Received.Before(until) {
			inWindow[f.Device] = append(inWindow[f.Device], int(f.Seq))
		}
	}
	if err := replayed.WaitLen(ctx, 20*7+10); err != nil { // v2 adds the pulse batch
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // anything extra would arrive now
	got := map[string][]string{}
	for _, m := range replayed.Messages() {
		if !strings.HasSuffix(m.Topic, "/"+wire.StatusTopic) {
			got[m.Topic] = append(got[m.Topic], m.Payload)
		}
	}
	want := map[string][]string{}
	for _, i := range chosen {
		if len(inWindow[i]) != 10 {
			t.Fatalf("%s: %d readings in the window, want 10", devs[i].ID, len(inWindow[i]))
		}
		liveTopic := map[string][]string{}
		for _, m := range live[i].Messages() {
			liveTopic[m.Topic] = append(liveTopic[m.Topic], m.Payload)
		}
		for topic, payloads := range liveTopic {
			// Addresses go out every 50 readings, a v2 device's sensor status
			// when it changes: neither is one message a reading.
			if strings.HasSuffix(topic, "_address") || strings.HasSuffix(topic, "/"+wire.StatusTopic) {
				continue
			}
			if len(payloads) != seconds {
				t.Fatalf("live %s: %d messages, want %d", topic, len(payloads), seconds)
			}
			for _, n := range inWindow[i] {
				want["replay/"+topic] = append(want["replay/"+topic], payloads[n-1]) // reading n is the n-th message
			}
		}
	}
	if len(want) != 2*int(wire.NumFields)+1 {
		t.Fatalf("%d value topics live, want %d (every field of 2 devices and dev-009's pulse batch)", len(want), 2*int(wire.NumFields)+1)
	}
	for topic, w := range want {
		if g := got[topic]; strings.Join(g, ",") != strings.Join(w, ",") {
			t.Errorf("%s: replayed %q, live had %q", topic, g, w)
		}
	}
	for topic := range got {
		if _, ok := want[topic]; !ok {
			t.Errorf("unexpected replayed topic %s", topic)
		}
	}
}

// TestArchiveCommands: export → verify → import into a fresh server twice
// (stored once) → replay from the server and from the file give the same
// JSON lines; a damaged file is refused by verify and import with the
// position of the damage, and nothing of it is imported.
func TestArchiveCommands(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	b := testkit.StartBus(t, 4)
	devs := rawgen.Devices(9, "dev", 7)
	t0 := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	const n = 9 * 2 * 60
	recordRaw(ctx, t, b.JS, rawgen.New(rawgen.Options{Devices: devs, Start: t0, Rate: 2, Partitions: 4, Seed: 7}), n)
	dir := t.TempDir()
	file := filepath.Join(dir, "raw.mpa.zst")
	keys := writeKeys(t, devs)

	if out, err := medpipe(ctx, t, "archive", "export", "--nats", b.Server.ClientURL(), "--out", file, "--progress", "off"); err != nil || !strings.Contains(out, fmt.Sprintf("%d frames, seq 1-%d", n, n)) {
		t.Fatalf("export: %v\n%s", err, out)
	}
	if out, err := medpipe(ctx, t, "archive", "verify", file); err != nil || !strings.Contains(out, "ok ") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	fresh := testkit.StartBus(t, 0) // no streams: import creates RAW
	for i, want := range []string{fmt.Sprintf("%d frames, %d stored, 0 already there", n, n), fmt.Sprintf("%d frames, 0 stored, %d already there", n, n)} {
		out, err := medpipe(ctx, t, "archive", "import", file, "--nats", fresh.Server.ClientURL(), "--progress", "off")
		if err != nil || !strings.Contains(out, want) {
			t.Fatalf("import %d: %v\n%s", i+1, err, out)
		}
	}
	jsonl := func(args ...string) string {
		path := filepath.Join(dir, fmt.Sprintf("out-%d.jsonl", time.Now().UnixNano()))
		args = append([]string{"replay", "--format", "jsonl", "--output", path, "--progress", "off"}, args...)
		if out, err := medpipe(ctx, t, args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	orig := jsonl("--nats", b.Server.ClientURL(), "--keys", keys)
	if strings.Count(orig, "\n") != n {
		t.Fatalf("%d readings replayed, want %d", strings.Count(orig, "\n"), n)
	}
	// Keys from the registry, as live decrypt has them without --keys.
	if out, err := medpipe(ctx, t, "keys", "--nats", fresh.Server.ClientURL(), "import", keys); err != nil {
		t.Fatalf("keys import: %v\n%s", err, out)
	}
	if got := jsonl("--nats", fresh.Server.ClientURL()); got != orig {
		t.Fatal("replay after import differs from the original")
	}
	if got := jsonl("--from-archive", file, "--keys", keys, "--nats", "nats://127.0.0.1:1"); got != orig { // no NATS needed
		t.Fatal("replay from the archive file differs from the original")
	}

	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	bad := filepath.Join(dir, "bad.mpa.zst")
	if err := os.WriteFile(bad, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := medpipe(ctx, t, "archive", "verify", bad)
	if err == nil || !strings.Contains(err.Error(), "corrupt at frame") || !strings.Contains(err.Error(), "file offset") {
		t.Fatalf("verify of a damaged file: %v\n%s", err, out)
	}
	empty := testkit.StartBus(t, 0)
	_, ierr := medpipe(ctx, t, "archive", "import", bad, "--nats", empty.Server.ClientURL(), "--progress", "off")
	if ierr == nil || !strings.Contains(ierr.Error(), "nothing imported") || !strings.Contains(ierr.Error(), "corrupt at frame") {
		t.Fatalf("import of a damaged file: %v", ierr)
	}
	if _, err := empty.JS.Stream(ctx, bus.StreamRaw); err == nil {
		t.Fatal("a damaged import touched the server")
	}
	t.Logf("damage reported as: %v", err)
}

// TestSealedArchive: an archive exported with --archive-key-file opens only
// with that key (verify, import, replay --from-archive), and replays the
// same readings as RAW.
func TestSealedArchive(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	b := testkit.StartBus(t, 2)
	devs := rawgen.Devices(3, "seal", 7)
	t0 := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	const n = 3 * 2 * 30
	recordRaw(ctx, t, b.JS, rawgen.New(rawgen.Options{Devices: devs, Start: t0, Rate: 2, Partitions: 2, Seed: 7}), n)
	dir := t.TempDir()
	file, keys := filepath.Join(dir, "raw.mpa.sealed"), writeKeys(t, devs)
	keyFile, wrongKey := filepath.Join(dir, "archive.key"), filepath.Join(dir, "wrong.key")
	for f, k := range map[string]string{keyFile: "a-32-byte-or-longer-archive-key-for-the-test", wrongKey: "another-32-byte-or-longer-archive-key-here"} {
		if err := os.WriteFile(f, []byte(k+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := medpipe(ctx, t, "archive", "export", "--nats", b.Server.ClientURL(), "--out", file, "--progress", "off", "--archive-key-file", keyFile); err != nil {
		t.Fatalf("sealed export: %v\n%s", err, out)
	}
	if _, err := medpipe(ctx, t, "archive", "verify", file); err == nil || !strings.Contains(err.Error(), "encrypted") {
		t.Fatalf("verify without the key: %v", err)
	}
	if _, err := medpipe(ctx, t, "archive", "verify", file, "--archive-key-file", wrongKey); err == nil || !strings.Contains(err.Error(), "does not authenticate") {
		t.Fatalf("verify with a wrong key: %v", err)
	}
	if out, err := medpipe(ctx, t, "archive", "verify", file, "--archive-key-file", keyFile); err != nil || !strings.Contains(out, fmt.Sprintf("%d frames", n)) {
		t.Fatalf("verify with the key: %v\n%s", err, out)
	}
	fresh := testkit.StartBus(t, 0)
	if out, err := medpipe(ctx, t, "archive", "import", file, "--nats", fresh.Server.ClientURL(), "--progress", "off", "--archive-key-file", keyFile); err != nil || !strings.Contains(out, fmt.Sprintf("%d stored", n)) {
		t.Fatalf("sealed import: %v\n%s", err, out)
	}
	replayed := func(args ...string) string {
		path := filepath.Join(dir, fmt.Sprintf("out-%d.jsonl", time.Now().UnixNano()))
		if out, err := medpipe(ctx, t, append([]string{"replay", "--format", "jsonl", "--output", path, "--progress", "off", "--keys", keys}, args...)...); err != nil {
			t.Fatalf("replay %v: %v\n%s", args, err, out)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	orig := replayed("--nats", b.Server.ClientURL())
	if got := replayed("--from-archive", file, "--archive-key-file", keyFile, "--nats", "nats://127.0.0.1:1"); got != orig || strings.Count(got, "\n") != n {
		t.Fatalf("replay of the sealed archive: %d lines, want the %d of RAW", strings.Count(got, "\n"), n)
	}
}
