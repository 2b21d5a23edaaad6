package e2e

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/simulator"
	"github.com/medpipe/medpipe/testkit"
)

// TestRestartNeverShrinksRetention: an operator applies 30 days / 3 GiB to
// RAW; stages restarted with default flags, or with contradicting ones,
// leave them as they are, and the contradiction is a warning naming both.
func TestRestartNeverShrinksRetention(t *testing.T) {
	e, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, MQTTPort: -2, HTTPPort: -2, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	url := e.ClientURL()
	const age, size = 720 * time.Hour, 3 << 30
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"streams", "--nats", url, "--raw-max-age", age.String(), "--raw-max-bytes", "3221225472", "--readings-max-age", "48h", "apply"}, &out, &errOut); err != nil {
		t.Fatalf("streams apply: %v\n%s", err, errOut.String())
	}
	_, js, err := bus.Connect(t.Context(), bus.ConnectOptions{URLs: url, Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	limits := func() (time.Duration, int64, time.Duration) {
		t.Helper()
		raw, err := js.Stream(t.Context(), bus.StreamRaw)
		if err != nil {
			t.Fatal(err)
		}
		rd, err := js.Stream(t.Context(), bus.StreamReadings)
		if err != nil {
			t.Fatal(err)
		}
		return raw.CachedInfo().Config.MaxAge, raw.CachedInfo().Config.MaxBytes, rd.CachedInfo().Config.MaxAge
	}
	if a, b, r := limits(); a != age || b != size || r != 48*time.Hour {
		t.Fatalf("after apply: %v %d %v", a, b, r)
	}
	// Each stage starts (verifying the streams), runs until it logged its
	// start line, and is stopped.
	stage := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		defer cancel()
		var logs testkit.SyncBuffer
		done := make(chan error, 1)
		go func() { done <- run(ctx, append(args, "--nats", url, "--http", ""), &logs, &logs) }()
		for !strings.Contains(logs.String(), "started") {
			select {
			case err := <-done:
				t.Fatalf("%s exited: %v\n%s", args[0], err, logs.String())
			case <-ctx.Done():
				t.Fatalf("%s did not start:\n%s", args[0], logs.String())
			case <-time.After(20 * time.Millisecond):
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("%s: %v", args[0], err)
		}
		return logs.String()
	}
	stage("ingest", "--listen", testkit.FreeAddr(t))
	keys := filepath.Join(t.TempDir(), "keys.jsonl")
	if _, err := simulator.LoadOrCreateKeys(keys, 1, "dev"); err != nil {
		t.Fatal(err)
	}
	stage("decrypt", "--keys", keys)
	stage("publish", "--mqtt", "tcp://"+testkit.FreeAddr(t))
	if a, b, r := limits(); a != age || b != size || r != 48*time.Hour {
		t.Fatalf("after stages with default flags: RAW %v %d, READINGS %v; want %v %d, 48h", a, b, r, age, size)
	}
	logs := stage("ingest", "--listen", testkit.FreeAddr(t), "--raw-max-age", "24h")
	if a, b, _ := limits(); a != age || b != size {
		t.Fatalf("after a stage with --raw-max-age 24h: %v %d", a, b)
	}
	if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "stream_value=720h0m0s") || !strings.Contains(logs, "flag_value=24h0m0s") {
		t.Fatalf("no warning naming the stream's and the flag's max age:\n%s", logs)
	}
	// And apply without flags changes nothing either.
	if err := run(t.Context(), []string{"streams", "--nats", url, "apply"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if a, b, _ := limits(); a != age || b != size {
		t.Fatalf("after apply without flags: %v %d", a, b)
	}
}
