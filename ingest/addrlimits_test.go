package ingest

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

// eventually polls cond until it holds or a deadline generous enough for a
// busy machine passes: it tells stuck from slow, never sleeps for correctness.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// metricIs waits for a counter or gauge to reach want.
func metricIs(t testing.TB, name string, get func() float64, want float64) {
	t.Helper()
	eventually(t, name, func() bool { return get() == want })
}

// storedFrom waits until RAW holds n frames and returns how many came from
// each remote address (the edge's Medpipe-Remote header, host part).
func storedFrom(t testing.TB, h *harness, n int) map[string]int {
	t.Helper()
	by := map[string]int{}
	for _, m := range rawMessages(t, h.js, n) {
		host, _, _ := net.SplitHostPort(m.Headers().Get(bus.HeaderRemote))
		by[host]++
	}
	return by
}

// talk sends one frame on c, making it a connection that sent a valid frame.
func talk(t testing.TB, c net.Conn, i int) {
	t.Helper()
	if _, err := c.Write(frame(i)); err != nil {
		t.Fatal(err)
	}
}

// TestPerAddressLimits: each limit refuses or cuts what it is for, counts
// it under its own label, and leaves other addresses (and, for the
// pre-frame bound and the penalty, the same address's talking devices) alone.
func TestPerAddressLimits(t *testing.T) {
	const attacker, other = "127.0.0.1", "127.0.0.2"
	tests := []struct {
		name string
		opts Options
		run  func(t *testing.T, h *harness)
	}{
		{"pre-frame bound counts only silent connections", Options{MaxPreFramePerIP: 3}, func(t *testing.T, h *harness) {
			// Two devices behind the attacker's NAT already talk.
			dev1, dev2 := dialFrom(t, h, attacker), dialFrom(t, h, attacker)
			talk(t, dev1, 1)
			talk(t, dev2, 1)
			storedFrom(t, h, 2)
			for range 3 {
				dialFrom(t, h, attacker)
			}
			waitActive(t, h, 5)
			if !closedByEdge(dialFrom(t, h, attacker), 10*time.Second) {
				t.Fatal("a fourth silent connection from one address was not refused")
			}
			metricIs(t, "rejected{max_preframe_per_ip}", func() float64 { return testutil.ToFloat64(h.edge.m.rejected.WithLabelValues(refusePreFrameIP)) }, 1)
			// Talking devices of the same address, and other addresses, go on.
			newDev := dialFrom(t, h, other)
			talk(t, dev1, 2)
			talk(t, newDev, 1)
			if by := storedFrom(t, h, 4); by[attacker] != 3 || by[other] != 1 {
				t.Fatalf("frames by address %v", by)
			}
		}},
		{"accept rate per address", Options{AcceptRatePerIP: 0.01, AcceptBurstPerIP: 3}, func(t *testing.T, h *harness) {
			for i := range 3 {
				talk(t, dialFrom(t, h, attacker), i)
			}
			waitActive(t, h, 3)
			if !closedByEdge(dialFrom(t, h, attacker), 10*time.Second) {
				t.Fatal("a fourth connection within the burst was not refused")
			}
			metricIs(t, "rejected{accept_rate}", func() float64 { return testutil.ToFloat64(h.edge.m.rejected.WithLabelValues(refuseAcceptRateIP)) }, 1)
			talk(t, dialFrom(t, h, other), 9)
			if by := storedFrom(t, h, 4); by[other] != 1 {
				t.Fatalf("frames by address %v", by)
			}
		}},
		{"first-frame timeout cuts silent connections only", Options{FirstFrameTimeout: 300 * time.Millisecond}, func(t *testing.T, h *harness) {
			dev, silent := dialFrom(t, h, attacker), dialFrom(t, h, attacker)
			talk(t, dev, 1)
			if !closedByEdge(silent, 10*time.Second) {
				t.Fatal("silent connection not cut")
			}
			metricIs(t, "connection_errors{first_frame_timeout}", func() float64 {
				return testutil.ToFloat64(h.edge.m.connErrors.WithLabelValues("first_frame_timeout"))
			}, 1)
			talk(t, dev, 2)
			storedFrom(t, h, 2)
		}},
		{"v2 slow loris hits the frame timeout", Options{FrameTimeout: 300 * time.Millisecond}, func(t *testing.T, h *harness) {
			loris := dialFrom(t, h, attacker)
			f := v2Frame(t, 1)
			stop := make(chan struct{})
			defer close(stop)
			go func() { // a byte every 100 ms: the idle timeout alone never fires
				for _, b := range f {
					select {
					case <-stop:
						return
					case <-time.After(100 * time.Millisecond):
					}
					if _, err := loris.Write([]byte{b}); err != nil {
						return
					}
				}
			}()
			if !closedByEdge(loris, 10*time.Second) {
				t.Fatal("slow-loris v2 frame not cut")
			}
			metricIs(t, "connection_errors{frame_timeout}", func() float64 { return testutil.ToFloat64(h.edge.m.connErrors.WithLabelValues("frame_timeout")) }, 1)
		}},
		{"10 MB of hex without '+' is cut at the first block", Options{}, func(t *testing.T, h *harness) {
			flood := dialFrom(t, h, attacker)
			hex := []byte(strings.Repeat("0123456789abcdef", 10<<20/16))
			go func() { _, _ = flood.Write(hex) }() // the edge cuts it long before the end
			if !closedByEdge(flood, 10*time.Second) {
				t.Fatal("hex flood not cut")
			}
			metricIs(t, "connection_errors{too_short}", func() float64 { return testutil.ToFloat64(h.edge.m.connErrors.WithLabelValues("too_short")) }, 1)
			dev := dialFrom(t, h, other)
			talk(t, dev, 1)
			if by := storedFrom(t, h, 1); by[attacker] != 0 { // rawMessages also checks nothing else came
				t.Fatalf("frames by address %v", by)
			}
		}},
		{"legacy frame bounded in blocks", Options{MaxBlocks: 8}, func(t *testing.T, h *harness) {
			long := dialFrom(t, h, attacker)
			block := strings.Repeat("ab", wire.BlockSize)
			if _, err := long.Write([]byte(strings.Repeat(block+"+", 8) + block)); err != nil {
				t.Fatal(err)
			}
			if !closedByEdge(long, 10*time.Second) {
				t.Fatal("nine-block frame not cut")
			}
			metricIs(t, "connection_errors{too_long}", func() float64 { return testutil.ToFloat64(h.edge.m.connErrors.WithLabelValues("too_long")) }, 1)
			talk(t, dialFrom(t, h, other), 1) // eight blocks: a reading fits
			storedFrom(t, h, 1)
		}},
		{"penalty after repeated abuse", Options{PenaltyStrikes: 3, Penalty: time.Minute}, func(t *testing.T, h *harness) {
			dev := dialFrom(t, h, attacker)
			talk(t, dev, 1)
			storedFrom(t, h, 1)
			idle := dialFrom(t, h, attacker)
			for i := range 3 {
				junk := dialFrom(t, h, attacker)
				if _, err := junk.Write([]byte("zz")); err != nil {
					t.Fatal(err)
				}
				if !closedByEdge(junk, 10*time.Second) {
					t.Fatalf("junk connection %d not cut", i)
				}
			}
			metricIs(t, "penalties_total", func() float64 { return testutil.ToFloat64(h.edge.m.penalties) }, 1)
			if !closedByEdge(idle, 10*time.Second) {
				t.Fatal("the penalised address's silent connection was not cut")
			}
			if !closedByEdge(dialFrom(t, h, attacker), 10*time.Second) {
				t.Fatal("a new connection from the penalised address was not refused")
			}
			metricIs(t, "rejected{penalised}", func() float64 { return testutil.ToFloat64(h.edge.m.rejected.WithLabelValues(refusePenalised)) }, 1)
			metricIs(t, "penalised_addresses", h.edge.penalisedAddrs, 1)
			// The device that already talked, and other addresses, go on.
			talk(t, dev, 2)
			talk(t, dialFrom(t, h, other), 1)
			if by := storedFrom(t, h, 3); by[attacker] != 2 || by[other] != 1 {
				t.Fatalf("frames by address %v", by)
			}
		}},
		{"no key opens the first frame: cut at its dead letter", Options{}, func(t *testing.T, h *harness) {
			bad := dialFrom(t, h, attacker)
			talk(t, bad, 1)
			msgs := rawMessages(t, h.js, 1)
			nc, err := nats.Connect(h.srv.ClientURL())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			m := nats.NewMsg(bus.DeadLetterSubject(bus.ReasonUnknownDevice))
			m.Header.Set(bus.HeaderConn, msgs[0].Headers().Get(bus.HeaderConn))
			m.Header.Set(bus.HeaderFrameSeq, msgs[0].Headers().Get(bus.HeaderFrameSeq))
			m.Header.Set(bus.HeaderReason, string(bus.ReasonUnknownDevice))
			if err := nc.PublishMsg(m); err != nil {
				t.Fatal(err)
			}
			if !closedByEdge(bad, 10*time.Second) {
				t.Fatal("connection not cut at its first unknown_device dead letter")
			}
			metricIs(t, "connection_errors{unknown_device}", func() float64 { return testutil.ToFloat64(h.edge.m.connErrors.WithLabelValues("unknown_device")) }, 1)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.run(t, start(t, tt.opts))
		})
	}
}

// TestAddrKey: IPv4 addresses are counted alone, IPv6 ones by /64.
func TestAddrKey(t *testing.T) {
	tests := []struct{ in, want string }{
		{"192.0.2.7:1234", "192.0.2.7"},
		{"[::ffff:192.0.2.7]:1234", "192.0.2.7"},
		{"[2001:db8:1:2:aaaa::1]:1234", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:bbbb::9]:99", "2001:db8:1:2::/64"},
		{"[fe80::1%eth0]:1", "fe80::/64"},
		{"not an address", "not an address"},
	}
	for _, tt := range tests {
		if got := addrKey(tt.in); got != tt.want {
			t.Errorf("addrKey(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestAddrTableStaysBounded: entries of addresses that hold nothing are
// dropped, so a spread-out scan does not grow the table for ever.
func TestAddrTableStaysBounded(t *testing.T) {
	e := &Edge{o: Options{AcceptRatePerIP: 10, AcceptBurstPerIP: 5, Penalty: time.Minute, PenaltyStrikes: 2, MaxConns: 10}, addrs: map[string]*addrState{}}
	t0 := time.Unix(1000, 0)
	busy := &addrState{open: 1}
	e.addrs["busy"] = busy
	e.addrs["penalised"] = &addrState{penalisedUntil: t0.Add(time.Hour)}
	e.addrs["drained"] = &addrState{tokens: 0, refilled: t0} // refilled by t0+1s at 10/s
	e.addrs["struck"] = &addrState{strikes: 1, struck: t0, tokens: 5, refilled: t0}
	e.sweepLocked(t0.Add(time.Second))
	for _, k := range []string{"busy", "penalised", "struck"} {
		if e.addrs[k] == nil {
			t.Fatalf("%s dropped", k)
		}
	}
	if e.addrs["drained"] != nil {
		t.Fatal("an idle address kept")
	}
	e.sweepLocked(t0.Add(2 * time.Minute))
	if e.addrs["struck"] != nil || e.addrs["busy"] == nil || e.addrs["penalised"] == nil {
		t.Fatalf("after the strikes decayed: %v", e.addrs)
	}
}
