package simulator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// edge is a minimal stand-in for the ingest edge: it frames and decrypts
// what arrives with the devices' keys and counts readings per device.
type edge struct {
	ln       net.Listener
	keys     map[string]*wire.LegacyKey
	variants map[string]wire.Variant
	mu       sync.Mutex
	got      map[string]int
	last     wire.Reading // the latest reading opened
	bad      []string
	conns    []net.Conn
}

func startEdge(t *testing.T, devs []Device) *edge {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &edge{ln: ln, keys: map[string]*wire.LegacyKey{}, variants: map[string]wire.Variant{}, got: map[string]int{}}
	for _, d := range devs {
		e.keys[d.ID] = wire.NewLegacyKey(d.Device)
		e.variants[d.ID] = d.Variant
	}
	t.Cleanup(func() { e.ln.Close(); e.dropAll() })
	go e.serve()
	return e
}

func (e *edge) serve() {
	for {
		c, err := e.ln.Accept()
		if err != nil {
			return
		}
		e.mu.Lock()
		e.conns = append(e.conns, c)
		e.mu.Unlock()
		go e.handle(c)
	}
}

func (e *edge) handle(c net.Conn) {
	defer c.Close()
	fr := wire.NewFrameReader(c, wire.FrameReaderOptions{})
	var id string // a connection carries one device: remember its key
	for {
		f, err := fr.Next()
		if err != nil {
			return
		}
		ct, err := wire.DecodeFrame(nil, f)
		if err != nil {
			e.fail(err.Error())
			return
		}
		ok := false
		var r wire.Reading
		for did, k := range e.keys {
			if id != "" && did != id {
				continue
			}
			wrong := wire.Pico + wire.Pseudo - e.variants[did]
			var v wire.Variant
			var err error
			r, v, err = k.Open(nil, ct, wrong) // tried first, so a device sealing with the wrong variant is caught
			if err == nil && v != e.variants[did] {
				e.fail("device " + did + " sealed with the other variant")
				return
			}
			if err == nil && r.Validate() == nil {
				id, ok = did, true
				break
			}
		}
		e.mu.Lock()
		if ok {
			e.got[id]++
			e.last = r
		} else {
			e.bad = append(e.bad, "frame opened by no key")
		}
		e.mu.Unlock()
	}
}

func (e *edge) fail(s string) {
	e.mu.Lock()
	e.bad = append(e.bad, s)
	e.mu.Unlock()
}

func (e *edge) dropAll() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, c := range e.conns {
		c.Close()
	}
	e.conns = nil
}

func (e *edge) counts() (map[string]int, []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]int{}
	for k, v := range e.got {
		out[k] = v
	}
	return out, append([]string(nil), e.bad...)
}

func TestFleetSendsEveryReading(t *testing.T) {
	devs, err := GenerateDevices(20, "t", "mixed")
	if err != nil {
		t.Fatal(err)
	}
	e := startEdge(t, devs)
	f, err := NewFleet(Options{Server: e.ln.Addr().String(), Devices: devs, Rate: 500, Count: 50, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := f.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if st := f.Stats(); st.Sent != 20*50 {
		t.Fatalf("sent %d, want %d (%+v)", st.Sent, 20*50, st)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, bad := e.counts()
		if len(bad) > 0 {
			t.Fatalf("edge rejected frames: %v", bad[0])
		}
		complete := len(got) == len(devs)
		for _, n := range got {
			complete = complete && n == 50
		}
		if complete {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("per-device readings %v, want 50 each for %d devices", got, len(devs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFleetReconnects(t *testing.T) {
	devs, err := GenerateDevices(5, "r", "pico")
	if err != nil {
		t.Fatal(err)
	}
	e := startEdge(t, devs)
	f, err := NewFleet(Options{Server: e.ln.Addr().String(), Devices: devs, Rate: 100})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	testkit.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if st := f.Stats(); st.Sent < 50 {
			return fmt.Errorf("%d readings sent of 50", st.Sent)
		}
		return nil
	})
	e.dropAll() // the edge goes away for every connection at once
	before := f.Stats().Sent
	testkit.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if st := f.Stats(); st.Reconnects < 5 || st.Sent < before+100 {
			return fmt.Errorf("%d reconnects of 5, %d readings sent since the drop of 100", st.Reconnects, st.Sent-before)
		}
		return nil
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	if st := f.Stats(); st.Connected != 0 {
		t.Fatalf("%d connections left open", st.Connected)
	}
}

func TestGenerateDevices(t *testing.T) {
	devs, err := GenerateDevices(100, "sim", "mixed")
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for i, d := range devs {
		if ids[d.ID] || !wire.ValidID(d.ID) {
			t.Fatalf("id %q repeated or invalid", d.ID)
		}
		ids[d.ID] = true
		for _, c := range append(d.Key[:], d.IV[:]...) {
			if !strings.ContainsRune("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", rune(c)) {
				t.Fatalf("key byte %q not alphanumeric", c)
			}
		}
		if want := wire.Pico + wire.Variant(i%2); d.Variant != want {
			t.Fatalf("device %d variant %v, want %v", i, d.Variant, want)
		}
	}
	if devs[0].Key == devs[1].Key {
		t.Fatal("two devices share a key")
	}
	if _, err := GenerateDevices(1, "bad.prefix", "pico"); err == nil {
		t.Fatal("accepted a prefix that makes invalid ids")
	}
}

func TestLoadOrCreateKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "keys.jsonl")
	first, err := LoadOrCreateKeys(path, 3, "sim")
	if err != nil || len(first) != 3 {
		t.Fatalf("create: %d %v", len(first), err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v %v, want 0600", st.Mode().Perm(), err)
	}
	again, err := LoadOrCreateKeys(path, 2, "sim")
	if err != nil || len(again) != 2 || again[0] != first[0] || again[1] != first[1] {
		t.Fatal("second call did not reuse the file's keys")
	}
	more, err := LoadOrCreateKeys(path, 5, "sim")
	if err != nil || len(more) != 5 || more[2] != first[2] {
		t.Fatalf("extend: %d %v", len(more), err)
	}
	f, _ := os.Open(path)
	defer f.Close()
	b, _ := io.ReadAll(f)
	if n := strings.Count(string(b), "\n"); n != 5 {
		t.Fatalf("file has %d lines, want 5", n)
	}
	// A file whose last line lacks its newline is extended on a new line.
	if err := os.WriteFile(path, bytes.TrimSuffix(b, []byte("\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	if devs, err := LoadOrCreateKeys(path, 6, "sim"); err != nil || len(devs) != 6 || devs[4] != more[4] {
		t.Fatalf("extending an unterminated file: %d %v", len(devs), err)
	}
}

func TestSignal(t *testing.T) {
	a, b := NewSignal(42, 20), NewSignal(42, 20)
	sawNegative := false
	for seq := uint64(1); seq <= 2000; seq++ {
		ra, rb := a.Next(seq), b.Next(seq)
		if ra != rb {
			t.Fatalf("seq %d: same seed, different readings", seq)
		}
		if err := ra.Validate(); err != nil {
			t.Fatalf("seq %d: %v", seq, err)
		}
		for f := range wire.NumFields {
			v := ra[f]
			if strings.HasPrefix(v, "-") {
				sawNegative = true
				if dec := len(v) - strings.IndexByte(v, '.') - 1; dec != 2 {
					t.Fatalf("negative %q has %d decimals, want 2", v, dec)
				}
			} else if dec := len(v) - strings.IndexByte(v, '.') - 1; dec != 3 {
				t.Fatalf("%s %q has %d decimals, want 3", f, v, dec)
			}
		}
		if temp := ra.Float(wire.Temp); temp < 35.5 || temp > 38 {
			t.Fatalf("body temperature %v out of range", temp)
		}
	}
	if !sawNegative {
		t.Fatal("accelerometer never negative: noise missing")
	}
}

func TestSeqRoundTrip(t *testing.T) {
	s := NewSignal(3, 20)
	for _, seq := range []uint64{1, 9, 10, 1234, 9999, 10000, 12345} {
		r := s.Next(seq)
		EncodeSeq(&r, seq)
		if err := r.Validate(); err != nil {
			t.Fatal(err)
		}
		got, ok := DecodeSeq(SeqValues(&r))
		if !ok || got != seq%SeqModulus {
			t.Fatalf("seq %d decoded as %d %v from %v", seq, got, ok, r)
		}
	}
}

func TestMix(t *testing.T) {
	m, err := ParseMix("pico=40,pseudo=10,v2=50")
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for i := range 100 {
		d := m.Assign(wire.Device{ID: "d"}, i, 100)
		switch {
		case d.V2:
			counts["v2"]++
		case d.Variant == wire.Pseudo:
			counts["pseudo"]++
		default:
			counts["pico"]++
		}
	}
	if counts["pico"] != 40 || counts["pseudo"] != 10 || counts["v2"] != 50 {
		t.Fatalf("mix of 100 devices: %v", counts)
	}
	for _, bad := range []string{"", "pico", "rsa=3", "pico=-1", "pico=0"} {
		if _, err := ParseMix(bad); err == nil {
			t.Errorf("ParseMix(%q) accepted", bad)
		}
	}
}

// TestSignalFeverAndFall: a fever episode raises the body temperature by
// 1.5-2.5 °C; a requested fall gives free fall, an impact and lying.
func TestSignalFeverAndFall(t *testing.T) {
	s := NewSignal(5, 1)
	s.FeverPerHour = 3600 // starts at once
	first := s.Next(1)
	base := first.Float(wire.Temp)
	peak := 0.0
	for seq := uint64(2); seq <= 3*3600; seq++ {
		r := s.Next(seq)
		peak = max(peak, r.Float(wire.Temp))
	}
	if rise := peak - base; rise < 1.3 || rise > 2.9 {
		t.Fatalf("fever rose %.2f °C, want 1.5-2.5 (with drift)", rise)
	}

	s = NewSignal(6, 10)
	s.Next(1)
	s.Fall()
	var z, x []float64
	for seq := uint64(2); seq <= 50; seq++ {
		r := s.Next(seq)
		z, x = append(z, r.Float(wire.AcelZ)), append(x, r.Float(wire.AcelX))
	}
	if z[0] > 0.2 {
		t.Errorf("no free fall: z %.2f g", z[0])
	}
	impact := false
	for _, v := range z[:8] {
		impact = impact || v > 2.5
	}
	if !impact {
		t.Errorf("no impact in %v", z[:8])
	}
	if x[len(x)-1] < 0.9 || z[len(z)-1] > 0.2 {
		t.Errorf("not lying after the fall: x %.2f z %.2f", x[len(x)-1], z[len(z)-1])
	}
}
