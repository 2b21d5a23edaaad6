package main

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/medpipe/medpipe/testkit"
)

// TestUpSimulate runs `medpipe up --simulate 20` in-process and checks that
// readings of every simulated device reach its MQTT listener, and that an
// interrupt drains and returns no error.
func TestUpSimulate(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	port := func() string { _, p, _ := net.SplitHostPort(freeAddr(t)); return p }
	mqttPort := port()
	args := []string{"up", "--simulate", "20", "--rate", "20", "--data-dir", t.TempDir(),
		"--nats-port", port(), "--mqtt-port", mqttPort, "--monitor-port", "-2", "--listen", freeAddr(t), "--http", freeAddr(t), "--status-every", "1s"}
	upCtx, stop := context.WithCancel(ctx)
	var logs syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(upCtx, args, &logs, &logs) }()

	var col *testkit.Collector
	for col == nil {
		if c, err := net.Dial("tcp", "127.0.0.1:"+mqttPort); err == nil {
			c.Close()
			col = testkit.NewCollector(t, testkit.CollectorOptions{URL: "tcp://127.0.0.1:" + mqttPort, Filter: "Pico/+/Physiological_Data/Temperature", QoS: 1, ClientID: "up-test", CleanSession: true})
			break
		}
		select {
		case err := <-done:
			t.Fatalf("up exited: %v\n%s", err, logs.String())
		case <-ctx.Done():
			t.Fatal("MQTT listener never came up")
		case <-time.After(50 * time.Millisecond):
		}
	}
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
