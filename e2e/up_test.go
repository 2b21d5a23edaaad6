package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/simulator"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// TestUpSimulate runs `medpipe up --simulate 20` in-process and checks that
// readings of every simulated device reach its MQTT listener, and that an
// interrupt drains and returns no error.
func TestUpSimulate(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	port := func() string { _, p, _ := net.SplitHostPort(testkit.FreeAddr(t)); return p }
	mqttPort := port()
	dataDir := t.TempDir()
	args := []string{"up", "--simulate", "20", "--rate", "20", "--data-dir", dataDir,
		"--nats-port", port(), "--mqtt-port", mqttPort, "--monitor-port", "-2", "--listen", testkit.FreeAddr(t), "--http", testkit.FreeAddr(t), "--status-every", "1s"}
	upCtx, stop := context.WithCancel(ctx)
	var logs testkit.SyncBuffer
	done := make(chan error, 1)
	go func() { done <- run(upCtx, args, &logs, &logs) }()

	waitListening(t, "127.0.0.1:"+mqttPort, done, &logs)
	user, pw := dashboardLogin(t, dataDir)
	col := testkit.NewCollector(t, testkit.CollectorOptions{URL: "tcp://127.0.0.1:" + mqttPort, Filter: "Pico/+/Physiological_Data/Temperature", QoS: 1, ClientID: "up-test", CleanSession: true, Username: user, Password: pw})
	seen := map[string]bool{}
	for len(seen) < 20 {
		if err := col.WaitLen(ctx, len(col.Messages())+1); err != nil {
			t.Fatalf("devices seen %d of 20: %v\n%s", len(seen), err, logs.String())
		}
		for _, m := range col.Messages() {
			seen[strings.Split(m.Topic, "/")[1]] = true
		}
	}
	time.Sleep(1200 * time.Millisecond) // let a status line be written
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("up returned %v after interrupt", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("up did not drain within 30s")
	}
	if !strings.Contains(logs.String(), "msg=status") || !strings.Contains(logs.String(), "msg=\"medpipe up\"") {
		t.Fatalf("no start-up or status line in logs:\n%s", logs.String())
	}
}

// TestUpBusyPort checks that a busy port gives one clear error naming the flag.
func TestUpBusyPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	busy := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	var logs bytes.Buffer
	err = run(t.Context(), []string{"up", "--data-dir", t.TempDir(), "--nats-port", "-1", "--mqtt-port", busy, "--monitor-port", "-2", "--http", ""}, &logs, &logs)
	if err == nil || !strings.Contains(err.Error(), "--mqtt-port") {
		t.Fatalf("got %v, want an error naming --mqtt-port", err)
	}
}

// TestUpTwoThousandDevices runs 2,000 simulated devices (legacy and v2) for
// 10 s against `medpipe up`: all connect and every reading arrives.
func TestUpTwoThousandDevices(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	defer cancel()
	const devices, count = 2000, 10
	keys := filepath.Join(t.TempDir(), "fleet.jsonl")
	devs, err := simulator.LoadOrCreateKeys(keys, devices, "fleet")
	if err != nil {
		t.Fatal(err)
	}
	port := func() string { _, p, _ := net.SplitHostPort(testkit.FreeAddr(t)); return p }
	mqttPort, edge := port(), testkit.FreeAddr(t)
	dataDir := t.TempDir()
	upCtx, stop := context.WithCancel(ctx)
	var logs testkit.SyncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(upCtx, []string{"up", "--keys", keys, "--data-dir", dataDir, "--json-topic",
			"--nats-port", port(), "--mqtt-port", mqttPort, "--monitor-port", "-2", "--listen", edge, "--http", "", "--status-every", "0",
			// 2,000 devices connecting from one loopback address within 2 s
			// is what the edge's per-address limits take for a flood: this
			// test measures capacity, so it lifts them as the bench does.
			"--accept-rate-per-ip", "-1", "--max-preframe-per-ip", "-1", "--penalty", "-1s"}, &logs, &logs)
	}()
	waitListening(t, edge, done, &logs)
	user, pw := dashboardLogin(t, dataDir)
	col := testkit.NewCollector(t, testkit.CollectorOptions{URL: "tcp://127.0.0.1:" + mqttPort, Filter: "Pico/+/reading", QoS: 1, ClientID: "fleet", CleanSession: true, Username: user, Password: pw})
	sims := make([]simulator.Device, devices)
	for i, d := range devs {
		if sims[i], err = simulator.Assign(d, i, "mixed", "mixed"); err != nil {
			t.Fatal(err)
		}
	}
	fleet, err := simulator.NewFleet(simulator.Options{Server: edge, Devices: sims, Rate: 1, Count: count, Ramp: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := fleet.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if st := fleet.Stats(); st.Sent != devices*count || st.Reconnects != 0 || st.Errors != 0 {
		t.Fatalf("fleet: %+v", st)
	}
	order, dups := waitAllReadings(ctx, t, col, devices*count)
	if len(order) != devices {
		t.Fatalf("%d devices delivered, want %d", len(order), devices)
	}
	assertFewDuplicates(t, dups, devices*count)
	stop()
	if err := <-done; err != nil {
		t.Fatalf("up: %v", err)
	}
}

// waitListening waits until up (running until done, a channel of one)
// accepts connections on addr, and fails the test if up exits first.
func waitListening(t *testing.T, addr string, done <-chan error, logs *testkit.SyncBuffer) {
	t.Helper()
	testkit.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		if len(done) > 0 { // left in the channel for whoever waits for up
			t.Fatalf("up exited\n%s", logs.String())
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// dashboardLogin is the MQTT login up generated for dashboards in dataDir.
func dashboardLogin(t *testing.T, dataDir string) (string, string) {
	t.Helper()
	pw, err := bus.ReadCredential(filepath.Join(dataDir, bus.CredentialsDir), bus.RoleDashboard)
	if err != nil {
		t.Fatal(err)
	}
	return string(bus.RoleDashboard), pw
}

// TestUpUsesTheRegistry runs `medpipe up` without keys: a device's frames
// are dead letters until `medpipe keys import` (flags after the file) loads
// its key into up's registry; its readings then flow, a revocation stops
// them, and `medpipe replay --since -2h` against up finds the keys.
func TestUpUsesTheRegistry(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	natsURL := "nats://" + testkit.FreeAddr(t)
	_, natsPort, _ := net.SplitHostPort(strings.TrimPrefix(natsURL, "nats://"))
	edge := testkit.FreeAddr(t)
	dataDir := t.TempDir()
	credDir := filepath.Join(dataDir, bus.CredentialsDir)
	startServing(ctx, t, "up", nil, "up", "--data-dir", dataDir, "--nats-port", natsPort, "--mqtt-port", "-1",
		"--monitor-port", "-2", "--listen", edge, "--status-every", "0", "--max-bad-frames", "-1",
		// Both devices share the test's address: unknown until imported,
		// their connections are cut and they reconnect; the edge's penalty
		// for such an address would hold their reconnects back for 30 s.
		"--penalty", "-1s")

	keep, _ := wire.NewRandomDevice("keep")
	drop, _ := wire.NewRandomDevice("drop")
	keysFile := filepath.Join(t.TempDir(), "fleet.jsonl")
	if err := os.WriteFile(keysFile, append(wire.AppendKeyLine(nil, keep), wire.AppendKeyLine(nil, drop)...), 0o600); err != nil {
		t.Fatal(err)
	}
	// The test watches as admin, with up's generated password.
	adminPW, err := bus.ReadCredential(credDir, bus.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(natsURL, bus.UserOptions(string(bus.RoleAdmin), adminPW)...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var mu sync.Mutex
	readings, reasons := map[string]int{}, map[string]string{}
	if _, err := nc.Subscribe(bus.SubjectReadingsPrefix+">", func(m *nats.Msg) {
		rs, _ := bus.DecodeReadings(m.Data, m.Header) // up stores readings in batches
		mu.Lock()
		for _, r := range rs {
			readings[r.Device]++
		}
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Subscribe(bus.SubjectDeadLetterPrefix+">", func(m *nats.Msg) {
		mu.Lock()
		reasons[m.Header.Get(bus.HeaderDevice)+m.Header.Get(bus.HeaderConn)] = m.Header.Get(bus.HeaderReason)
		reasons["last"] = m.Header.Get(bus.HeaderReason)
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	sendCtx, stopSending := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, d := range []wire.Device{keep, drop} {
		ld := &liveDevice{id: d.ID}
		ld.key.Store(wire.NewLegacyKey(d))
		wg.Go(func() { ld.run(sendCtx, t, edge) })
	}
	defer func() { stopSending(); wg.Wait() }()
	count := func(id string) int { mu.Lock(); defer mu.Unlock(); return readings[id] }
	testkit.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if reasons["last"] != string(bus.ReasonUnknownDevice) {
			return fmt.Errorf("no unknown_device dead letter yet (last %q)", reasons["last"])
		}
		return nil
	})

	if out, err := medpipe(ctx, t, "keys", "import", keysFile, "--nats", natsURL, "--nats-credentials-dir", credDir); err != nil || !strings.Contains(out, "added 2") {
		t.Fatalf("keys import: %v\n%s", err, out)
	}
	testkit.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if count("keep") < 5 || count("drop") < 5 {
			mu.Lock()
			last := reasons["last"]
			mu.Unlock()
			return fmt.Errorf("readings after import: keep %d, drop %d (last dead letter: %q)", count("keep"), count("drop"), last)
		}
		return nil
	})

	if out, err := medpipe(ctx, t, "keys", "revoke", "drop", "--nats", natsURL, "--nats-credentials-dir", credDir); err != nil {
		t.Fatalf("keys revoke: %v\n%s", err, out)
	}
	testkit.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if reasons["last"] != string(bus.ReasonRevoked) {
			return fmt.Errorf("no revoked dead letter yet (last %q)", reasons["last"])
		}
		return nil
	})
	after := count("drop")
	kept := count("keep")
	testkit.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if count("keep") < kept+20 {
			return fmt.Errorf("keep stalled at %d after the revocation", count("keep"))
		}
		return nil
	})
	if n := count("drop"); n > after+5 { // frames already decrypted when the revocation landed
		t.Fatalf("drop: %d readings after its revocation", n-after)
	}
	stopSending()
	wg.Wait()

	out, err := medpipe(ctx, t, "replay", "--since", "-2h", "--format", "jsonl", "--progress", "off", "--nats", natsURL, "--nats-credentials-dir", credDir)
	if err != nil {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	if n := strings.Count(out, `"keep"`); n < kept {
		t.Fatalf("replay --since -2h wrote %d readings of keep, want at least %d:\n%s", n, kept, lastLines(out, 5))
	}
}
