package decrypt

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestStuckDevices: a device refused as replayed for StuckAfter with none
// of its frames accepted is reported (once-per-30 s WARN, gauge, health
// naming it); an accepted frame clears it, and so does a minute of quiet.
func TestStuckDevices(t *testing.T) {
	now := time.Unix(1000, 0)
	var gauge float64
	s := newStuckDevices(func(v float64) { gauge = v })
	s.nowFunc = func() time.Time { return now }
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	steps := []struct {
		name  string
		at    time.Duration
		do    func()
		stuck string
		warns int
	}{
		{"first refusal", 0, func() { s.refused("dev-a", log) }, "", 0},
		{"refused for 4 s", 4 * time.Second, func() { s.refused("dev-a", log) }, "", 0},
		{"refused for 6 s", 6 * time.Second, func() { s.refused("dev-a", log) }, "dev-a", 1},
		{"again 1 s later: no second WARN", 7 * time.Second, func() { s.refused("dev-a", log) }, "dev-a", 1},
		{"another device", 7 * time.Second, func() { s.refused("dev-b", log) }, "dev-a", 1},
		{"dev-b stuck too", 13 * time.Second, func() { s.refused("dev-b", log) }, "dev-a,dev-b", 2},
		{"dev-a accepted", 14 * time.Second, func() { s.accepted("dev-a") }, "dev-b", 2},
		{"dev-b quiet for a minute", 80 * time.Second, func() {}, "", 2},
	}
	for _, st := range steps {
		now = time.Unix(1000, 0).Add(st.at)
		st.do()
		if got := strings.Join(s.stuck(), ","); got != st.stuck || gauge != float64(len(s.stuck())) {
			t.Fatalf("%s: stuck %q (gauge %v), want %q", st.name, got, gauge, st.stuck)
		}
		if n := strings.Count(logs.String(), "level=WARN"); n != st.warns {
			t.Fatalf("%s: %d WARN lines, want %d:\n%s", st.name, n, st.warns, logs.String())
		}
	}
}
