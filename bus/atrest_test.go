package bus_test

import (
	"bytes"
	"context"
	"fmt"
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
	return startAtRestWith(t, dir, key, "")
}

func startAtRestWith(t *testing.T, dir, key, cipher string) (*bus.Embedded, jetstream.JetStream) {
	t.Helper()
	e, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, MQTTPort: -2, HTTPPort: -2, StoreDir: dir, JetStreamKey: key, JetStreamCipher: cipher})
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

// TestStoreCipherChangeKeepsAStore: a store written under one cipher (an
// older up's ChaCha20, or a data dir moved to a CPU without AES
// instructions) opens under the other with every message and consumer
// position, and stays encrypted.
func TestStoreCipherChangeKeepsAStore(t *testing.T) {
	const key = "mpTestKeyForTheStoreAtRest0123456789abcdef"
	const frames = 300
	for _, tc := range []struct{ from, to string }{
		{bus.CipherChaCha, bus.CipherAES},
		{bus.CipherAES, bus.CipherChaCha},
		{bus.CipherChaCha, ""},
	} {
		t.Run(tc.from+"→"+tc.to, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			dir := t.TempDir()
			e, js := startAtRestWith(t, dir, key, tc.from)
			if _, err := bus.ApplyStreams(ctx, js, bus.StreamOptions{Partitions: 1}); err != nil {
				t.Fatal(err)
			}
			for i := range frames {
				if _, err := js.Publish(ctx, bus.RawSubject(0), fmt.Appendf(nil, "secret-frame-%04d", i)); err != nil {
					t.Fatal(err)
				}
			}
			c, err := js.CreateOrUpdateConsumer(ctx, bus.StreamRaw, jetstream.ConsumerConfig{Durable: "keep", AckPolicy: jetstream.AckAllPolicy})
			if err != nil {
				t.Fatal(err)
			}
			batch, err := c.Fetch(100)
			if err != nil {
				t.Fatal(err)
			}
			var last jetstream.Msg
			for m := range batch.Messages() {
				last = m
			}
			if last == nil {
				t.Fatal("no message fetched")
			}
			if err := last.DoubleAck(ctx); err != nil {
				t.Fatal(err)
			}
			e.Shutdown()

			e, js = startAtRestWith(t, dir, key, tc.to)
			defer e.Shutdown()
			s, err := js.Stream(ctx, bus.StreamRaw)
			if err != nil {
				t.Fatal(err)
			}
			for _, seq := range []uint64{1, frames / 2, frames} {
				m, err := s.GetMsg(ctx, seq)
				if want := fmt.Sprintf("secret-frame-%04d", seq-1); err != nil || string(m.Data) != want {
					t.Fatalf("message %d after the cipher change: %v (want %q)", seq, err, want)
				}
			}
			ci, err := s.Consumer(ctx, "keep")
			if err != nil {
				t.Fatal(err)
			}
			if info := ci.CachedInfo(); info.AckFloor.Stream != 100 || info.NumPending != frames-100 {
				t.Fatalf("consumer after the cipher change: ack floor %d, pending %d (want 100, %d)", info.AckFloor.Stream, info.NumPending, frames-100)
			}
			e.Shutdown()
			if hits := grepStore(t, dir, []byte("secret-frame-")); len(hits) > 0 {
				t.Fatalf("plain text in the store after the cipher change: %v", hits)
			}
		})
	}
}
