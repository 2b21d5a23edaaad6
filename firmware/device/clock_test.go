package device

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/medpipe/medpipe/firmware/esp"
	"github.com/medpipe/medpipe/firmware/esp/espfake"
	"github.com/medpipe/medpipe/wire"
)

// TestClockFollowsSNTP: a v2 device's clock is the board's corrected by the
// ESP8266's SNTP time (to the half second the module's rounding allows);
// a later reading within a second of it leaves the clock steady, a larger
// one steps it, and pending pulse samples move with it.
func TestClockFollowsSNTP(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var mu sync.Mutex
	utc := time.Date(2026, 12, 2, 5, 0, 0, 0, time.UTC)
	uptime := time.Unix(0, 0).Add(42 * time.Second) // the Pico's clock counts from power-on
	set := func(u, b time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		utc, uptime = utc.Add(u), uptime.Add(b)
	}
	mod, uart := espfake.New(espfake.Options{Networks: map[string]string{"ward-7": "s3cret-pass"},
		Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return utc }})
	t.Cleanup(func() { mod.Close() })
	var logs []string
	b := &Board{UART: uart, Log: func(s string) { logs = append(logs, s) },
		Clock: func() time.Time { mu.Lock(); defer mu.Unlock(); return uptime }}
	d := New(b, Options{SNTPServers: []string{"ntp.ward7.example"}, ESP: esp.Options{CommandTimeout: time.Second}})
	if err := d.modem.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.modem.SetMode(ctx, esp.ModeStation); err != nil {
		t.Fatal(err)
	}
	if err := d.modem.Join(ctx, "ward-7", "s3cret-pass"); err != nil {
		t.Fatal(err)
	}
	w := &worker{d: d, v2: wire.NewV2Key(wire.Device{ID: "dev"})}
	// Pending pulse samples carry the board's clock, corrected by the
	// offset when a reading takes them.
	boardStart := b.Clock()
	pulseStart := func() time.Time { return boardStart.Add(w.clockOffset) }

	w.startClock(ctx)
	if got := mod.SNTPServers(); len(got) != 1 || got[0] != "ntp.ward7.example" {
		t.Fatalf("SNTP servers %q", got)
	}
	want := utc.Add(500 * time.Millisecond)
	if !w.clockSet || !w.now().Equal(want) {
		t.Fatalf("clock %v (set %v), want %v", w.now(), w.clockSet, want)
	}
	if !pulseStart().Equal(want) {
		t.Fatalf("pending pulse samples start at %v, want %v", pulseStart(), want)
	}

	tests := []struct {
		name         string
		sntp, board  time.Duration // how far each clock moves
		wantMoved    time.Duration // how far the device's clock moves past the board's
		wantLogLines int
	}{
		{name: "in step", sntp: time.Hour, board: time.Hour, wantLogLines: 0},
		{name: "board 0.8 s slow: within the rounding", sntp: time.Hour, board: time.Hour - 800*time.Millisecond, wantLogLines: 0},
		{name: "board 3 s slow: stepped", sntp: time.Hour, board: time.Hour - 3*time.Second, wantMoved: 3800 * time.Millisecond, wantLogLines: 1},
	}
	for _, tt := range tests {
		before, start, lines := w.clockOffset, pulseStart(), len(logs)
		set(tt.sntp, tt.board)
		w.syncClock(ctx) // not due yet
		if w.clockOffset != before {
			t.Fatalf("%s: the clock was read before it was due", tt.name)
		}
		w.nextClock = time.Time{}
		w.syncClock(ctx)
		if moved := w.clockOffset - before; moved != tt.wantMoved || pulseStart().Sub(start) != moved {
			t.Errorf("%s: clock moved %v, pulse start %v; want %v", tt.name, moved, pulseStart().Sub(start), tt.wantMoved)
		}
		if got := len(logs) - lines; got != tt.wantLogLines {
			t.Errorf("%s: %d log lines, want %d: %q", tt.name, got, tt.wantLogLines, logs[lines:])
		}
	}
}
