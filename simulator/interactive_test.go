package simulator

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/medpipe/medpipe/wire"
)

// syncBuf is an io.Writer safe for the interactive device's goroutines.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestInteractiveMenu drives the menu through a pipe: option 1 makes the
// next readings carry +0.5 °C; 13 and x give the error and the prompt again;
// option 7 eleven times wraps the accelerometer at +1 g.
func TestInteractiveMenu(t *testing.T) {
	devs, err := GenerateDevices(1, "iot_med_dev", "pico")
	if err != nil {
		t.Fatal(err)
	}
	e := startEdge(t, devs)
	in := NewInteractive()
	f, err := NewFleet(Options{Server: e.ln.Addr().String(), Devices: devs, Rate: 50, Adjust: in.Adjust})
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	out := &syncBuf{}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx, f, pr, out) }()
	last := func() wire.Reading { e.mu.Lock(); defer e.mu.Unlock(); return e.last }
	waitValue := func(f wire.Field, want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for last()[f] != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s is %q, want %q", f, last()[f], want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	send := func(s string) {
		t.Helper()
		if _, err := io.WriteString(pw, s+"\n"); err != nil {
			t.Fatal(err)
		}
	}
	waitValue(wire.Temp, "36.600")
	send("1")
	waitValue(wire.Temp, "37.100")
	send("13")
	send("x")
	for range 11 {
		send("7")
	}
	waitValue(wire.AcelX, "-1.00")
	send("f")
	deadline := time.Now().Add(5 * time.Second)
	for r := last(); r.Float(wire.AcelZ) < 2.5; r = last() { // the impact
		if time.Now().After(deadline) {
			t.Fatal("no fall impact after option f")
		}
		time.Sleep(5 * time.Millisecond)
	}
	send("q")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{`invalid option "13"`, `invalid option "x"`, "1) Patient temperature", "sending Temp 37.100", "the wearer falls"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "> "); n < 14 {
		t.Errorf("prompt shown %d times, want one after each input", n)
	}
}
