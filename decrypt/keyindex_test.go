package decrypt

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"testing"

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

func sealReading(d wire.Device, v wire.Variant, i int) []byte {
	r := wire.Reading{fmt.Sprintf("36.%03d", i%1000), "23.700", fmt.Sprintf("%d.000", i), "0.000", "-0.02", "0.980", "23.400"}
	ct, err := wire.DecodeFrame(nil, wire.NewLegacyKey(d).Seal(nil, v, r.AppendJSON(nil)))
	if err != nil {
		panic(err)
	}
	return ct
}

func TestIdentify(t *testing.T) {
	devs := loadKeys(t)
	stranger := wire.Device{ID: "stranger", Key: [16]byte([]byte("ZZZZZZZZZZZZZZZZ")), IV: devs[0].IV}
	// twin shares device 1's key and IV: both open its frames fully.
	twin := wire.Device{ID: "twin", Key: devs[0].Key, IV: devs[0].IV}
	// lookalike shares device 1's key, and its IV differs in byte 1 by one
	// bit: the first block of device 1's frames decrypts under it to
	// `{#Temp":"36...`: printable, starting with '{', so a first-block
	// candidate; but pico chains later blocks on the ciphertext, not the
	// IV, so the full text is not JSON and the full check rejects it.
	lookalike := wire.Device{ID: "lookalike", Key: devs[0].Key, IV: devs[0].IV}
	lookalike.IV[1] ^= 0x01
	corrupt := sealReading(devs[1], wire.Pico, 3)
	corrupt[len(corrupt)-1] ^= 0xff

	tests := []struct {
		name       string
		devs       []wire.Device
		ct         []byte
		want       string
		variant    wire.Variant
		candidates int
		err        error
	}{
		{"pico", devs, sealReading(devs[2], wire.Pico, 1), "iot_med_dev_03", wire.Pico, 1, nil},
		{"pseudo", devs, sealReading(devs[3], wire.Pseudo, 2), "iot_med_dev_04", wire.Pseudo, 1, nil},
		{"no key fits", devs, sealReading(stranger, wire.Pico, 1), "", 0, 0, ErrUnknownDevice},
		{"two keys fit fully", append(devs, twin), sealReading(devs[0], wire.Pico, 1), "", 0, 2, ErrAmbiguous},
		{"two fit the first block, one fully", append(devs, lookalike), sealReading(devs[0], wire.Pico, 1), "iot_med_dev_01", wire.Pico, 2, nil},
		{"corrupted last block", devs, corrupt, "iot_med_dev_02", 0, 1, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := NewKeyIndex(tt.devs).Identify(nil, tt.ct)
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if id.Candidates != tt.candidates {
				t.Fatalf("%d candidates, want %d", id.Candidates, tt.candidates)
			}
			if tt.want != "" && (id.Device != tt.want || (err == nil && id.Variant != tt.variant)) {
				t.Fatalf("identified %s %v, want %s %v", id.Device, id.Variant, tt.want, tt.variant)
			}
		})
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

// BenchmarkIdentify compares, per frame, the old way (full decrypt with
// every key until one parses), the first-block search, and the cached path
// (the connection's key known), with the sender the last device searched.
func BenchmarkIdentify(b *testing.B) {
	for _, n := range []int{10, 1000, 10000, 100000} {
		devs := benchDevices(n)
		ix := NewKeyIndex(devs)
		sender := devs[n-1]
		ct := sealReading(sender, wire.Pico, 7)
		buf := make([]byte, 0, 512)
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
		b.Run(fmt.Sprintf("first-block/devices=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ix.Identify(buf, ct); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("cached/devices=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				key, _, _ := ix.Lookup(sender.ID)
				if _, _, err := key.Open(buf, ct, wire.Pico); err != nil {
					b.Fatal(err)
				}
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
