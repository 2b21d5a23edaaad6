package replay

import (
	"testing"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/replay/archive"
)

func TestParseTime(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{"", time.Time{}, false},
		{"now", now, false},
		{"-2h", now.Add(-2 * time.Hour), false},
		{"-1h30m", now.Add(-90 * time.Minute), false},
		{"+5m", now.Add(5 * time.Minute), false},
		{"2026-11-25T10:00:00Z", time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), false},
		{"2026-11-25T10:00:00.5+01:00", time.Date(2026, 11, 25, 9, 0, 0, 5e8, time.UTC), false},
		{"-2x", time.Time{}, true},
		{"yesterday", time.Time{}, true},
		{"2026-11-25", time.Time{}, true},
	}
	for _, c := range cases {
		got, err := ParseTime(c.in, now)
		if (err != nil) != c.wantErr || !got.Equal(c.want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v, error %v", c.in, got, err, c.want, c.wantErr)
		}
	}
}

func TestParseSeqRange(t *testing.T) {
	cases := []struct {
		in       string
		from, to uint64
		wantErr  bool
	}{
		{"", 0, 0, false},
		{"5", 5, 5, false},
		{"5-", 5, 0, false},
		{"5-9", 5, 9, false},
		{"9-5", 0, 0, true},
		{"-5", 0, 0, true},
		{"a-b", 0, 0, true},
		{"99999999999999999999", 0, 0, true},
	}
	for _, c := range cases {
		from, to, err := ParseSeqRange(c.in)
		if (err != nil) != c.wantErr || from != c.from || to != c.to {
			t.Errorf("ParseSeqRange(%q) = %d, %d, %v; want %d, %d, error %v", c.in, from, to, err, c.from, c.to, c.wantErr)
		}
	}
}

func TestJudge(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	frame := func(seq uint64, recv, stored time.Time, v2Device string) *archive.Frame {
		h := map[string][]string{bus.HeaderReceived: {recv.Format(time.RFC3339Nano)}, bus.HeaderProtocol: {bus.ProtocolLegacy}}
		if v2Device != "" {
			h[bus.HeaderProtocol] = []string{bus.ProtocolV2}
			h[bus.HeaderDevice] = []string{v2Device}
		}
		return &archive.Frame{Seq: seq, Time: stored, Header: h}
	}
	window := Selection{Since: t0, Until: t0.Add(10 * time.Second), Devices: []string{"dev-0*"}}
	cases := []struct {
		name string
		sel  Selection
		f    *archive.Frame
		want verdict
	}{
		{"in window", window, frame(1, t0.Add(time.Second), t0.Add(time.Second), ""), take},
		{"before", window, frame(1, t0.Add(-time.Second), t0, ""), skip},
		{"at until", window, frame(1, t0.Add(10*time.Second), t0.Add(10*time.Second), ""), skip},
		{"past until by both clocks", window, frame(1, t0.Add(2*time.Minute), t0.Add(2*time.Minute), ""), stop},
		{"imported: old receive time, new stream time", window, frame(1, t0.Add(time.Second), t0.Add(48*time.Hour), ""), take},
		{"v2 of another device", window, frame(1, t0.Add(time.Second), t0.Add(time.Second), "other"), skip},
		{"v2 of a selected device", window, frame(1, t0.Add(time.Second), t0.Add(time.Second), "dev-01"), take},
		{"below the sequence range", Selection{FromSeq: 5, ToSeq: 9}, frame(4, t0, t0, ""), skip},
		{"above the sequence range", Selection{FromSeq: 5, ToSeq: 9}, frame(10, t0, t0, ""), stop},
		{"no Received header: the stream time", Selection{Since: t0}, &archive.Frame{Seq: 1, Time: t0.Add(-time.Second)}, skip},
	}
	for _, c := range cases {
		if got := c.sel.judge(c.f); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
	if err := (&Selection{Devices: []string{"[z-a"}}).Validate(); err == nil {
		t.Error("a bad glob was accepted")
	}
	if err := (&Selection{Since: t0, Until: t0}).Validate(); err == nil {
		t.Error("an empty time range was accepted")
	}
}

func FuzzParseSeqRange(f *testing.F) {
	for _, s := range []string{"", "5", "5-", "5-9", "9-5", "-", "18446744073709551615"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		from, to, err := ParseSeqRange(s)
		if err == nil && to != 0 && to < from {
			t.Fatalf("%q: empty range %d-%d accepted", s, from, to)
		}
	})
}

func FuzzParseTime(f *testing.F) {
	for _, s := range []string{"", "now", "-2h", "2026-11-25T10:00:00Z", "+1h30m", "-"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = ParseTime(s, now)
	})
}
