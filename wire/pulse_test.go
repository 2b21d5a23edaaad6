package wire

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

// decodeBoth decodes in with PulseBatch's own decoder and with plain
// encoding/json.
func decodeBoth(in []byte) (fast PulseBatch, fastErr error, ref pulseBatchJSON, refErr error) {
	fastErr = json.Unmarshal(in, &fast)
	refErr = json.Unmarshal(in, &ref)
	return
}

func samePulse(a PulseBatch, b pulseBatchJSON) bool {
	if math.Float64bits(a.Rate) != math.Float64bits(b.Rate) || a.Start != b.Start || (a.Samples == nil) != (b.Samples == nil) || len(a.Samples) != len(b.Samples) {
		return false
	}
	for i := range a.Samples {
		if math.Float64bits(a.Samples[i]) != math.Float64bits(b.Samples[i]) {
			return false
		}
	}
	return true
}

func TestPulseBatchJSON(t *testing.T) {
	tests := []struct {
		name, in string
		fast     bool // taken by the fast path
	}{
		{"canonical", `{"rate":250,"start":1764000000000,"samples":[1.701,1.712,-3]}`, true},
		{"spaces and order", " { \"samples\" : [ 1 , 2e-3 ] ,\n\"start\":5,\"rate\":0.5 } ", true},
		{"empty samples", `{"rate":250,"start":1,"samples":[]}`, true},
		{"no samples", `{"rate":250,"start":1}`, true},
		{"empty object", `{}`, true},
		{"null samples", `{"rate":250,"start":1,"samples":null}`, false},
		{"null sample", `{"rate":250,"start":1,"samples":[1,null,2]}`, false},
		{"other case", `{"Rate":250,"START":1,"samples":[1]}`, false},
		{"escaped key", `{"r\u0061te":250,"start":1,"samples":[1]}`, false},
		{"unknown key", `{"rate":250,"start":1,"samples":[1],"x":[{}]}`, false},
		{"fractional start", `{"rate":250,"start":1.5,"samples":[1]}`, false},
		{"huge sample", `{"rate":250,"start":1,"samples":[1e999]}`, false},
		{"duplicate key", `{"rate":1,"rate":2,"samples":[1],"samples":[3,4]}`, true},
		{"string sample", `{"rate":250,"start":1,"samples":["1"]}`, false},
		{"null", `null`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var probe PulseBatch
			if got := probe.decodeFast([]byte(tt.in)); got != tt.fast {
				t.Errorf("fast path taken %v, want %v", got, tt.fast)
			}
			fast, fastErr, ref, refErr := decodeBoth([]byte(tt.in))
			if (fastErr == nil) != (refErr == nil) || !samePulse(fast, ref) {
				t.Fatalf("got %+v (%v), encoding/json gives %+v (%v)", fast, fastErr, ref, refErr)
			}
		})
	}
}

// FuzzPulseBatchJSON: whatever the input, PulseBatch decodes it exactly as
// encoding/json does, and what it decoded encodes the same.
func FuzzPulseBatchJSON(f *testing.F) {
	f.Add([]byte(`{"rate":250,"start":1764000000000,"samples":[1.701,1.712,-3]}`))
	f.Add([]byte(`{"rate":250,"start":1,"samples":[1,null,2]}`))
	f.Add([]byte(` { "samples" : [ 1 , 2e-3 ] , "start":5 } `))
	f.Add([]byte(`{"Rate":1e400}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		if !json.Valid(in) {
			return
		}
		fast, fastErr, ref, refErr := decodeBoth(in)
		if (fastErr == nil) != (refErr == nil) {
			t.Fatalf("%q: error %v, encoding/json %v", in, fastErr, refErr)
		}
		if fastErr != nil {
			return
		}
		if !samePulse(fast, ref) {
			t.Fatalf("%q: got %+v, encoding/json %+v", in, fast, ref)
		}
		got, err := json.Marshal(fast)
		want, werr := json.Marshal(ref)
		if (err == nil) != (werr == nil) || string(got) != string(want) {
			t.Fatalf("%q: encodes to %s (%v), encoding/json %s (%v)", in, got, err, want, werr)
		}
	})
}

func BenchmarkPulseBatchJSON(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"rate":250,"start":1764000000000,"samples":[`)
	for i := range 250 {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString("1.7")
		sb.WriteByte(byte('0' + i%10))
	}
	sb.WriteString("]}")
	in := []byte(sb.String())
	b.Run("decode/own", func(b *testing.B) {
		for b.Loop() {
			var p PulseBatch
			if err := json.Unmarshal(in, &p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode/encoding-json", func(b *testing.B) {
		for b.Loop() {
			var p pulseBatchJSON
			if err := json.Unmarshal(in, &p); err != nil {
				b.Fatal(err)
			}
		}
	})
}
