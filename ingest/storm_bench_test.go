package ingest

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/wire"
)

// BenchmarkEdgeUnderStorm measures what good v2 devices see (the time from
// writing a frame to its ACK, which the edge sends once RAW stored it)
// while the edge is quiet and while it is under abuse. The good devices
// connect from 127.0.0.2, every abuser from 127.0.0.1: one address, which
// the per-address limits (pre-frame bound, accept rate, penalty) hold back.
// "storm" is
//
//   - 5,000 connections sending random bytes, reconnecting a second after
//     each close;
//   - 1,000 slow-loris connections, one hex digit a second;
//   - 20 connections sending over-long frames;
//   - 50 connections sending well-formed frames that fit no key (stored:
//     the edge never decrypts; decrypt dead-letters them).
//
// "flood" is issue 16's one-address flood:
//
//   - 500 idle sockets (connect, send nothing);
//   - 200 slow-loris connections, half legacy (a hex digit a second), half
//     v2 (a frame's bytes one a second);
//   - 10 MB of hex without '+' on one connection, again after each close.
//
// Good devices are paced (20 devices at 20 frames/s), so each iteration is
// one good frame: run it with a fixed count, e.g.
//
//	go test -run '^$' -bench EdgeUnderStorm -benchtime 2000x ./ingest
//
// It reports p50/p99 ACK latency, the process's RSS (edge and abusers
// together) and the peak of open connections. STORM_ONLY=1..4 runs one kind
// of abuser alone, in the order above, to see which one costs what. The
// abusers run in this process, on the same cores as the edge.
func BenchmarkEdgeUnderStorm(b *testing.B) {
	for _, name := range []string{"quiet", "storm", "flood"} {
		b.Run(name, func(b *testing.B) {
			// Logs off: a line a second per kind of abuse would interleave with the results.
			h := start(b, Options{MaxFrame: 1024, FrameTimeout: 5 * time.Second, Log: slog.New(slog.DiscardHandler)})
			addr := h.edge.Addr().String()
			ctx, cancel := context.WithCancel(context.Background())
			var abusers sync.WaitGroup
			defer func() { cancel(); abusers.Wait() }()
			switch name {
			case "storm":
				startStorm(ctx, &abusers, addr)
			case "flood":
				startFlood(ctx, &abusers, addr)
			}
			if name != "quiet" {
				time.Sleep(3 * time.Second) // every abuser connected at least once
			}
			var peak int64
			sample := time.NewTicker(100 * time.Millisecond)
			defer sample.Stop()
			go func() {
				for range sample.C {
					peak = max(peak, h.edge.active.Load())
				}
			}()
			const devices, rate = 20, 20
			b.ResetTimer()
			lat := goodDevices(b, addr, devices, rate, b.N)
			b.StopTimer()
			slices.Sort(lat)
			q := func(p float64) float64 {
				return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
			}
			b.ReportMetric(q(0.5), "p50-ms")
			b.ReportMetric(q(0.99), "p99-ms")
			b.ReportMetric(float64(rssBytes())/(1<<20), "rss-MiB")
			b.ReportMetric(float64(peak), "peak-conns")
			var refused float64
			for _, r := range refusals {
				refused += testutil.ToFloat64(h.edge.m.rejected.WithLabelValues(r))
			}
			b.ReportMetric(refused, "refused-conns")
			b.ReportMetric(testutil.ToFloat64(h.edge.m.penalties), "penalties")
		})
	}
}

// goodDevices runs v2 devices, each on its own connection at rate frames/s,
// until n frames are acknowledged; it returns each frame's ACK latency.
func goodDevices(b *testing.B, addr string, devices int, rate float64, n int) []time.Duration {
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	per := (n + devices - 1) / devices
	for d := range devices {
		wg.Go(func() {
			dev := testDev
			dev.ID = "good-" + strconv.Itoa(d)
			key := wire.NewV2Key(dev)
			dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(goodAddr)}}
			c, err := dialer.Dial("tcp", addr)
			if err != nil {
				b.Error(err)
				return
			}
			defer c.Close()
			r := bufio.NewReader(c)
			tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
			defer tick.Stop()
			var frame []byte
			for seq := uint64(1); seq <= uint64(per); seq++ {
				<-tick.C
				frame, err = key.SealData(frame[:0], dev.ID, seq, [12]byte{byte(seq), byte(d)}, []byte(`{"time":1,"values":{"Temp":36.6}}`))
				if err != nil {
					b.Error(err)
					return
				}
				t0 := time.Now()
				if _, err := c.Write(frame); err != nil {
					b.Error(err)
					return
				}
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				raw, err := wire.ReadV2Frame(r, nil, 1024)
				if err != nil {
					b.Errorf("device %d frame %d: no ACK: %v", d, seq, err)
					return
				}
				if f, err := wire.ParseV2(raw); err != nil || f.Type != wire.V2Ack || f.Seq != seq {
					b.Errorf("device %d frame %d: reply %+v %v", d, seq, f, err)
					return
				}
				mu.Lock()
				lat = append(lat, time.Since(t0))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(lat) == 0 {
		b.Fatal("no frame acknowledged")
	}
	return lat
}

// The storm's addresses: good devices and abusers.
const goodAddr, abuserAddr = "127.0.0.2", "127.0.0.1"

// abuser starts abusive connection loops (from abuserAddr); each
// reconnects about a second after the edge closes it, until ctx ends.
// STORM_ONLY=k runs only the k-th kind started.
type abuser struct {
	ctx  context.Context
	wg   *sync.WaitGroup
	addr string
	kind int
}

func (a *abuser) start(n int, session func(c net.Conn)) {
	a.kind++
	if only := os.Getenv("STORM_ONLY"); only != "" && only != strconv.Itoa(a.kind) {
		return
	}
	ctx := a.ctx
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(abuserAddr)}, Timeout: 5 * time.Second}
	for range n {
		a.wg.Go(func() {
			for ctx.Err() == nil {
				c, err := d.DialContext(ctx, "tcp", a.addr)
				if err == nil {
					stop := context.AfterFunc(ctx, func() { c.Close() })
					session(c)
					stop()
					c.Close()
				}
				select {
				case <-ctx.Done():
				case <-time.After(500*time.Millisecond + mrand.N(time.Second)): // independent senders are not in step
				}
			}
		})
	}
}

// untilClosed waits for the edge to close c.
func untilClosed(c net.Conn) { _, _ = c.Read(make([]byte, 256)) }

// startFlood starts issue 16's flood from one address.
func startFlood(ctx context.Context, wg *sync.WaitGroup, addr string) {
	a := &abuser{ctx: ctx, wg: wg, addr: addr}
	a.start(500, untilClosed) // idle sockets
	drip := func(c net.Conn, b []byte) {
		for i := 0; ctx.Err() == nil; i++ {
			if _, err := c.Write([]byte{b[i%len(b)]}); err != nil {
				return
			}
			time.Sleep(time.Second)
		}
	}
	a.start(100, func(c net.Conn) { drip(c, []byte("0123456789abcdef")) }) // legacy slow loris
	f, err := wire.NewV2Key(testDev).SealData(nil, "loris", 1, [12]byte{}, []byte(`{"time":1,"values":{"Temp":36.6}}`))
	if err != nil {
		panic(err)
	}
	a.start(100, func(c net.Conn) { drip(c, f) }) // v2 slow loris
	hex := []byte(strings.Repeat("0123456789abcdef", 10<<20/16))
	a.start(1, func(c net.Conn) { // 10 MB of hex without '+'
		_, _ = c.Write(hex)
		untilClosed(c)
	})
}

// startStorm starts the mixed storm of abusive connections.
func startStorm(ctx context.Context, wg *sync.WaitGroup, addr string) {
	a := &abuser{ctx: ctx, wg: wg, addr: addr}
	abuse := a.start
	abuse(5000, func(c net.Conn) { // random bytes
		junk := make([]byte, 64)
		_, _ = rand.Read(junk)
		_, _ = c.Write(junk)
		untilClosed(c)
	})
	abuse(1000, func(c net.Conn) { // slow loris: a hex digit a second
		for ctx.Err() == nil {
			if _, err := c.Write([]byte("a")); err != nil {
				return
			}
			time.Sleep(time.Second)
		}
	})
	abuse(20, func(c net.Conn) { // over-long frames
		_, _ = c.Write([]byte(strings.Repeat(strings.Repeat("ab", 16)+"+", 200)))
		untilClosed(c)
	})
	stranger := testDev
	stranger.Key[0] ^= 0xff
	abuse(50, func(c net.Conn) { // well-formed frames no key opens
		k := wire.NewLegacyKey(stranger)
		for i := 0; ctx.Err() == nil; i++ {
			r := wire.Reading{fmt.Sprintf("%d.000", i), "1", "1", "1", "1", "1", "1"}
			if _, err := c.Write(k.Seal(nil, wire.Pico, r.AppendJSON(nil))); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// rssBytes is this process's resident set size (client and edge together).
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
