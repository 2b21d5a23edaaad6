package bench

import (
	"testing"
	"time"
)

// TestLedgerAccounting: the ledger tells delivered, lost, duplicated and
// reordered readings apart, and counts a reading that arrives before its
// send was recorded.
func TestLedgerAccounting(t *testing.T) {
	t0 := time.Unix(1000, 0)
	type event struct {
		send bool // else a delivery
		dev  int
		seq  uint64
	}
	tests := []struct {
		name   string
		events []event
		want   Totals
	}{
		{"all delivered in order", []event{{true, 0, 1}, {false, 0, 1}, {true, 0, 2}, {false, 0, 2}}, Totals{Sent: 2, Delivered: 2}},
		{"one lost", []event{{true, 0, 1}, {true, 0, 2}, {false, 0, 2}}, Totals{Sent: 2, Delivered: 1, Lost: 1, LostDevices: 1, LostSample: []string{"a:1"}}},
		{"duplicate", []event{{true, 0, 1}, {false, 0, 1}, {false, 0, 1}}, Totals{Sent: 1, Delivered: 1, Duplicated: 1}},
		{"reordered", []event{{true, 0, 1}, {true, 0, 2}, {false, 0, 2}, {false, 0, 1}}, Totals{Sent: 2, Delivered: 2, Reordered: 1}},
		{"arrives before its send is recorded", []event{{false, 1, 1}, {true, 1, 1}}, Totals{Sent: 1, Delivered: 1}},
		{"early duplicate", []event{{false, 1, 1}, {false, 1, 1}, {true, 1, 1}}, Totals{Sent: 1, Delivered: 1, Duplicated: 1}},
		{"never sent is not delivered", []event{{false, 0, 7}}, Totals{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NewLedger([]string{"a", "b"})
			l.Open(t0)
			for i, e := range tt.events {
				at := t0.Add(time.Duration(i) * time.Millisecond)
				if e.send {
					l.Sent(e.dev, e.seq, at)
				} else {
					l.Delivered([]string{"a", "b"}[e.dev], e.seq, at)
				}
			}
			got := l.Totals()
			if got.Sent != tt.want.Sent || got.Delivered != tt.want.Delivered || got.Lost != tt.want.Lost ||
				got.Duplicated != tt.want.Duplicated || got.Reordered != tt.want.Reordered || got.LostDevices != tt.want.LostDevices ||
				len(got.LostSample) != len(tt.want.LostSample) {
				t.Fatalf("totals %+v, want %+v", got, tt.want)
			}
		})
	}
	if NewLedger([]string{"a"}).Delivered("nobody", 1, t0) {
		t.Fatal("an unknown device was accounted")
	}
}

// TestLedgerLatency: latencies count from the window's opening and are
// measured from the write to the arrival.
func TestLedgerLatency(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := NewLedger([]string{"a"})
	l.Sent(0, 1, t0)
	l.Open(t0.Add(time.Second))
	l.Delivered("a", 1, t0.Add(1100*time.Millisecond)) // sent before the window: not timed
	for i := uint64(2); i <= 101; i++ {
		sent := t0.Add(time.Second + time.Duration(i)*10*time.Millisecond)
		l.Sent(0, i, sent)
		l.Delivered("a", i, sent.Add(time.Duration(i)*time.Millisecond))
	}
	lat := l.Latency()
	if lat.Count != 100 || lat.Max < 100 || lat.Max > 102 || lat.P50 < 50 || lat.P50 > 53 {
		t.Fatalf("latency %+v", lat)
	}
	if s := l.Series(); len(s) == 0 || s[0].Delivered == 0 {
		t.Fatalf("series %+v", s)
	}
}
