package bench

import (
	"encoding/json"
	"testing"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/simulator"
	"github.com/medpipe/medpipe/wire"
)

// TestReadingFacts: the subscriber's field paths find device and sequence
// in readings as publish writes them (encoding/json's bytes, which its
// hand-written JSON matches), legacy and v2 with a pulse batch, and
// anything else counts as no reading.
func TestReadingFacts(t *testing.T) {
	legacy := func(seq uint64) []byte {
		w := wire.Reading{wire.Temp: "36.601", wire.TempMcu: "30.002", wire.PulseSig: "1.500", wire.AcelX: "0.001", wire.AcelY: "0.002", wire.AcelZ: "0.983", wire.TempMpu: "29.004"}
		simulator.EncodeSeq(&w, seq)
		r := bus.Reading{Device: "sim-00001", Protocol: bus.ProtocolLegacy}
		r.SetWire(&w)
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	v2 := func(seq uint64) []byte {
		r := bus.Reading{Device: "sim-00002", Protocol: bus.ProtocolV2, Seq: seq,
			Pulse: &wire.PulseBatch{Rate: 250, Samples: make([]float64, 250)}}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name    string
		payload []byte
		device  string
		seq     uint64
		ok      bool
	}{
		{"legacy", legacy(4321), "sim-00001", 4321, true},
		{"legacy seq 1", legacy(1), "sim-00001", 1, true},
		{"v2 with pulse", v2(wire.V2Seq(7, 99)), "sim-00002", 99, true},
		{"values without a sequence", []byte(`{"device":"d","values":{"Temp":null}}`), "", 0, false},
		{"no device", []byte(`{"seq":5}`), "", 0, false},
		{"not JSON", []byte("\x00garbage"), "", 0, false},
		{"empty", nil, "", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			device, seq, ok := readingFacts(tc.payload)
			if ok != tc.ok || (ok && (device != tc.device || seq != tc.seq)) {
				t.Fatalf("readingFacts(%.80s) = %q, %d, %v; want %q, %d, %v", tc.payload, device, seq, ok, tc.device, tc.seq, tc.ok)
			}
		})
	}
}

// BenchmarkReadingFacts: the subscriber's cost per v2 reading with a
// second of pulse (250 samples), against decoding the whole reading.
func BenchmarkReadingFacts(b *testing.B) {
	r := bus.Reading{Device: "sim-00002", Protocol: bus.ProtocolV2, Seq: wire.V2Seq(7, 99),
		Pulse: &wire.PulseBatch{Rate: 250, Samples: make([]float64, 250)}}
	for i := range r.Pulse.Samples {
		r.Pulse.Samples[i] = 1.5 + float64(i)/1000
	}
	payload, err := json.Marshal(r)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("gjson", func(b *testing.B) {
		for b.Loop() {
			if _, _, ok := readingFacts(payload); !ok {
				b.Fatal("no facts")
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			var all bus.Reading
			if err := json.Unmarshal(payload, &all); err != nil {
				b.Fatal(err)
			}
		}
	})
}
