package decrypt

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/wire"
)

func loadKeys(t testing.TB) []wire.Device {
	t.Helper()
	f, err := os.Open("testdata/keys.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	devs, err := wire.ReadKeys(f)
	if err != nil {
		t.Fatal(err)
	}
	return devs
}

// testReading is reading number i: PulseSig is "<i>.000", so that tests can
// tell readings apart and check their order.
func testReading(i int) wire.Reading {
	return wire.Reading{fmt.Sprintf("36.%03d", i%1000), "23.700", fmt.Sprintf("%d.000", i), "0.000", "-0.02", "0.980", "23.400"}
}

// sealReading is reading i as d sends it, as binary ciphertext.
func sealReading(d wire.Device, v wire.Variant, i int) []byte {
	r := testReading(i)
	ct, err := wire.DecodeFrame(nil, wire.NewLegacyKey(d).Seal(nil, v, r.AppendJSON(nil)))
	if err != nil {
		panic(err) // Seal's own output: only a bug in wire gets here
	}
	return ct
}

// secretTexts are the ways key material could leak into an error: the raw
// key and IV characters and their hex.
func secretTexts(devs []wire.Device) []string {
	var out []string
	for _, d := range devs {
		out = append(out, string(d.Key[:]), string(d.IV[:]), hex.EncodeToString(d.Key[:]), hex.EncodeToString(d.IV[:]))
	}
	return out
}

func TestIdentify(t *testing.T) {
	devs := loadKeys(t)
	stranger := wire.Device{ID: "stranger", Key: [16]byte([]byte("ZZZZZZZZZZZZZZZZ")), IV: devs[0].IV}
	// twin has device 1's key and IV under another id: both open device
	// 1's frames fully, which is ambiguous.
	twin := wire.Device{ID: "twin", Key: devs[0].Key, IV: devs[0].IV}
	// lookalike has device 1's key, and its IV differs from device 1's by
	// one bit of byte 1 (0x01). The first block of any frame is
	// D(C1) XOR IV for both variants, so under lookalike it decrypts to
	// device 1's first block with byte 1 '"' (0x22) turned into '#' (0x23):
	// `{#Temp":"36.001"`, '{' and printable, a first-block candidate. The
	// rest cannot repair it: pico chains blocks 2.. on the ciphertext, so
	// they decrypt exactly as under device 1's key, and the text starts
	// `{#Temp"`, which is not JSON; read as pseudo (Open tries both), every
	// block carries the same flipped bit and the later ones are garbage.
	// So two first-block candidates, one full fit.
	lookalike := wire.Device{ID: "lookalike", Key: devs[0].Key, IV: devs[0].IV}
	lookalike.IV[1] ^= 0x01
	corruptLast := sealReading(devs[1], wire.Pico, 3)
	corruptLast[len(corruptLast)-1] ^= 0xff
	corruptMiddle := sealReading(devs[2], wire.Pseudo, 4)
	corruptMiddle[wire.BlockSize+3] ^= 0x40

	type testCase struct {
		name       string
		devs       []wire.Device
		ct         []byte
		want       string
		variant    wire.Variant
		candidates int
		err        error
	}
	var tests []testCase
	for i, d := range devs {
		for _, v := range []wire.Variant{wire.Pico, wire.Pseudo} {
			tests = append(tests, testCase{fmt.Sprintf("%s %s", d.ID, v), devs, sealReading(d, v, i), d.ID, v, 1, nil})
		}
	}
	tests = append(tests, []testCase{
		{"no key fits", devs, sealReading(stranger, wire.Pico, 1), "", 0, 0, ErrUnknownDevice},
		{"empty index", nil, sealReading(devs[0], wire.Pico, 1), "", 0, 0, ErrUnknownDevice},
		{"not whole blocks", devs, sealReading(devs[0], wire.Pico, 1)[:20], "", 0, 0, ErrUnknownDevice},
		{"two keys fit fully", append(slices.Clone(devs), twin), sealReading(devs[0], wire.Pico, 1), "", 0, 2, ErrAmbiguous},
		{"two fit the first block, one fully (pico)", append(slices.Clone(devs), lookalike), sealReading(devs[0], wire.Pico, 1), devs[0].ID, wire.Pico, 2, nil},
		{"two fit the first block, one fully (pseudo)", append(slices.Clone(devs), lookalike), sealReading(devs[0], wire.Pseudo, 1), devs[0].ID, wire.Pseudo, 2, nil},
		{"only the lookalike fits the first block", []wire.Device{lookalike, devs[1]}, sealReading(devs[0], wire.Pico, 1), "lookalike", 0, 1, ErrInvalid},
		{"corrupted last block", devs, corruptLast, devs[1].ID, 0, 1, ErrInvalid},
		{"corrupted middle block", devs, corruptMiddle, devs[2].ID, 0, 1, ErrInvalid},
	}...)
	secrets := secretTexts(append(slices.Clone(devs), stranger, lookalike))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ct := slices.Clone(tt.ct)
			id, err := NewKeyIndex(tt.devs).Identify(make([]byte, 0, 2*len(ct)), ct)
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if !bytes.Equal(ct, tt.ct) {
				t.Fatal("Identify changed the ciphertext")
			}
			if id.Candidates != tt.candidates {
				t.Fatalf("%d candidates, want %d", id.Candidates, tt.candidates)
			}
			if id.Device != tt.want {
				t.Fatalf("device %q, want %q", id.Device, tt.want)
			}
			if err == nil {
				if id.Variant != tt.variant || id.Key == nil || id.Reading.Validate() != nil {
					t.Fatalf("identified %s %v (key %v), want %v and a valid reading", id.Device, id.Variant, id.Key != nil, tt.variant)
				}
				return
			}
			for _, s := range secrets {
				if strings.Contains(err.Error(), s) {
					t.Fatalf("error %q holds key material", err)
				}
			}
		})
	}
}

// TestIdentifyAmbiguousNamesDevices: the error says which devices share a key.
func TestIdentifyAmbiguousNamesDevices(t *testing.T) {
	devs := loadKeys(t)
	twin := wire.Device{ID: "twin", Key: devs[0].Key, IV: devs[0].IV}
	_, err := NewKeyIndex(append(devs, twin)).Identify(nil, sealReading(devs[0], wire.Pico, 1))
	if !errors.Is(err, ErrAmbiguous) || !strings.Contains(err.Error(), devs[0].ID) || !strings.Contains(err.Error(), "twin") {
		t.Fatalf("error %v, want ambiguous naming %s and twin", err, devs[0].ID)
	}
}

func TestKeyIndexPutDelete(t *testing.T) {
	devs := loadKeys(t)
	ix := NewKeyIndex(devs)
	ix.Delete(devs[0].ID)
	if _, _, ok := ix.Lookup(devs[0].ID); ok || ix.Len() != 3 {
		t.Fatal("delete")
	}
	for _, d := range devs[1:] {
		if _, _, ok := ix.Lookup(d.ID); !ok {
			t.Fatalf("%s lost by deleting another device", d.ID)
		}
	}
	ix.Put(devs[1], true)
	if _, revoked, _ := ix.Lookup(devs[1].ID); !revoked || ix.Len() != 3 {
		t.Fatal("revoke by Put")
	}
}

func TestConnCacheIsBounded(t *testing.T) {
	c := newConnCache(100)
	for i := range 1000 {
		c.put(fmt.Sprint(i), connDevice{device: "d"})
	}
	if n := len(c.cur) + len(c.old); n > 100 {
		t.Fatalf("%d entries, bound 100", n)
	}
	if _, ok := c.get("999"); !ok {
		t.Fatal("most recent connection forgotten")
	}
	if _, ok := c.get("0"); ok {
		t.Fatal("oldest connection still remembered")
	}
}

// benchDevices makes n devices with distinct keys.
func benchDevices(n int) []wire.Device {
	devs := make([]wire.Device, n)
	for i := range devs {
		devs[i].ID = fmt.Sprintf("dev-%06d", i)
		copy(devs[i].Key[:], fmt.Sprintf("key-%012d", i))
		copy(devs[i].IV[:], fmt.Sprintf("iv--%012d", i))
	}
	return devs
}

// benchSizes are the key index sizes benchmarked.
var benchSizes = []int{10, 1000, 10000, 100000}

// BenchmarkIdentify is a connection's first frame: the first-block search
// over every key ("search"), against the old way, a full decrypt with every
// key until one parses ("trial"). The sender is the last device searched.
func BenchmarkIdentify(b *testing.B) {
	for _, n := range benchSizes {
		devs := benchDevices(n)
		ix := NewKeyIndex(devs)
		ct := sealReading(devs[n-1], wire.Pico, 7)
		buf := make([]byte, 0, 2*len(ct))
		b.Run(fmt.Sprintf("search/devices=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ix.Identify(buf, ct); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("trial/devices=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				for _, e := range ix.list {
					if _, _, err := e.key.Open(buf, ct, wire.Pico); err == nil {
						break
					}
				}
			}
		})
	}
}

// BenchmarkCachedOpen is every later frame of a connection, for index
// sizes it must not depend on: "open" is the known key's Open (AES-CBC,
// padding, JSON, validation); "handler" the worker's whole handler
// (headers, hex decoding, connection cache, Open, the READINGS message)
// short of the network.
func BenchmarkCachedOpen(b *testing.B) {
	for _, n := range benchSizes {
		devs := benchDevices(n)
		sender := devs[n-1]
		js := &stubJetStream{}
		w, err := newWorker(js, Options{Keys: devs, Partitions: 16})
		if err != nil {
			b.Fatal(err)
		}
		r := testReading(7)
		frame := wire.NewLegacyKey(sender).Seal(nil, wire.Pseudo, r.AppendJSON(nil))
		ct, _ := wire.DecodeFrame(nil, frame)
		buf := make([]byte, 0, 2*len(ct))
		b.Run(fmt.Sprintf("open/devices=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				key, _, _ := w.ix.Lookup(sender.ID)
				if _, _, err := key.Open(buf, ct, wire.Pseudo); err != nil {
					b.Fatal(err)
				}
			}
		})
		m := &stubMsg{data: frame, header: rawHeaders("bench-conn", 1, time.Now()), seq: 1}
		if out, err := handleStub(b.Context(), w, js, m); err != nil || !strings.HasPrefix(out.Subject, "medpipe.readings.") {
			b.Fatalf("first frame: %v", err) // the connection's first frame: a search
		}
		b.Run(fmt.Sprintf("handler/devices=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				js.published = js.published[:0]
				if _, err := w.handle(b.Context(), m); err != nil {
					b.Fatal(err)
				}
			}
			if got := testutil.ToFloat64(w.m.searches); got != 1 {
				b.Fatalf("%v searches, want only the first frame's", got)
			}
		})
	}
}

// BenchmarkIndexMemory reports the heap a key index of 100,000 devices holds.
func BenchmarkIndexMemory(b *testing.B) {
	devs := benchDevices(100000)
	var before, after runtime.MemStats
	for b.Loop() {
		runtime.GC()
		runtime.ReadMemStats(&before)
		ix := NewKeyIndex(devs)
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(ix.Len()), "B/device")
		runtime.KeepAlive(ix)
	}
}
