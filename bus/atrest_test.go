package bus_test

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/bus/registry"
)

// grepStore reports the files under dir that contain needle.
func grepStore(t *testing.T, dir string, needle []byte) []string {
	t.Helper()
	var hits []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, needle) {
			hits = append(hits, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

func startAtRest(t *testing.T, dir, key string) (*bus.Embedded, jetstream.JetStream) {
	t.Helper()
	e, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, MQTTPort: -2, HTTPPort: -2, StoreDir: dir, JetStreamKey: key})
	if err != nil {
		t.Fatal(err)
	}
	nc, js, err := bus.Connect(t.Context(), bus.ConnectOptions{URLs: e.ClientURL(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return e, js
}

// TestStoreEncryptedAtRest: with a key, a copy of the store directory holds
// neither a device key from the registry nor a reading in plain text;
// without the key it is plain (the control that the grep works).
func TestStoreEncryptedAtRest(t *testing.T) {
	const reading = `{"device":"dev-secret-1","temperature":"36.612345"}`
	for _, tc := range []struct {
		name      string
		key       string
		wantPlain bool
	}{{"encrypted", "mpTestKeyForTheStoreAtRest0123456789abcdef", false}, {"control without key", "", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			dir := t.TempDir()
			e, js := startAtRest(t, dir, tc.key)
			if _, err := bus.ApplyStreams(ctx, js, bus.StreamOptions{Partitions: 1}); err != nil {
				t.Fatal(err)
			}
			reg, err := registry.Open(ctx, js, 1)
			if err != nil {
				t.Fatal(err)
			}
			dev, err := reg.Add(ctx, "dev-secret-1")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := js.Publish(ctx, bus.ReadingsSubject(0, "dev-secret-1"), []byte(reading)); err != nil {
				t.Fatal(err)
			}
			e.Shutdown() // everything on disk
			copyDir := filepath.Join(t.TempDir(), "copy")
			if err := os.CopyFS(copyDir, os.DirFS(dir)); err != nil {
				t.Fatal(err)
			}
			for _, needle := range []string{dev.Key, "36.612345"} {
				hits := grepStore(t, copyDir, []byte(needle))
				if tc.wantPlain != (len(hits) > 0) {
					t.Errorf("%q in the copied store: %v (want plain text: %v)", needle, hits, tc.wantPlain)
				}
			}
		})
	}
}

// TestEncryptionTurnedOnKeepsAStore: a store written without a key (an
// older medpipe up's data dir) opens with one and keeps its data, and is
// encrypted from then on.
func TestEncryptionTurnedOnKeepsAStore(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	e, js := startAtRest(t, dir, "")
	if _, err := bus.ApplyStreams(ctx, js, bus.StreamOptions{Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, bus.RawSubject(0), []byte("old-frame-in-clear")); err != nil {
		t.Fatal(err)
	}
	e.Shutdown()
	e, js = startAtRest(t, dir, "mpTestKeyForTheStoreAtRest0123456789abcdef")
	defer e.Shutdown()
	s, err := js.Stream(ctx, bus.StreamRaw)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetMsg(ctx, 1)
	if err != nil || string(m.Data) != "old-frame-in-clear" {
		t.Fatalf("the old frame after turning encryption on: %v", err)
	}
}
